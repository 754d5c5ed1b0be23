# %% [markdown]
# # Tutorial 6: EPT, prompt fusion and gated multi-space projection
#
# EPT (Lan et al., AAAI 2025) starts from DePT's decomposition (tutorial 4) and
# adds two steps that work on the short prompt before it goes in front of the
# input: *prompt fusion*, where attention lets the low-rank part enrich the
# short prompt, and a *multi-space projection*, where the prompt is projected
# into several subspaces (4 in the paper) whose outputs a gating network mixes
# into a "reconstructed prompt". The budget stays within PT's.
#
# **A reconstruction, not the paper's code.** EPT has no public code, and its
# exact equations were not available to us. What follows is minidept's
# reconstruction from the published description (`docs/methods.md`, section 4),
# documented as such in `minidept/methods.py` (`PromptFusion`,
# `MultiSpaceProjection`):
#
# ```
# 1. P_s (m x d), A (s x r), B (r x d), scale and E'(x) = E(x) + scale * (A @ B)[:L]   exactly as DePT
# 2. fusion (no new parameters):  K   = scale * (A @ B)                                 (s x d)
#                                 P_f = P_s + softmax(P_s @ K.T / sqrt(d)) @ K
# 3. N spaces (default 4):        P_i = P_f + P_f @ U_i @ V_i    U_i (d x k), V_i (k x d) = 0, k = 1
# 4. gate:                        g   = softmax(mean_over_rows(P_f) @ W_g)              W_g (d x N) = 0
#                                 P_r = sum_i g_i * P_i
# 5. input = [P_r ; E'(x)]
# ```
#
# At initialisation `B = 0` (so `K = 0`) and `V_i = 0`: every added term
# vanishes and EPT is exactly PT with the short prompt `P_s`.
#
# As in tutorial 5 everything runs on the pocket T5 (`--model pocket-t5`,
# docs/pocket.md, `d = 256`), a small pretrained T5 that knows sentiment behind
# a task prefix; the prompt takes the prefix's place.

# %%
import time

import torch

from minidept.loop import Hooks, train_loop
from minidept.methods import DEFAULT_INIT_TEXT, PromptConfig, budget, parameter_count
from minidept.prompted import PromptedModel

from tutorial_setup import (FAST, accuracy, batch_source, encode, plt, pocket_t5, save,  # shared set-up
                            sentiment_splits)

torch.manual_seed(0)


# %% [markdown]
# ## The budget
#
# EPT trains DePT's tensors plus `N` pairs `U_i, V_i` (`2*d*k` each) and the
# gate `W_g` (`d*N`): `m*d + (s + d)*r + N*2*d*k + d*N <= l*d`. The fixed extra
# cost (9,216 numbers at `d = 768`) comes out of DePT's rank.

# %%
print(" m   r (EPT)  r (DePT)   EPT trainable (d = 768, s = 256)")
for m in (0, 20, 40, 60, 80):
    r = budget("ept", l=100, m=m, s=256, d=768)
    print(f"{m:2d}   {r:4d}     {budget('dept', l=100, m=m, s=256, d=768):4d}      "
          f"{parameter_count('ept', m, r, 256, 768):,}")

# %% [markdown]
# You should see EPT nine ranks below DePT (9,216 / 1,024 = 9), with exactly
# 76,800 trainable numbers each time:
#
# ```output
#  m   r (EPT)  r (DePT)   EPT trainable (d = 768, s = 256)
#  0     66       75      76,800
# 20     51       60      76,800
# 40     36       45      76,800
# 60     21       30      76,800
# 80      6       15      76,800
# ```
#
# ## EPT on the pocket T5
#
# The pocket T5 (`d = 256`), `l = 100`, `m = 60`, `s = 128`, 4 spaces of rank
# `k = 1`: `r = floor((40*256 - 4*2*256 - 256*4) / (128 + 256)) = 18`.

# %%
backbone, tokenizer = pocket_t5()                      # frozen, in eval mode

ept = PromptedModel(backbone, PromptConfig("ept", l=100, m=60, max_length=128, n_spaces=4, k=1)).eval()
print("EPT's trainable tensors:")
for name, p in ept.named_parameters():
    if p.requires_grad:
        print(f"  {name:14s} {tuple(p.shape)}")
print(f"r = {ept.config.r}, trainable {sum(p.numel() for p in ept.trainable_parameters()):,} <= {100 * 256:,}")

# %% [markdown]
# You should see
#
# ```output
# EPT's trainable tensors:
#   prompt.P       (60, 256)
#   offset.A       (128, 18)
#   offset.B       (18, 256)
#   projection.U   (4, 256, 1)
#   projection.V   (4, 1, 256)
#   projection.W_g (256, 4)
# r = 18, trainable 25,344 <= 25,600
# ```
#
# `offset` is DePT's `A @ B` (the module `LowRankEmbeddingUpdate`). The fusion
# step has no parameters.
#
# ## At initialisation EPT is PT with the short prompt

# %%
ids = torch.tensor([tokenizer.encode("the film was good").ids])
start = torch.zeros(1, 1, dtype=torch.long)
pt_short = PromptedModel(backbone, PromptConfig("pt", l=60, max_length=128)).eval()
with torch.no_grad():
    pt_short.prompt.P.copy_(ept.prompt.P)
    print("P_r == P_s at initialisation:", torch.equal(ept.input_prompt(), ept.prompt.P))   # input_prompt() is P_r
    print("EPT logits == PT (l = m) logits:", torch.equal(ept(ids, decoder_input_ids=start),
                                                        pt_short(ids, decoder_input_ids=start)))

# %% [markdown]
# You should see, not close but equal:
#
# ```output
# P_r == P_s at initialisation: True
# EPT logits == PT (l = m) logits: True
# ```
# `MultiSpaceProjection` computes
# `P_r` as `P_f + sum_i g_i (P_f @ U_i @ V_i)`, the same value as
# `sum_i g_i P_i` because the `g_i` sum to one, but written so that `V = 0`
# gives `P_f` exactly, without rounding.
#
# ## The steps, by hand
#
# As in the other tutorials we give the zero-initialised tensors random values
# (`B`, `V`, `W_g`) to see the steps do something, then recompute each step
# from its equation and compare with the modules.

# %%
with torch.no_grad():
    ept.offset.B.normal_(0, 0.1)
    ept.projection.V.normal_(0, 0.1)
    ept.projection.W_g.normal_(0, 0.1)

    P_s = ept.prompt.P                                                        # (m, d)
    d = P_s.shape[1]
    K = ept.offset.scale * (ept.offset.A @ ept.offset.B)                      # (s, d): DePT's offsets
    attention = torch.softmax(P_s @ K.T / d ** 0.5, dim=-1)                  # (m, s)
    P_f = P_s + attention @ K                                                 # fusion
    print("fusion by hand == PromptFusion:", torch.allclose(P_f, ept.fusion(P_s, ept.offset.matrix()), atol=1e-6))

    U, V, W_g = ept.projection.U, ept.projection.V, ept.projection.W_g
    P_i = torch.stack([P_f + P_f @ U[i] @ V[i] for i in range(4)])            # (N, m, d): the N spaces
    g = torch.softmax(P_f.mean(dim=0) @ W_g, dim=-1)                          # (N,): the gate
    P_r = (g[:, None, None] * P_i).sum(dim=0)                                 # the reconstructed prompt
    print("P_r by hand == PromptedModel.input_prompt():", torch.allclose(P_r, ept.input_prompt(), atol=1e-5))
    print("gate g =", [f"{x:.3f}" for x in g.tolist()], f"(sums to {g.sum().item():.3f})")
    print(f"|P_f - P_s| / |P_s| = {((P_f - P_s).norm() / P_s.norm()).item():.4f}, "
          f"|P_r - P_f| / |P_f| = {((P_r - P_f).norm() / P_f.norm()).item():.4f}")

# %% [markdown]
# You should see four gate weights around 0.25 that sum to 1.000, and two
# small relative changes: fusion and projection start as corrections to the
# short prompt.
#
# ```output
# fusion by hand == PromptFusion: True
# P_r by hand == PromptedModel.input_prompt(): True
# gate g = ['0.270', '0.257', '0.297', '0.177'] (sums to 1.000)
# |P_f - P_s| / |P_s| = 0.0079, |P_r - P_f| / |P_f| = 0.0289
# ```
#
# Two properties of this reconstruction worth knowing:
# - `P_r` does not depend on the input. It is computed from the parameters
#   alone, so after training it is one fixed `m x d` prompt: at inference EPT
#   costs exactly what DePT costs (for GPT-2 minidept runs it once per batch, like any prompt).
# - The fusion attends over all `s` rows of `K`, one per input *position*, not
#   over the tokens of the current input.
#
# ## What training does to the gate
#
# We train EPT on the sentiment task of the tutorials (`sentiment_splits()`:
# SST-2 with `MINIDEPT_DATA`, else the demo's synthetic sentences) with the
# settings `python -m minidept.train --model pocket-t5` picks for the task (its
# `l`, `m`, `s` and prompt rate 0.3, batches of 32, the official init text,
# seed 42), once with SST-2's published rate for everything else (5e-4) and
# once with the demo's (1e-2), and watch the gate weights `g`. As in tutorials
# 4 and 5 the library's loop trains (`minidept.loop.train_loop`: AdamW, warmup
# over the first tenth of the steps then linear decay, clipping at 1.0), and a
# small `Hooks` subclass records the gate after every step. Validation
# accuracy (greedy answers) before and after tells whether the run learned.

# %%
torch.set_num_threads(1)                               # small models run fastest on one thread
task, splits = sentiment_splits()
train_rows = encode(task, splits["train"], tokenizer, backbone, task.max_length)
valid_rows = encode(task, splits["validation"], tokenizer, backbone, task.max_length)
steps = 60 if FAST else 200
init_ids = tuple(tokenizer.encode(DEFAULT_INIT_TEXT).ids)   # the official init text, ending with </s>
print(f"{task.name}: l = {task.l}, m = {task.m}, s = {task.max_length}, {steps} steps of 32, "
      f"{len(valid_rows):,} validation sentences")


class GateWatch(Hooks):
    """Called by the loop after every step: keeps the loss and the gate g = softmax(mean row of P_f @ W_g)."""

    def __init__(self, model):
        self.model, self.gates, self.losses = model, [], []

    def after_step(self, step, loss, grad_norm, seconds, optimizer):
        with torch.no_grad():
            P_f = self.model.fusion(self.model.prompt.P, self.model.offset.matrix())
            self.gates.append(torch.softmax(P_f.mean(dim=0) @ self.model.projection.W_g, dim=-1).tolist())
        self.losses.append(loss)


def train_ept(lr_lowrank):
    model = PromptedModel(backbone, PromptConfig("ept", l=task.l, m=task.m, max_length=task.max_length,
                                                 init="text", init_text_ids=init_ids, seed=42))
    before = accuracy(model.eval(), valid_rows, task, tokenizer)
    optimizer = torch.optim.AdamW(model.param_groups(task.lr_prompt, lr_lowrank), betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=0.0)
    watch = GateWatch(model)
    train_loop(model, optimizer, batch_source(train_rows, 32, model.pad_id, seed=42), max_steps=steps,
               warmup_steps=steps // 10, hooks=watch)
    after = accuracy(model.eval(), valid_rows, task, tokenizer)
    return model.eval(), watch, before, after


trained = {}
for lr_lowrank in (5e-4, 1e-2):
    began = time.perf_counter()
    model, watch, before, after = train_ept(lr_lowrank)
    trained[lr_lowrank] = watch
    gates = watch.gates
    settled = next((step for step, g in enumerate(gates, 1) if max(g) > 0.9), None)
    with torch.no_grad():
        P_s = model.prompt.P
        P_f = model.fusion(P_s, model.offset.matrix())
        P_r = model.input_prompt()
    print(f"lr_lowrank {lr_lowrank}: r = {model.config.r}, validation accuracy {before:.1f} -> {after:.1f}, "
          f"loss {watch.losses[0]:.3f} -> {sum(watch.losses[-10:]) / 10:.3f} ({time.perf_counter() - began:.0f} s)")
    print(f"  final gate {[f'{x:.3f}' for x in gates[-1]]}, one weight above 0.9 "
          + (f"from step {settled}" if settled else "never"))
    print(f"  |P_f - P_s| / |P_s| = {((P_f - P_s).norm() / P_s.norm()).item():.4f}, "
          f"|P_r - P_f| / |P_f| = {((P_r - P_f).norm() / P_f.norm()).item():.4f}")

# %% [markdown]
# You should see (the loss is the first step's, then the mean of the last
# 10; `~` marks the seconds, which depend on the machine). On the demo
# (`l = 20`, `m = 4`, `s = 64`, so `r = 3`):
#
# ```output demo fast
# demo: l = 20, m = 4, s = 64, 60 steps of 32, 200 validation sentences
# lr_lowrank 0.0005: r = 3, validation accuracy 69.5 -> 100.0, loss 0.165 -> 0.016 (~24 s)
#   final gate ['0.507', '0.246', '0.146', '0.102'], one weight above 0.9 never
#   |P_f - P_s| / |P_s| = 0.0004, |P_r - P_f| / |P_f| = 0.0017
# lr_lowrank 0.01: r = 3, validation accuracy 69.5 -> 100.0, loss 0.165 -> 0.012 (~20 s)
#   final gate ['0.000', '0.000', '1.000', '0.000'], one weight above 0.9 from step 7
#   |P_f - P_s| / |P_s| = 0.0274, |P_r - P_f| / |P_f| = 0.3143
# ```
#
# ```output demo full
# demo: l = 20, m = 4, s = 64, 200 steps of 32, 200 validation sentences
# lr_lowrank 0.0005: r = 3, validation accuracy 69.5 -> 100.0, loss 0.165 -> 0.007 (~27 s)
#   final gate ['0.997', '0.001', '0.001', '0.001'], one weight above 0.9 from step 53
#   |P_f - P_s| / |P_s| = 0.0006, |P_r - P_f| / |P_f| = 0.0658
# lr_lowrank 0.01: r = 3, validation accuracy 69.5 -> 100.0, loss 0.165 -> 0.006 (~25 s)
#   final gate ['0.000', '0.000', '1.000', '0.000'], one weight above 0.9 from step 23
#   |P_f - P_s| / |P_s| = 0.0383, |P_r - P_f| / |P_f| = 0.4630
# ```
#
# With `MINIDEPT_DATA`, on SST-2 (`l = 100`, `m = 60`, `s = 256`, so `r = 14`):
#
# ```output data fast
# sst2: l = 100, m = 60, s = 256, 60 steps of 32, 1,000 validation sentences
# lr_lowrank 0.0005: r = 14, validation accuracy 74.4 -> 85.7, loss 0.173 -> 0.103 (~102 s)
#   final gate ['0.244', '0.227', '0.299', '0.230'], one weight above 0.9 never
#   |P_f - P_s| / |P_s| = 0.0002, |P_r - P_f| / |P_f| = 0.0005
# lr_lowrank 0.01: r = 14, validation accuracy 74.4 -> 85.8, loss 0.173 -> 0.099 (~58 s)
#   final gate ['0.000', '0.000', '1.000', '0.000'], one weight above 0.9 from step 29
#   |P_f - P_s| / |P_s| = 0.0427, |P_r - P_f| / |P_f| = 0.1202
# ```
#
# ```output data full
# sst2: l = 100, m = 60, s = 256, 200 steps of 32, 1,000 validation sentences
# lr_lowrank 0.0005: r = 14, validation accuracy 74.4 -> 86.6, loss 0.173 -> 0.099 (~130 s)
#   final gate ['0.339', '0.112', '0.411', '0.137'], one weight above 0.9 never
#   |P_f - P_s| / |P_s| = 0.0005, |P_r - P_f| / |P_f| = 0.0014
# lr_lowrank 0.01: r = 14, validation accuracy 74.4 -> 86.3, loss 0.173 -> 0.100 (~113 s)
#   final gate ['0.000', '0.000', '0.000', '1.000'], one weight above 0.9 from step 21
#   |P_f - P_s| / |P_s| = 0.2890, |P_r - P_f| / |P_f| = 0.2579
# ```
#
# What we see. Every run learns the task, and in each setting the two rates
# end within 0.3 points of each other, so here the gate's behaviour does not
# decide the accuracy. The gate is not a calm mixture, though. With the demo's
# rate (1e-2) it picks one space early (a weight above 0.9 from step 7 of 60
# and step 23 of 200 on the demo, steps 29 and 21 on SST-2) and keeps it; from
# then on the other three spaces get almost no gradient (theirs is scaled by
# their `g_i`), and the projection changes the prompt a lot
# (`|P_r - P_f| / |P_f|` between 0.12 and 0.46 in these four runs; on SST-2
# after 200 steps the fusion too, `|P_f - P_s| / |P_s|` 0.2890). With
# SST-2's rate (5e-4) the gate moves slowly. On SST-2 it stays a mixture (its
# largest weight 0.299 after 60 steps, 0.411 after 200) and fusion and
# projection change the prompt by a fraction of a percent, so the trained EPT
# is almost DePT with its short prompt. On the demo it drifts, and in 200
# steps it too ends on one space (from step 53).
#
# The reason is the gate's input and AdamW. The gate reads the mean row of
# `P_f`: 256 numbers of a few tenths each at the start (the init text's
# embeddings, averaged), growing as the prompt trains at its rate of 0.3.
# AdamW moves every entry of `W_g` by up to about its learning rate a step,
# so one step can move a gate logit by up to the learning rate times the sum
# of those 256 sizes, a sum of about a hundred on the demo: up to about 1 a
# step at 1e-2, twenty times less at 5e-4. A few steps in the same direction
# saturate the softmax. Whether the
# paper's EPT behaves this way we cannot tell without its code; a normalised
# gate input or a temperature would keep the mixture soft. Treat it as a
# property of this reconstruction.

# %%
if plt:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    image = axes[0].imshow(attention, aspect="auto", cmap="viridis")
    axes[0].set(title="fusion attention softmax(P_s K^T / sqrt(d))\n(pocket T5, random B: rows sum to 1)",
                xlabel="row of K = input position", ylabel="prompt row")
    fig.colorbar(image, ax=axes[0])
    for ax, lr_lowrank in zip(axes[1:], trained):
        gates = trained[lr_lowrank].gates
        for i in range(len(gates[0])):
            ax.plot(range(1, steps + 1), [g[i] for g in gates], label=f"space {i + 1}")
        ax.set(title=f"gate weights g during training\n({task.name}, lr_lowrank = {lr_lowrank})",
               xlabel="step", ylabel="g_i", ylim=(-0.02, 1.02))
        ax.legend(fontsize=8)
    save(fig, "ept_fusion_and_gate.png")

# %% [markdown]
# You should see (in `ept_fusion_and_gate.png`) on the left an almost flat
# attention map: every weight is close to 1/128 = 0.008. While `K` is small the
# scores `P_s K^T / sqrt(d)` are small too, and fusion adds roughly the mean of
# `K`'s rows to every prompt row; sharper attention needs a larger `K`. In the
# middle and on the right, the gate weights of the two runs printed above.
#
# **Next:** tutorial 7 trains a method end to end on SST-2, with the
# command line and from Python.
