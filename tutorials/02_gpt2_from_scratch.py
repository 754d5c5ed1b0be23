# %% [markdown]
# # Tutorial 2: GPT-2 from scratch
#
# GPT-2 (Radford et al., 2019) is a decoder-only Transformer: one stack of
# causal self-attention blocks reads the text and predicts the next token.
# minidept writes it in one file, `minidept/models/gpt2.py`. Each block is pre-norm:
#
# ```
# x = x + attn(ln_1(x))      causal multi-head self-attention
# x = x + mlp(ln_2(x))       Linear -> GELU (tanh approximation) -> Linear
# ```
#
# with learned absolute position embeddings `wpe` added to the token embeddings
# `wte`, a final norm `ln_f`, and an output head that *is* `wte`.
#
# In this tutorial we
# 1. build a tiny GPT-2 whose module names are the checkpoint's names;
# 2. see why the checkpoint's weights are stored transposed ("Conv1D");
# 3. save and reload it, and check it against `transformers` (when installed);
# 4. take apart the key/value cache: cached decoding gives exactly what
#    recomputing everything gives, and costs much less.

# %%
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

import minidept
from minidept.models.gpt2 import GPT2, GPT2Config
from minidept.io.checkpoint import save_pretrained

from tutorial_setup import FAST, hf_config, plt, save, tiny_gpt2_config, tokenizer_for  # shared set-up

torch.manual_seed(0)


# %% [markdown]
# ## A tokenizer and a tiny config
#
# With `MINIDEPT_DATA` we use GPT-2's real byte-level BPE (50,257 tokens,
# `<|endoftext|>` = 50256); without it the demo's byte tokenizer (259 ids, its
# `<|endoftext|>` is id 1). The model: 2 blocks of width 64, 4 heads, 256 positions.

# %%
tokenizer = tokenizer_for("gpt2")                 # the real one with MINIDEPT_DATA, else the byte tokenizer
eos = tokenizer.token_to_id("<|endoftext|>")
print("vocabulary:", tokenizer.get_vocab_size(), "| 'Hello world' ->", tokenizer.encode("Hello world").ids,
      "| <|endoftext|> =", eos)

config = tiny_gpt2_config(tokenizer.get_vocab_size(), bos_token_id=eos, eos_token_id=eos)   # 2 blocks of width 64
model = GPT2(config).eval()

# %% [markdown]
# You should see, with the byte tokenizer,
#
# ```output demo
# vocabulary: 259 | 'Hello world' -> [75, 104, 111, 111, 114, 35, 122, 114, 117, 111, 103] | <|endoftext|> = 1
# ```
#
# and with the real tokenizer (GPT-2 adds no special tokens)
#
# ```output data
# vocabulary: 50257 | 'Hello world' -> [15496, 995] | <|endoftext|> = 50256
# ```
#
# GPT-2 initialises its weights from N(0, 0.02). Such a small random network
# mostly copies its input to its output (tutorial 1 shows the same for T5), so
# greedy decoding would repeat one token forever and every comparison below
# would be trivially true. We redraw the weights larger, as the project's tests
# do, so that different code paths have a real chance to disagree.

# %%
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() == 2:                                   # matrices and embeddings; norms and biases stay
            p.normal_(0.0, 0.3)
print(f"the tiny GPT-2 has {sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# You should see
#
# ```output demo
# the tiny GPT-2 has 133,056 parameters
# ```
#
# or, with the real vocabulary, whose 50,257 x 64 table holds most of them,
#
# ```output data
# the tiny GPT-2 has 3,332,928 parameters
# ```

# %% [markdown]
# ## Module names are checkpoint names
#
# Loading needs no rename table (compare T5's in tutorial 1): the submodules are
# named as in the checkpoint, `wte`, `wpe`, `h.0.attn.c_attn`, `ln_f`.

# %%
print("our parameter names (the checkpoint's) and shapes:")
for name, tensor in list(model.state_dict().items())[:8]:
    print(f"  {name:22s} {tuple(tensor.shape)}")

# %% [markdown]
# You should see (`V` = 259 rows of `wte` here, 50,257 with the real vocabulary)
#
# ```output demo
# our parameter names (the checkpoint's) and shapes:
#   wte.weight             (259, 64)
#   wpe.weight             (256, 64)
#   h.0.ln_1.weight        (64,)
#   h.0.ln_1.bias          (64,)
#   h.0.attn.c_attn.weight (192, 64)
#   h.0.attn.c_attn.bias   (192,)
#   h.0.attn.c_proj.weight (64, 64)
#   h.0.attn.c_proj.bias   (64,)
# ```
#
# `h.0.attn.c_attn` holds q, k and v in one matrix: 3 x 64 outputs.
#
# There is no `lm_head`: the output head multiplies by `wte.weight` itself, one
# shared Parameter, so training the embedding would train the head too.

# %%
x = torch.randn(1, 3, config.n_embd)
print("lm_logits(h) == h @ wte.weight.T:", torch.equal(model.lm_logits(x), x @ model.wte.weight.T))
print("a separate lm_head parameter?", any(name.startswith("lm_head") for name, _ in model.named_parameters()))

# %% [markdown]
# You should see
#
# ```output
# lm_logits(h) == h @ wte.weight.T: True
# a separate lm_head parameter? False
# ```
#
# ## The transposed "Conv1D" weights
#
# OpenAI's original code wrote each projection as `y = x @ W + b` with `W` of
# shape `(in, out)`, and called the layer "Conv1D". PyTorch's `nn.Linear`
# computes `y = x @ W.T + b` with `W` of shape `(out, in)`. So the four
# projection weights of every block (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`,
# `mlp.c_proj`) sit transposed in the checkpoint. `GPT2.to_checkpoint` (what
# `minidept.save_pretrained` writes) puts them back in that layout;
# `GPT2.from_checkpoint` checks the flipped shape and transposes. Let us look inside the file.

# %%
folder = Path(tempfile.mkdtemp()) / "tiny-gpt2"
save_pretrained(model, folder)
with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
    stored = f.get_tensor("transformer.h.0.mlp.c_fc.weight")
    print("keys in the file start with:", sorted(f.keys())[:2])
ours = model.h[0].mlp.c_fc.weight
print("checkpoint h.0.mlp.c_fc.weight", tuple(stored.shape), "(in, out)  | ours", tuple(ours.shape), "(out, in)")
print("stored == ours.T:", torch.equal(stored, ours.T))
h = torch.randn(2, config.n_embd)
print("x @ W_checkpoint + b == nn.Linear(x):", torch.allclose(h @ stored + model.h[0].mlp.c_fc.bias,
                                                              model.h[0].mlp.c_fc(h), atol=1e-5))

# %% [markdown]
# You should see
#
# ```output
# keys in the file start with: ['transformer.h.0.attn.c_attn.bias', 'transformer.h.0.attn.c_attn.weight']
# checkpoint h.0.mlp.c_fc.weight (64, 256) (in, out)  | ours (256, 64) (out, in)
# stored == ours.T: True
# x @ W_checkpoint + b == nn.Linear(x): True
# ```
#
# The `transformer.` prefix is what `GPT2LMHeadModel` writes; the original
# `gpt2` Hub checkpoint has bare `h.0...` keys, and both load.
#
# ## Loading the checkpoint back
#
# `minidept.load_model` reads `model_type: gpt2` in `config.json` and calls
# `GPT2.from_checkpoint`. For the real model: `minidept.load_model("gpt2")`
# (Hub) or a downloaded folder.

# %%
text = "The quick brown fox jumps over"
ids = torch.tensor([tokenizer.encode(text).ids])
loaded = minidept.load_model(folder)
with torch.no_grad():
    logits = model(ids)
    print(type(loaded).__name__, "| logits", tuple(logits.shape), "| equal after the round trip:",
          torch.equal(loaded(ids), logits))

real_config = GPT2Config.from_hf_config(hf_config("gpt2")) if hf_config("gpt2") else GPT2Config()  # GPT-2 small
with torch.device("meta"):                              # shapes only, no memory
    gpt2_small = GPT2(real_config)
print(f"GPT-2 small: {real_config.n_layer} blocks of width {real_config.n_embd}, "
      f"{sum(p.numel() for p in gpt2_small.parameters()):,} parameters")

# %% [markdown]
# You should see
#
# ```output demo
# GPT2 | logits (1, 30, 259) | equal after the round trip: True
# ```
#
# (with the real tokenizer the text is 6 tokens:
#
# ```output data
# GPT2 | logits (1, 6, 50257) | equal after the round trip: True
# ```
#
# ), and
#
# ```output
# GPT-2 small: 12 blocks of width 768, 124,439,808 parameters
# ```
#
# the number usually quoted for GPT-2 small.
#
# ## Checking against the reference
#
# If `transformers` is installed, its `GPT2LMHeadModel` loads the same folder.
# Logits must agree to float32 rounding and greedy tokens must be identical.

# %%
try:
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()                   # keep the output to what this tutorial is about
except ImportError:
    GPT2LMHeadModel = None
    print("transformers is not installed: skipping the comparison (pip install transformers)")

if GPT2LMHeadModel is not None:
    reference = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = reference(ids).logits
        their_tokens = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                          max_new_tokens=10, pad_token_id=eos)[:, ids.shape[1]:]
    print(f"max |ours - transformers| over the logits: {(logits - theirs).abs().max().item():.2e}")
    print("same greedy tokens:", their_tokens.tolist() == model.generate(ids, max_new_tokens=10).tolist())

# %% [markdown]
# You should see
#
# ```output
# max |ours - transformers| over the logits: ~2.86e-06
# same greedy tokens: True
# ```
#
# A maximum difference of about `1e-5` or less is float32 rounding (the large
# random weights make large logits, and the rounding error grows with them);
# `~` marks a number that depends on the machine.
#
# ## The key/value cache
#
# To generate, the model predicts one token, appends it, and runs again. Run
# naively, step `t` recomputes all `t` earlier positions. But under causal
# attention position `i` only ever sees positions `<= i`, so its keys and values
# never change once computed. The cache keeps them: each new step feeds only
# the newest token, whose query attends over the cached keys plus its own.
#
# `hidden_states(..., past_key_values=past, use_cache=True)` returns, per layer,
# `(k, v)` of shape `(B, n_head, P + T, head_dim)`: the past `P` positions plus
# the `T` new ones. First: running the text in one pass, or token by token
# with the cache, gives the same hidden states.

# %%
with torch.no_grad():
    one_pass, _ = model.hidden_states(ids)
    past, steps = None, []
    for t in range(ids.shape[1]):
        hidden, past = model.hidden_states(ids[:, t:t + 1], past_key_values=past, use_cache=True)
        steps.append(hidden)
    step_by_step = torch.cat(steps, dim=1)
print("cache after the last step, layer 0 keys:", tuple(past[0][0].shape), "= (B, heads, positions, head_dim)")
print(f"max |one pass - token by token with the cache|: {(one_pass - step_by_step).abs().max().item():.2e}")

# %% [markdown]
# You should see
#
# ```output demo
# cache after the last step, layer 0 keys: (1, 4, 30, 16) = (B, heads, positions, head_dim)
# max |one pass - token by token with the cache|: ~4.59e-06
# ```
#
# or 6 positions with the real tokenizer
#
# ```output data
# cache after the last step, layer 0 keys: (1, 4, 6, 16) = (B, heads, positions, head_dim)
# ```
#
# A difference of a few `1e-6` or less is float32 rounding.
#
# Now greedy decoding written out twice: without a cache (feed the whole
# sequence every step) and with one (feed only the newest token). `generate`
# is the second loop plus right padding and end-of-text handling.

# %%
def greedy_uncached(ids, n):
    for _ in range(n):
        hidden, _ = model.hidden_states(ids)                             # recompute every position
        next_token = model.lm_logits(hidden[:, -1:]).argmax(-1)         # (B, 1)
        ids = torch.cat([ids, next_token], dim=1)
    return ids


def greedy_cached(ids, n):
    hidden, past = model.hidden_states(ids, use_cache=True)            # the text once
    for _ in range(n):
        next_token = model.lm_logits(hidden[:, -1:]).argmax(-1)         # (B, 1)
        ids = torch.cat([ids, next_token], dim=1)
        hidden, past = model.hidden_states(next_token, past_key_values=past, use_cache=True)  # one position
    return ids


n_new = 20
with torch.no_grad():
    uncached, cached = greedy_uncached(ids, n_new), greedy_cached(ids, n_new)
    generated = model.generate(ids, max_new_tokens=n_new)
print("new tokens, uncached:", uncached[0, ids.shape[1]:].tolist())
print("cached == uncached:", torch.equal(cached, uncached))
written = uncached[0, ids.shape[1]:][:generated.shape[1]]                 # what generate() wrote, if it stopped early
print("generate() gives the same tokens:", generated[0].tolist() == written.tolist())

# %% [markdown]
# You should see 20 token ids that are not all the same, and `True` twice:
#
# ```output demo
# new tokens, uncached: [228, 108, 51, 74, 51, 54, 129, 87, 128, 60, 200, 87, 245, 51, 74, 51, 51, 208, 185, 128]
# cached == uncached: True
# generate() gives the same tokens: True
# ```
# (`generate` stops early if every row writes `<|endoftext|>`; we compare what
# it wrote.)
#
# What the cache saves: without it, the step that writes token `t + 1` runs
# the model over all `t` positions; with it, over one position (whose
# attention still reads `t` cached keys, a small part of the work). We time one
# such step for a batch of 8 rows at growing context lengths `t`.

# %%
contexts = [16, 64, 128, 192, 255] if FAST else [16, 32, 64, 96, 128, 160, 192, 224, 255]
repeats = 5 if FAST else 20                    # the best of several runs: other programs disturb single timings


def best_ms(step):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


timings = {"without cache (all t + 1 positions)": [], "with cache (1 new position)": []}
with torch.no_grad():
    for t in contexts:
        seq = torch.randint(3, config.vocab_size, (8, t + 1))
        _, past = model.hidden_states(seq[:, :t], use_cache=True)               # the cache of the first t
        uncached_ms = best_ms(lambda: model.hidden_states(seq))
        cached_ms = best_ms(lambda: model.hidden_states(seq[:, t:], past_key_values=past, use_cache=True))
        timings["without cache (all t + 1 positions)"].append(uncached_ms)
        timings["with cache (1 new position)"].append(cached_ms)
        print(f"context {t:3d}: without cache {uncached_ms:6.2f} ms | with cache {cached_ms:5.2f} ms")
if plt:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, values in timings.items():
        ax.plot(contexts, values, marker="o", label=label)
    ax.set(xlabel="context length t (tokens already there)", ylabel="ms for the next token (batch of 8)",
           title=f"one decoding step, tiny GPT-2 ({config.n_layer} blocks, width {config.n_embd}), this machine")
    ax.legend()
    save(fig, "gpt2_kv_cache.png")

# %% [markdown]
# You should see timings like these (ours, with the test suite's fewer
# lengths; `~` marks numbers that depend on the machine):
#
# ```output
# context  16: without cache ~0.63 ms | with cache ~0.51 ms
# context 255: without cache ~27.81 ms | with cache ~0.84 ms
# ```
#
# The cached step stays below about 1 ms at every length while
# the uncached one grows with the context, to 15 or more times the cached cost
# at 255 positions (ours: about 0.5 ms with the cache against 8 ms without on
# a quiet machine, up to 45 ms when other programs were busy; your numbers will
# differ, the shape of `gpt2_kv_cache.png` will not; the output head is left
# out of both timings). Summed over a generation of `n` tokens, the uncached
# loop costs about `n^2 / 2` position-passes, the cached one `n`.
#
# ## Right-padded batches
#
# Rows of a batch have different lengths. minidept pads on the **right**
# (real tokens first), so every real token keeps its position. `generate` then
# continues each row from its last real token, gives the new tokens the
# positions after it, and keeps the pads masked. A padded batch gives each row
# what that row alone gives.

# %%
texts = ["The quick brown fox jumps over", "Hello world"]
rows = [tokenizer.encode(t).ids for t in texts]
T = max(map(len, rows))
batch = torch.tensor([r + [eos] * (T - len(r)) for r in rows])
mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
with torch.no_grad():
    together = model.generate(batch, attention_mask=mask, max_new_tokens=8)
    alone = [model.generate(torch.tensor([r]), max_new_tokens=8)[0].tolist() for r in rows]
print("mask:\n", mask)
print("batched == one row at a time:", [row[:len(a)] for row, a in zip(together.tolist(), alone)] == alone)

# %% [markdown]
# You should see the mask with zeros at the end of the shorter row, and
#
# ```output
# batched == one row at a time: True
# ```
#
# **Next:** tutorial 3 puts a trainable soft prompt in front of both models.
