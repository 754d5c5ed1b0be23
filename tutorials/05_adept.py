# %% [markdown]
# # Tutorial 5: ADePT, a token-wise offset
#
# DePT (tutorial 4) adds row `i` of `A @ B` to whatever token sits at input
# position `i`: its offset belongs to the *position*. ADePT (Tang, Hu, Liu,
# ICLR 2025) keeps DePT's short prompt but computes the offset from the token's
# own embedding with a small feed-forward network, so it belongs to the *token*:
#
# ```
# E'(x) = E(x) + relu(dropout(E(x) @ W1 + b1)) @ W2 + b2      W1 (d x r), b1 (r), W2 (r x d), b2 (d)
# input = [P_s ; E'(x)]                                        P_s (m x d)
# ```
#
# `W1` starts uniform in `(-1/sqrt(r), 1/sqrt(r))`; `b1`, `W2` and `b2` start at
# zero, so the offset is exactly zero at first. Dropout (0.1) acts in training
# only. Two consequences we check below: the offset of a word is the same
# wherever it stands, and because it depends on the token id alone it can be
# computed once for the whole vocabulary and folded into an embedding table,
# after which ADePT costs at inference exactly what PT with `m` tokens costs.

# %%
import time

import torch

from minidept.methods import PromptConfig, budget, parameter_count
from minidept.prompted import PromptedModel

from tutorial_setup import FAST, plt, save, tiny_backbone, tokenizer_for  # shared set-up

torch.manual_seed(0)


# %% [markdown]
# ## The budget
#
# ADePT trains `m*d` numbers in `P_s` and `2*d*r + r + d` in the network
# (biases counted). Within PT's budget (`l = 100`), `budget("adept", ...)` gives
# the largest `r`. Unlike DePT's, ADePT's budget does not depend on the input
# length `s`: the network is applied to each token, whatever its position.

# %%
print(" m   r   trainable (d = 768)   PT's l*d")
for m in (0, 20, 40, 60, 80):
    r = budget("adept", l=100, m=m, s=256, d=768)
    print(f"{m:2d}  {r:2d}   {parameter_count('adept', m, r, 256, 768):17,}   {100 * 768:,}")

# %% [markdown]
# You should see trainable numbers just under PT's 76,800:
#
# ```output
#  m   r   trainable (d = 768)   PT's l*d
#  0  49              76,081   76,800
# 20  39              76,071   76,800
# 40  29              76,061   76,800
# 60  19              76,051   76,800
# 80   9              76,041   76,800
# ```
#
# ## ADePT and DePT on a tiny T5
#
# As in tutorial 4: the real T5 tokenizer and a tiny random T5 with its
# vocabulary when `MINIDEPT_DATA` is set, the demo's byte tokenizer and T5
# otherwise. Width 64, `l = 100`, `m = 60`, inputs of at most 128 tokens.

# %%
tokenizer, backbone = tokenizer_for("t5"), tiny_backbone("t5")

adept = PromptedModel(backbone, PromptConfig("adept", l=100, m=60, max_length=128)).eval()
dept = PromptedModel(backbone, PromptConfig("dept", l=100, m=60, max_length=128)).eval()
offset_net = adept.offset                              # the AdaptiveOffset module
print("the offset network's tensors:", {name: tuple(p.shape) for name, p in offset_net.named_parameters()},
      f"| hidden width r = {adept.config.r}")
print(f"trainable: ADePT {sum(p.numel() for p in adept.trainable_parameters()):,}, "
      f"DePT {sum(p.numel() for p in dept.trainable_parameters()):,}, PT {100 * 64:,}")

# %% [markdown]
# You should see
#
# ```output
# the offset network's tensors: {'W1': (64, 19), 'b1': (19,), 'W2': (19, 64), 'b2': (64,)} | hidden width r = 19
# trainable: ADePT 6,355, DePT 6,336, PT 6,400
# ```
#
# ## Zero at initialisation
#
# With `W2 = 0` and `b2 = 0` the offset is exactly zero, so ADePT starts as PT
# with the short prompt, bit for bit.

# %%
text = "the film was good , the film was good"
ids = torch.tensor([tokenizer.encode(text).ids])
decoder_input_ids = torch.zeros(1, 1, dtype=torch.long)
pt_short = PromptedModel(backbone, PromptConfig("pt", l=60, max_length=128)).eval()
with torch.no_grad():
    pt_short.prompt.P.copy_(adept.prompt.P)
    same = torch.equal(adept(ids, decoder_input_ids=decoder_input_ids),
                       pt_short(ids, decoder_input_ids=decoder_input_ids))
    print("ADePT logits == PT (l = m) logits at initialisation:", same)

# %% [markdown]
# You should see
#
# ```output
# ADePT logits == PT (l = m) logits at initialisation: True
# ```
#
# ## Token-wise against position-wise
#
# To see the offsets we give both methods random values where training would
# move them away from zero: ADePT's `W2` and `b2`, DePT's `B`. Then we compute
# the offset `E'(x) - E(x)` of each input token, written out as ADePT's
# equation and checked against the module.

# %%
with torch.no_grad():
    offset_net.W2.normal_(0, 0.3)
    offset_net.b2.normal_(0, 0.1)
    dept.offset.B.normal_(0, 0.1)
    E = backbone.get_input_embeddings()(ids)                                          # (1, L, d)
    net = offset_net
    by_hand = E + torch.relu(E @ net.W1 + net.b1) @ net.W2 + net.b2                   # eval: no dropout
    print("E' by hand == AdaptiveOffset:", torch.allclose(adept.embed(ids), by_hand, atol=1e-6))


def offsets(model, ids):
    """E'(x) - E(x) for every input position, (L, d)."""
    with torch.no_grad():
        return (model.embed(ids) - backbone.get_input_embeddings()(ids))[0]    # embed(ids) is E'(x)


token_ids = ids[0].tolist()
first = next(i for i, t in enumerate(token_ids) if t in token_ids[i + 1:])   # the first token that comes back
second = token_ids.index(token_ids[first], first + 1)
print(f"token {tokenizer.id_to_token(token_ids[first])!r} at positions {first} and {second}:")
for name, model in [("ADePT", adept), ("DePT", dept)]:
    off = offsets(model, ids)
    print(f"  {name:5s} max |offset[{first}] - offset[{second}]| = {(off[first] - off[second]).abs().max().item():.3f}")

# %% [markdown]
# You should see `True`, then 0.000 for ADePT (the same word gets the same
# offset wherever it is) and a clearly non-zero difference for DePT (two
# positions, two offsets). On the demo (byte tokens: `'t'` is the first byte
# that comes back):
#
# ```output demo
# E' by hand == AdaptiveOffset: True
# token 't' at positions 0 and 20:
#   ADePT max |offset[0] - offset[20]| = 0.000
#   DePT  max |offset[0] - offset[20]| = 0.306
# ```
#
# Now shift the whole sentence right by putting a word in front. ADePT's
# offsets move with the tokens; DePT's stay where they were, at the positions,
# and now land on different tokens.

# %%
shifted_ids = torch.tensor([tokenizer.encode("so " + text).ids])
shift = shifted_ids.shape[1] - ids.shape[1]            # tokens added in front
for name, model in [("ADePT", adept), ("DePT", dept)]:
    before, after = offsets(model, ids), offsets(model, shifted_ids)
    follows_tokens = (before - after[shift:]).abs().max().item()
    stays_at_positions = (before[:-1] - after[:before.shape[0] - 1]).abs().max().item()
    print(f"{name:5s} offset follows the token: max diff {follows_tokens:.3f} | "
          f"stays at the position: max diff {stays_at_positions:.3f}")

# %% [markdown]
# You should see ADePT with 0.000 on the left (its offsets follow the tokens)
# and DePT with 0.000 on the right (its offsets stay at the positions):
#
# ```output demo
# ADePT offset follows the token: max diff 0.000 | stays at the position: max diff 5.142
# DePT  offset follows the token: max diff 0.743 | stays at the position: max diff 0.000
# ```
#
# The last position (`</s>`) is left out of the right-hand comparison.
#
# The same in a picture: each panel shows the offset vectors (the first 24 of
# 64 dimensions) of every input position, for the sentence and for the shifted
# sentence.

# %%
if plt:
    dims = 24
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
    for row, (name, model) in enumerate([("DePT (position-wise)", dept), ("ADePT (token-wise)", adept)]):
        panels = [offsets(model, sequence)[:, :dims] for sequence in (ids, shifted_ids)]
        limit = max(off.abs().max().item() for off in panels)           # one colour scale per method
        for col, (sequence, off) in enumerate(zip((ids, shifted_ids), panels)):
            ax = axes[row, col]
            image = ax.imshow(off, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
            labels = [tokenizer.id_to_token(i) for i in sequence[0].tolist()]
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels([f"{p}: {t}" for p, t in enumerate(labels)], fontsize=7)
            ax.set_title(f"{name}, {'sentence' if col == 0 else 'shifted by one word'}", fontsize=10)
        axes[row, 0].set_ylabel("input position: token")
        fig.colorbar(image, ax=axes[row], shrink=0.9, label=f"{name.split()[0]} offset")
    for ax in axes[1]:
        ax.set_xlabel(f"offset dimension (first {dims} of 64)")
    save(fig, "adept_vs_dept_offsets.png")

# %% [markdown]
# You should see (in `adept_vs_dept_offsets.png`): in the DePT row, the two
# panels have identical rows position by position, whatever token now stands
# there; in the ADePT row, equal tokens have equal rows (every occurrence of the
# same word or byte shows the same stripe) and the whole pattern slides down
# with the words in the shifted sentence.
#
# ## Folding the offset into the embedding table
#
# Since `E'` depends only on the token id, we can compute it once for all `V`
# ids: a new `V x d` table `E + offset(E)` (`AdaptiveOffset.fold`). At
# inference the input is then one table lookup, and ADePT is exactly PT with
# `m` tokens whose input embeddings come from the folded table.
# `PromptedModel.fold()` switches this on for evaluation and generation.

# %%
table = offset_net.fold(backbone.get_input_embeddings().weight)
print("folded table:", tuple(table.shape), "= (vocabulary, d)")
batch_ids = torch.cat([ids, torch.zeros(1, shifted_ids.shape[1] - ids.shape[1], dtype=torch.long)], dim=1)
batch_ids = torch.cat([batch_ids, shifted_ids])
batch_mask = (batch_ids != 0).long()
with torch.no_grad():
    unfolded = adept(batch_ids, batch_mask, decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
    adept.fold()
    folded = adept(batch_ids, batch_mask, decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
    # the same by hand: PT with the short prompt, input embeddings from the table, the original frozen T5
    embeds = torch.cat([adept.prompt.P.expand(2, -1, -1), table[batch_ids]], dim=1)
    mask = torch.cat([torch.ones(2, 60, dtype=torch.long), batch_mask], dim=1)
    hidden, _ = backbone.decode(torch.zeros(2, 1, dtype=torch.long),
                                backbone.encode(inputs_embeds=embeds, attention_mask=mask), attention_mask=mask)
    by_hand = backbone.lm_logits(hidden)
    adept.unfold()
print(f"max |folded - unfolded| logits: {(folded - unfolded).abs().max().item():.1e}")
print(f"max |folded - PT-style lookup by hand|: {(folded - by_hand).abs().max().item():.1e}")

# %% [markdown]
# You should see the byte vocabulary's table (`(32128, 64)` with the real
# one:
#
# ```output data
# folded table: (32128, 64) = (vocabulary, d)
# ```
#
# ), and both differences about `1e-6` or less (the network applied to a
# whole table or to a few tokens can round the same sums slightly differently;
# `~` marks numbers that depend on the machine):
#
# ```output demo
# folded table: (259, 64) = (vocabulary, d)
# max |folded - unfolded| logits: ~0.0e+00
# max |folded - PT-style lookup by hand|: ~0.0e+00
# ```
#
# What folding saves at inference, timed on this machine: ADePT computed on the
# fly, ADePT folded, and PT with the same 60-token prompt. The inputs are a
# batch of 32 copies of our sentence; each configuration is timed in turns and
# the fastest of several rounds kept.

# %%
inputs = batch_ids.repeat(16, 1)
inputs_mask = batch_mask.repeat(16, 1)
start_tokens = torch.zeros(inputs.shape[0], 1, dtype=torch.long)
variants = {"ADePT, offset on the fly": (adept, adept.unfold),
            "ADePT, folded table": (adept, adept.fold),     # fold() builds the table (not timed)
            "PT with m = 60 tokens": (pt_short, lambda: None)}
best = {name: float("inf") for name in variants}
with torch.no_grad():
    for _ in range(5 if FAST else 30):
        for name, (model, prepare) in variants.items():
            prepare()
            start = time.perf_counter()
            model(inputs, inputs_mask, decoder_input_ids=start_tokens)
            best[name] = min(best[name], time.perf_counter() - start)
adept.unfold()
for name, seconds in best.items():
    print(f"{name:25s} {1000 * seconds:6.2f} ms")

# %% [markdown]
# You should see three times (`~`: they depend on the machine) like
#
# ```output
# ADePT, offset on the fly   ~10.90 ms
# ADePT, folded table         ~10.80 ms
# PT with m = 60 tokens       ~10.70 ms
# ```
#
# close to each other, the on-the-fly ADePT usually
# the slowest (ours, in two runs with the real vocabulary: 10.9, 10.8, 10.7 ms
# and 14.9, 11.2, 11.1 ms). On a model this small the offset network is cheap next to the
# Transformer, so the measured gain is small and can drown in timing noise.
# What folding guarantees is structural: the folded model does exactly the
# work of PT with `m` tokens, one table lookup per input token, however large
# `r` is. The price is memory: one more `V x d` table, 98.7 MB for T5-base
# (32,128 x 768 in float32), built once after training.
#
# **Next:** tutorial 6, EPT: DePT's decomposition plus prompt fusion and a
# gated multi-space projection.
