# %% [markdown]
# # Tutorial 4: DePT, decomposed prompt tuning
#
# DePT (Shi & Lipani, ICLR 2024) splits PT's prompt of `l` vectors into two
# smaller pieces with the same number of trainable parameters:
#
# ```
# PT:    input = [P ; E(x)]                              P   (l x d)
# DePT:  input = [P_s ; E'(x)]                           P_s (m x d), m < l: a SHORTER prompt
#        E'(x) = E(x) + scale * (A @ B)[:L]              A (s x r), B (r x d): a low-rank update
#                                                        of the input embeddings, scale = alpha / sqrt(r)
# ```
#
# Row `i` of the `s x d` matrix `A @ B` is added to the embedding of the `i`-th
# input token (`L` is the input length, at most `s`). The budget
# `m*d + (s + d)*r <= l*d` fixes `r` once `m` is chosen. Because the sequence
# is `l - m` tokens shorter, every training and inference step is cheaper.
#
# In this tutorial: the budget table, the update computed by hand and by
# `minidept.methods.LowRankEmbeddingUpdate` (and what it means for a T5),
# why DePT equals PT at initialisation, why it needs two learning rates
# (trained on the pocket T5, the small pretrained T5 of tutorial 3), and what
# the shorter prompt saves, timed on this machine.

# %%
import time

import torch

from minidept.data.load import collate
from minidept.loop import Hooks, train_loop
from minidept.methods import DEFAULT_INIT_TEXT, PromptConfig, budget, parameter_count
from minidept.models.t5 import T5, T5Config
from minidept.prompted import PromptedModel

from tutorial_setup import (FAST, accuracy, batch_source, encode, plt, pocket_t5, save,  # shared set-up
                            sentiment_examples, sentiment_splits)

torch.manual_seed(0)
torch.set_num_threads(1)                               # small models run fastest on one thread


# %% [markdown]
# ## The parameter budget: m against r
#
# DePT trains `m*d` numbers in `P_s` and `(s + d)*r` in `A` and `B`. Given the
# budget of PT with `l = 100`, `minidept.methods.budget` returns the largest
# rank that fits: `r = floor((l - m) * d / (s + d))`, with `s = 256`.

# %%
print(" d    m   r   trainable   PT's l*d")
for d in (256, 512, 768):                              # the pocket T5; T5-small; T5-base and GPT-2
    for m in (0, 20, 40, 60, 80):
        r = budget("dept", l=100, m=m, s=256, d=d)
        print(f"{d:3d}  {m:3d}  {r:2d}   {parameter_count('dept', m, r, 256, d):9,}   {100 * d:,}")

# %% [markdown]
# You should see
#
# ```output
#  d    m   r   trainable   PT's l*d
# 256    0  50      25,600   25,600
# 256   20  40      25,600   25,600
# 256   40  30      25,600   25,600
# 256   60  20      25,600   25,600
# 256   80  10      25,600   25,600
# 512    0  66      50,688   51,200
# 512   20  53      50,944   51,200
# 512   40  40      51,200   51,200
# 512   60  26      50,688   51,200
# 512   80  13      50,944   51,200
# 768    0  75      76,800   76,800
# 768   20  60      76,800   76,800
# 768   40  45      76,800   76,800
# 768   60  30      76,800   76,800
# 768   80  15      76,800   76,800
# ```
#
# For `d = 256` and `d = 768` exactly PT's count each time (`s + d` divides
# `(l - m) * d` evenly); for `d = 512` never more than PT's 51,200.
# The published runs use `m = 60, r = 30` on T5-base for most tasks.
#
# ## DePT on the pocket T5
#
# The pocket T5 of tutorial 3 (`--model pocket-t5`, `docs/pocket.md`): width
# `d = 256`, pretrained by minidept, frozen. With `MINIDEPT_DATA` we feed it
# SST-2 sentences; otherwise sentences of the demo task. Inputs of at most
# `s = 256` tokens, `l = 100`, `m = 60`; the budget then gives
# `r = floor(40 * 256 / 512) = 20`.

# %%
task, examples = sentiment_examples("validation", 4)      # SST-2 with MINIDEPT_DATA, else the demo task
backbone, tokenizer = pocket_t5()                         # pretrained, frozen, width 256
rows = encode(task, examples, tokenizer, backbone, max_length=256)
batch = collate(rows, pad_id=backbone.config.pad_token_id)
ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

dept = PromptedModel(backbone, PromptConfig("dept", l=100, m=60, max_length=256)).eval()
update = dept.offset                                   # the LowRankEmbeddingUpdate module
print("P_s", tuple(dept.prompt.P.shape), "| A", tuple(update.A.shape), "| B", tuple(update.B.shape),
      f"| r = {dept.config.r}, scale = alpha / sqrt(r) = {update.scale:.3f}")
print(f"trainable: {sum(p.numel() for p in dept.trainable_parameters()):,} <= l * d = {100 * backbone.d_model:,}")

# %% [markdown]
# You should see
#
# ```output
# P_s (60, 256) | A (256, 20) | B (20, 256) | r = 20, scale = alpha / sqrt(r) = 1.789
# trainable: 25,600 <= l * d = 25,600
# ```
#
# Two details come from the official code, not the paper, and minidept follows
# the code: `A` starts uniform in `(-1/sqrt(r), 1/sqrt(r))` (the paper says
# Gaussian), and the update is scaled by `alpha / sqrt(r)` with `alpha = 8` (not
# in the paper).
#
# ## The update, by hand and by the module
#
# `E' = E(x) + scale * (A @ B)[:L]`. `B` starts at zero, so at first the update
# is exactly zero. To see it do something we give `B` random values for a
# moment (training would move it away from zero the same way).

# %%
E = backbone.get_input_embeddings()(ids)                                  # E(x)   (B, L, d)
L = ids.shape[1]
with torch.no_grad():
    print("at initialisation, E' == E exactly:", torch.equal(update(E), E))
    update.B.normal_(0, 0.1)                                              # pretend it was trained
    by_hand = E + update.scale * (update.A @ update.B)[:L]                # E(x) + scale * (A @ B)[:L]
    print("E' by hand == LowRankEmbeddingUpdate:", torch.allclose(update(E), by_hand, atol=1e-6))
    offset = update(E) - E                                                # (B, L, d)
    print("same offset at position 3 in every row of the batch:",
          all(torch.allclose(offset[b, 3], offset[0, 3], atol=1e-6) for b in range(ids.shape[0])))
    print("different offsets at positions 3 and 4:", not torch.allclose(offset[0, 3], offset[0, 4]))
    update.B.zero_()                                                      # back to the initial state

# %% [markdown]
# You should see
#
# ```output
# at initialisation, E' == E exactly: True
# E' by hand == LowRankEmbeddingUpdate: True
# same offset at position 3 in every row of the batch: True
# different offsets at positions 3 and 4: True
# ```
#
# The offset is a property of the
# *position*, not of the word there: every input gets the same vector added at
# position 3, whatever token sits there. (ADePT, tutorial 5, does the opposite.)
#
# What that means depends on the backbone. A T5 has no absolute positions at
# all: its attention sees only how far apart two tokens are (tutorial 1's
# relative position buckets), and its input is the token's embedding alone. So
# on a T5, `A @ B` gives the model something it never had: a learned,
# low-rank (rank `r`) **absolute-position table** over the first `s` inputs,
# row `i` added to whatever token is at position `i`. On GPT-2 the same rows add
# to `wpe`, GPT-2's own absolute-position table: there `A @ B` is a low-rank
# correction of a table the model already reads. Either way the update says
# "where", never "what" (docs/methods.md, section 2, says the same).
#
# ## At initialisation DePT is PT with the short prompt
#
# With `B = 0` the input is `[P_s ; E(x)]`: PT with `l = m`. Give a PT model of
# length 60 the same prompt and the logits must agree to the last bit.

# %%
pt_short = PromptedModel(backbone, PromptConfig("pt", l=60, max_length=256)).eval()
with torch.no_grad():
    pt_short.prompt.P.copy_(dept.prompt.P)
    decoder_input_ids = backbone.shift_right(labels)
    dept_logits = dept(ids, mask, decoder_input_ids=decoder_input_ids)
    pt_logits = pt_short(ids, mask, decoder_input_ids=decoder_input_ids)
print("DePT logits == PT (l = m) logits at initialisation:", torch.equal(dept_logits, pt_logits))
print(f"max abs difference: {(dept_logits - pt_logits).abs().max().item()}")

# %% [markdown]
# You should see
#
# ```output
# DePT logits == PT (l = m) logits at initialisation: True
# max abs difference: 0.0
# ```
#
# DePT starts where PT with the short prompt
# starts, and the low-rank update only adds what training finds useful.
#
# One more deviation, from the official code this time: it pads every input to
# exactly `s` so that all of `A @ B` is added. minidept pads a batch only to its
# own longest row `L` and adds the first `L` rows. Padding is masked, so the
# real tokens get the same outputs either way; the shorter batch costs less.

# %%
with torch.no_grad():
    update.B.normal_(0, 0.1)                                              # a non-zero update
    s = dept.config.max_length
    padded_ids = torch.cat([ids, torch.zeros(ids.shape[0], s - L, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(ids.shape[0], s - L, dtype=mask.dtype)], dim=1)
    short = dept(ids, mask, decoder_input_ids=decoder_input_ids)
    long = dept(padded_ids, padded_mask, decoder_input_ids=decoder_input_ids)
    update.B.zero_()
print(f"batch padded to L = {L} vs to s = {s}: max |logit difference| = {(short - long).abs().max().item():.1e}")

# %% [markdown]
# You should see a difference of a few `1e-6` or less (float rounding; `~`
# marks a number that depends on the machine):
#
# ```output demo
# batch padded to L = 8 vs to s = 256: max |logit difference| = ~2.9e-06
# ```
#
# ```output data
# batch padded to L = 28 vs to s = 256: max |logit difference| = ~3.8e-06
# ```
#
# ## Two learning rates
#
# `P_s` holds word-like vectors and trains with a large rate (0.3 to 0.5, as PT
# does); `A` and `B` start at or near zero and need a small one (1e-4 to 5e-3).
# `param_groups` makes the two AdamW groups, chosen by module.

# %%
for group in dept.param_groups(lr_prompt=0.3, lr_lowrank=5e-4):
    shapes = [tuple(p.shape) for p in group["params"]]
    print(f"AdamW group {group['name']!r:9s} learning rate {group['lr']:<6} tensors {shapes}")

# %% [markdown]
# You should see the group `'prompt'` with `P_s`, and the group `'lowrank'`
# with the rate we passed here (SST-2's published one) and `A`, `B`:
#
# ```output
# AdamW group 'prompt'  learning rate 0.3    tensors [(60, 256)]
# AdamW group 'lowrank' learning rate 0.0005 tensors [(256, 20), (20, 256)]
# ```
#
# What goes wrong with one rate? The paper's ablation: GLUE 40.8 and 54.7 with
# a single rate against 85.7 with two. We can watch it happen on the pocket T5,
# since it knows sentiment and a prompt can steer it (tutorial 3). We train
# DePT three times on the task of this tutorial, SST-2 with `MINIDEPT_DATA`
# (`l = 100`, `m = 60`, `s = 256`, so `r = 20`), else the demo task (`l = 20`,
# `m = 4`, `s = 64`, so `r = 12`), each at the task's settings and the official
# init text, in batches of 16:
#
# - **two rates**, the task's: 0.3 for `P_s`, and for `A` and `B` SST-2's
#   published 5e-4 (the demo task's 1e-2);
# - **one large rate**, the prompt's 0.3 for everything;
# - **one small rate**, the low-rank rate for everything.
#
# Besides the loss and the validation accuracy after training we track how
# big the offset `scale * (A @ B)` is compared with the word embeddings it is
# added to.
#
# We train with the loop `python -m minidept.train` runs, `train_loop` in
# `minidept/loop.py`. Without its hooks it is these few lines a step:
#
# ```python
# for step in range(max_steps):
#     for group, base in zip(optimizer.param_groups, base_lrs):     # AdamW groups: P_s, and A with B
#         group["lr"] = base * lr_factor(step, warmup_steps, max_steps)
#     optimizer.zero_grad()
#     loss = 0.0
#     for inputs, weight in batch_at(step):      # one (batch, 1.0) here; micro-batches with --grad-accum
#         part = model(**inputs) * weight        # [P_s ; E'(x)] through the frozen T5
#         part.backward()                        # only P_s, A and B get gradients
#         loss += part.item()
#     grad_norm = clip_grad_norm_(params, 1.0)
#     optimizer.step()
#     hooks.after_step(step + 1, loss, grad_norm, seconds, optimizer)   # ours records the loss and the offset
# ```
#
# `batch_at(step)` gives the batches of `minidept.train` in order (shuffled
# once per epoch by the seed; `batch_source` in `tutorial_setup.py`), AdamW is
# set as in the official runs, and `lr_factor` is their schedule: the rates
# rise from 0 over the first tenth of the steps, then fall in a straight line
# towards 0.

# %%
steps, n_eval = (60 if FAST else 200), (200 if FAST else None)
task, splits = sentiment_splits()                      # SST-2 with MINIDEPT_DATA, else the demo task
pad = backbone.config.pad_token_id
train_rows = encode(task, splits["train"], tokenizer, backbone, task.max_length)
val_rows = encode(task, splits["validation"][:n_eval], tokenizer, backbone, task.max_length)
batch_at = batch_source(train_rows, 16, pad, seed=42)  # 16 examples a step, a new order every epoch
probe = collate(train_rows[:64], pad)                  # fixed inputs to measure the offset on
init_ids = tuple(tokenizer.encode(DEFAULT_INIT_TEXT).ids)   # the official init text, </s> included


class Watch(Hooks):
    """Called by the loop after every step: keeps the loss and |scale (A B)[i]| / |E(x_i)| on the probe."""

    def __init__(self, model):
        self.model, self.losses, self.ratios = model, [], []

    def after_step(self, step, loss, grad_norm, seconds, optimizer):
        self.losses.append(loss)
        with torch.no_grad():
            ids, real = probe["input_ids"], probe["attention_mask"].bool()
            E = self.model.backbone.get_input_embeddings()(ids)
            offset = self.model.embed(ids) - E           # E'(x) - E(x) = scale * (A @ B)[:L]
            self.ratios.append((offset[real].norm(dim=-1) / E[real].norm(dim=-1)).mean().item())


def new_dept():
    """DePT at the task's settings, as `python -m minidept.train` builds it (seed 42)."""
    return PromptedModel(backbone, PromptConfig("dept", l=task.l, m=task.m, max_length=task.max_length,
                                                init="text", init_text_ids=init_ids, seed=42))


def train_dept(lr_prompt, lr_lowrank):
    model = new_dept()
    optimizer = torch.optim.AdamW(model.param_groups(lr_prompt, lr_lowrank), betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=0.0)
    watch = Watch(model)
    train_loop(model, optimizer, batch_at, max_steps=steps, warmup_steps=steps // 10, hooks=watch)
    return watch.losses, watch.ratios, accuracy(model.eval(), val_rows, task, tokenizer)


untrained = new_dept().eval()
print(f"{task.name}: DePT with l = {task.l}, m = {task.m}, r = {untrained.config.r}, {steps} steps of 16; "
      f"untrained: {accuracy(untrained, val_rows, task, tokenizer):.1f}% on {len(val_rows):,} validation examples")
runs = {f"two rates: prompt {task.lr_prompt:g}, A and B {task.lr_lowrank:g}": (task.lr_prompt, task.lr_lowrank),
        f"one rate: {task.lr_prompt:g} for all": (task.lr_prompt, task.lr_prompt),
        f"one rate: {task.lr_lowrank:g} for all": (task.lr_lowrank, task.lr_lowrank)}
results = {}
for label, (lr_prompt, lr_lowrank) in runs.items():
    start = time.perf_counter()
    results[label] = train_dept(lr_prompt, lr_lowrank)
    losses, ratios, acc = results[label]
    print(f"{label:38s} loss {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f} | accuracy {acc:5.1f}% | "
          f"offset/embedding {ratios[-1]:6.3f} | {time.perf_counter() - start:.0f} s")
print("(loss: mean of the first 10 steps -> of the last 10; accuracy on the validation split after training; "
      "offset/embedding: |scale (A B)[i]| / |E(x_i)|)")

# %% [markdown]
# You should see (these are our numbers: one thread and fixed seeds give the
# same on any machine; `~` marks the seconds, which depend on the machine, ours
# a busy 2-core one), on the demo task:
#
# ```output demo fast
# demo: DePT with l = 20, m = 4, r = 12, 60 steps of 16; untrained: 69.5% on 200 validation examples
# two rates: prompt 0.3, A and B 0.01    loss 0.112 -> 0.011 | accuracy 100.0% | offset/embedding  0.176 | ~3 s
# one rate: 0.3 for all                  loss 0.124 -> 0.116 | accuracy  86.5% | offset/embedding 12.478 | ~4 s
# one rate: 0.01 for all                 loss 0.159 -> 0.033 | accuracy  98.5% | offset/embedding  0.224 | ~3 s
# ```
#
# ```output demo full
# demo: DePT with l = 20, m = 4, r = 12, 200 steps of 16; untrained: 69.5% on 200 validation examples
# two rates: prompt 0.3, A and B 0.01    loss 0.133 -> 0.006 | accuracy 100.0% | offset/embedding  0.229 | ~12 s
# one rate: 0.3 for all                  loss 0.098 -> 0.218 | accuracy  57.0% | offset/embedding 15.471 | ~13 s
# one rate: 0.01 for all                 loss 0.190 -> 0.012 | accuracy 100.0% | offset/embedding  0.423 | ~12 s
# ```
#
# and on SST-2 with `MINIDEPT_DATA`:
#
# ```output data fast
# sst2: DePT with l = 100, m = 60, r = 20, 60 steps of 16; untrained: 73.5% on 200 validation examples
# two rates: prompt 0.3, A and B 0.0005  loss 0.150 -> 0.092 | accuracy  82.5% | offset/embedding  0.004 | ~21 s
# one rate: 0.3 for all                  loss 0.216 -> 0.233 | accuracy  56.0% | offset/embedding 16.550 | ~20 s
# one rate: 0.0005 for all               loss 0.182 -> 0.176 | accuracy  76.0% | offset/embedding  0.005 | ~19 s
# ```
#
# ```output data full
# sst2: DePT with l = 100, m = 60, r = 20, 200 steps of 16; untrained: 74.4% on 1,000 validation examples
# two rates: prompt 0.3, A and B 0.0005  loss 0.159 -> 0.077 | accuracy  86.4% | offset/embedding  0.006 | ~67 s
# one rate: 0.3 for all                  loss 0.172 -> 0.222 | accuracy  57.1% | offset/embedding 17.329 | ~86 s
# one rate: 0.0005 for all               loss 0.183 -> 0.156 | accuracy  79.3% | offset/embedding  0.017 | ~80 s
# ```
#
# Read it with the picture below:
#
# - **One large rate hurts, on both tasks.** Within its first 15 steps or so
#   the offset `scale * (A @ B)` grows past the size of the word embeddings,
#   and it settles at 12 to 17 times their size. The frozen model's input is then mostly the
#   position-wise offset, the same at a position whatever word is there: the
#   words are drowned. The loss stops falling (after 200 steps it is *higher*
#   than at the start: 0.098 -> 0.218 on the demo, 0.172 -> 0.222 on SST-2),
#   and the accuracy ends *below* the untrained prompt's: 57.0% on the demo
#   (69.5% untrained), 57.1% on SST-2 (74.4% untrained), close to the 55.3% of
#   always answering SST-2's majority class (`docs/pocket.md`). Why so fast:
#   AdamW moves every entry of `A` and `B` by about the learning rate each step,
#   whatever the size of its gradient, so at 0.3 a step the entries, which start
#   at 0 (`B`) or below `1/sqrt(r)` (`A`), are soon far from their start, and `A @ B`,
#   a sum of `r` such products times `alpha / sqrt(r)`, is far larger than a
#   word vector. This is the effect behind the paper's ablation (GLUE 40.8 and
#   54.7 with a single rate against 85.7 with two), seen at pocket scale.
# - **One small rate** keeps the offset a small correction but slows the
#   prompt down. On SST-2 (5e-4 for everything) the prompt barely moves: the
#   loss falls little (0.183 -> 0.156 in 200 steps) and the accuracy (79.3%)
#   stays well below the two-rate run's. On the demo task the same experiment
#   says less: its low-rank rate is 1e-2, twenty times SST-2's, and the task is
#   easy (one sentiment word in a few templates), so one rate of 1e-2 reaches
#   100% too after 200 steps, only a little slower (98.5% against 100% after
#   60). A single small rate is not wrong as such; it is too slow for the prompt
#   once it is as small as `A` and `B` need on a real task.
# - **Two rates** let the prompt learn as PT's does while the offset stays a
#   correction, a fraction of the embeddings' size: 100% on the demo; 86.4% on
#   SST-2 after 200 steps (82.5% after 60), near the 86.9% the pocket T5 gets
#   with its own task prefix (tutorial 3).
#
# A caveat on size: these are short runs (60 or 200 steps) of a small model,
# one seed each, scored on at most 1,000 examples, so read the gaps of 10
# points and more, not the last point.

# %%
if plt:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    window = 10
    for label, (losses, ratios, acc) in results.items():
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        axes[0].plot(range(1, steps + 1), smooth, label=f"{label} ({acc:.1f}%)")
        axes[1].plot(range(1, steps + 1), ratios, label=label)
    axes[0].set(xlabel="step", ylabel=f"training loss (mean of the last {window} steps)",
                title=f"DePT on the pocket T5 ({task.name})")
    axes[1].set(xlabel="step", ylabel="|offset| / |word embedding|", yscale="log",
                title="how much of the input is the position-wise offset")
    axes[1].axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.13))
    save(fig, "dept_learning_rates.png")

# %% [markdown]
# You should see (in `dept_learning_rates.png`) on the left the one-large-rate
# loss climbing once its offset outgrows the embeddings (on the demo after a
# quick early dip) and staying high, while the two-rate loss falls lowest; on the right the one-large-rate offset passing the size of the
# embeddings (the dotted line) early and staying far above it, the two others
# growing slowly and staying well below it. The legend has each run's accuracy.
#
# ## Why a shorter prompt is cheaper
#
# Every layer of the encoder processes `prompt + L` positions; attention builds
# a `(prompt + L) x (prompt + L)` score matrix per head. With SST-2-sized inputs
# (`L = 32` tokens) PT's `l = 100` makes 132 positions, DePT's `m = 60` makes 92:
# 30% fewer positions and 51% fewer attention scores. DePT's own extra work,
# adding `(A @ B)[:L]`, is one small matrix product per batch.
#
# We time a forward pass (inference, batch of 8, one thread) of a small random
# T5 (width 256 like the pocket T5, 2 + 2 blocks; the weights do not matter for
# the time) with PT prompts of 0 to 100 tokens and DePT prompts of 20 to 80
# (with their budget rank). All configurations are timed in turns, several
# rounds, and we keep the fastest time of each: other programs on the machine
# slow single measurements down.

# %%
small = T5(T5Config(vocab_size=1000, d_model=256, d_kv=64, d_ff=1024, num_layers=2, num_decoder_layers=2,
                    num_heads=4)).eval()
configs = {("PT", n): PromptConfig("pt", l=n, max_length=256) for n in (0, 20, 40, 60, 80, 100)}
configs.update({("DePT", n): PromptConfig("dept", l=100, m=n, max_length=256) for n in (20, 40, 60, 80)})
models = {key: PromptedModel(small, config).eval() for key, config in configs.items()}
inputs = torch.randint(3, 1000, (8, 32))
start_tokens = torch.zeros(8, 2, dtype=torch.long)
best = {key: float("inf") for key in models}
with torch.no_grad():
    for _ in range(3 if FAST else 20):
        for key, model in models.items():
            start = time.perf_counter()
            model(inputs, decoder_input_ids=start_tokens)
            best[key] = min(best[key], time.perf_counter() - start)
for key in models:
    print(f"{key[0]:4s} with a prompt of {key[1]:3d} tokens: one forward (batch 8 x 32) {1000 * best[key]:6.1f} ms")
print(f"DePT m=60 vs PT l=100: {100 * (1 - best[('DePT', 60)] / best[('PT', 100)]):.0f}% less time per forward")

# %% [markdown]
# You should see lines like these (`~`: the numbers depend on the machine)
#
# ```output
# PT   with a prompt of   0 tokens: one forward (batch 8 x 32) ~21.0 ms
# PT   with a prompt of 100 tokens: one forward (batch 8 x 32) ~63.4 ms
# DePT with a prompt of  60 tokens: one forward (batch 8 x 32) ~39.3 ms
# DePT m=60 vs PT l=100: ~38% less time per forward
# ```
#
# The time grows with the prompt length, DePT at `m` costs what PT at `l = m`
# costs (its update is negligible), and DePT with `m = 60` is about a third
# faster than PT with `l = 100` (on our 2-core machine: about 39 ms against
# 63 ms, 38% less; between 26% and 38% in five runs beside other programs).
# Your milliseconds will differ; the ratio should not move much on an idle
# machine.
#
# The paper reports 20-25% less training time for `m > 20` with inputs padded
# to 256 tokens, and 6-37% faster inference depending on model size: the longer
# the inputs, the smaller the prompt's share and the smaller the saving.

# %%
if plt:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    pt_keys = [k for k in models if k[0] == "PT"]
    dept_keys = [k for k in models if k[0] == "DePT"]
    ax.plot([k[1] for k in pt_keys], [1000 * best[k] for k in pt_keys], marker="o", label="PT, prompt length l")
    ax.plot([k[1] for k in dept_keys], [1000 * best[k] for k in dept_keys], marker="s", linestyle="",
            label="DePT, prompt length m (r from the budget)")
    ax.annotate("PT l=100", (100, 1000 * best[("PT", 100)]), textcoords="offset points", xytext=(-25, -18))
    ax.annotate("DePT m=60", (60, 1000 * best[("DePT", 60)]), textcoords="offset points", xytext=(5, -15))
    ax.set(xlabel="prompt tokens in front of a 32-token input", ylabel="ms per forward (batch of 8)",
           title="a shorter prompt is cheaper (small T5, this machine)", ylim=(0, None))
    ax.legend()
    save(fig, "dept_prompt_cost.png")

# %% [markdown]
# You should see (in `dept_prompt_cost.png`) a rising line for PT with the DePT
# points on it.
#
# **Next:** tutorial 5, ADePT, replaces the position-wise offset with a
# token-wise one.
