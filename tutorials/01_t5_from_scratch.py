# %% [markdown]
# # Tutorial 1: T5 from scratch
#
# T5 (Raffel et al., 2020) is the encoder-decoder Transformer on which DePT was
# published. minidept writes it out in one file, `minidept/models/t5.py`, that reads top
# to bottom: the config, the building blocks, the two stacks, the model with
# greedy generation, and loading Hugging Face checkpoints.
#
# In this tutorial we
# 1. build a tiny T5 and look at its parts;
# 2. look at the relative position buckets, T5's only notion of word order;
# 3. run the encoder, the decoder and the output head by hand;
# 4. save it as a Hugging Face checkpoint and load it back with `minidept.load_model`;
# 5. check it against the reference implementation in `transformers` (when installed).
#
# The weights are random: no pretrained weights are needed to learn how the model
# works. Runs as a script (`python tutorials/01_t5_from_scratch.py`) or as a
# notebook (Jupyter and VS Code open `# %%` files as notebooks).

# %%
import json
import tempfile
from pathlib import Path

import torch

import minidept
from minidept.models.t5 import T5, T5Config, relative_position_bucket, rename_table
from minidept.io.checkpoint import save_pretrained

from tutorial_setup import hf_config, plt, save, tiny_t5_config, tokenizer_for, vocab_size_for  # shared set-up

torch.manual_seed(0)


# %% [markdown]
# ## A tokenizer and a tiny config
#
# With `MINIDEPT_DATA` pointing at the project's data folder we use the real T5
# SentencePiece vocabulary (32,100 pieces; the model's table has 32,128 rows, as
# in every T5 checkpoint). Without it we use the embedded demo's byte-level
# tokenizer (259 ids: 3 special tokens and the 256 byte values). Either way the
# model is tiny: 2 encoder and 2 decoder blocks of width 64.

# %%
tokenizer = tokenizer_for("t5")                   # the real one with MINIDEPT_DATA, else the byte tokenizer
print("vocabulary:", tokenizer.get_vocab_size(), "tokens;", "'Hello world' ->", tokenizer.encode("Hello world").ids)

config = tiny_t5_config(vocab_size_for("t5"))     # 2 + 2 blocks of width 64, 4 heads; T5Config's other defaults
model = T5(config).eval()       # eval(): dropout off, so the same input always gives the same output
print(config)

# %% [markdown]
# You should see, with the byte tokenizer (byte value + 3, then `</s>`):
#
# ```output demo
# vocabulary: 259 tokens; 'Hello world' -> [75, 104, 111, 111, 114, 35, 122, 114, 117, 111, 103, 1]
# ```
#
# and with the real tokenizer the ids every T5 checkpoint knows (`1` is
# `</s>`, appended to every input):
#
# ```output data
# vocabulary: 32100 tokens; 'Hello world' -> [8774, 296, 1]
# ```
#
# ## The parts
#
# One `shared` embedding table feeds the encoder and the decoder (and, in the
# original T5, is also the output head). Each stack holds its list of pre-norm
# residual blocks and what the blocks share: one relative position bias table
# and a final norm.

# %%
print(model.encoder.blocks[0])
print()
for name, part in [("shared embedding", model.shared), ("encoder", model.encoder), ("decoder", model.decoder)]:
    print(f"{name:17s} {sum(p.numel() for p in part.parameters()):>10,} parameters")

# %% [markdown]
# You should see a `Block` made of `self_attn_norm` (an `RMSNorm`), `self_attn` (q, k,
# v, o without biases), `ffn_norm` and `ffn` (`wi`, `wo`). A decoder block adds
# `cross_attn_norm` and `cross_attn`:
#
# ```output
# encoder               65,984 parameters
# decoder               98,880 parameters
# ```
#
# With the real vocabulary the embedding table (32,128 x 64 = 2,056,192
# parameters) outweighs both stacks together; with the byte tokenizer it has
# 259 x 64 = 16,576.
#
# Four details that readers of T5 get wrong, each one line in `t5.py`:
# - the layer norm is an RMS norm, `x / sqrt(mean(x^2) + eps) * w`: no mean
#   subtraction, no bias;
# - attention has no `1 / sqrt(d_kv)` scaling (T5 folds it into the
#   initialisation of `q`), and embeddings have no `sqrt(d_model)` scaling;
# - with a tied head the decoder output is multiplied by `d_model ** -0.5`
#   before the shared embedding (T5 v1.1 / FLAN-T5 have a separate `lm_head`
#   and skip this);
# - `gated-gelu` (v1.1) uses the tanh approximation of GELU.
#
# Let us check the first one against its formula.

# %%
x = torch.randn(2, 5, config.d_model)
norm = model.encoder.final_norm
by_hand = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + config.layer_norm_epsilon) * norm.weight
print("RMS norm equals x / rms(x) * w:", torch.allclose(norm(x), by_hand, atol=1e-6))
print("output mean of each row (not 0: no mean subtraction):", [f"{v:.2f}" for v in norm(x).mean(-1)[0].tolist()])

# %% [markdown]
# You should see
#
# ```output
# RMS norm equals x / rms(x) * w: True
# ```
#
# and row means that are not zero (these on the demo; the real vocabulary's
# larger table draws other random numbers before them):
#
# ```output demo
# output mean of each row (not 0: no mean subtraction): ['0.08', '-0.15', '-0.16', '0.08', '0.09']
# ```
#
# ## Relative position buckets
#
# T5 has no position embeddings. Instead each attention layer adds a learned
# scalar per head to the score of query `i` and key `j`, looked up by the
# *bucket* of the distance `j - i` (T5 paper, section 2.1). Half the buckets hold
# one distance each; the other half cover distances up to `max_distance` in
# logarithmically wider bins; anything farther shares the last bucket.
#
# - In the encoder the buckets are *bidirectional*: half of them for keys after
#   the query, half for keys before.
# - In the decoder they are *causal*: only keys at or before the query matter
#   (later keys are masked anyway), so all 32 buckets go to the past.
#
# Here are the buckets of t5-small's settings (32 buckets, max distance 128):

# %%
distance = torch.arange(-20, 21)
encoder_buckets = relative_position_bucket(distance, bidirectional=True, num_buckets=32, max_distance=128)
decoder_buckets = relative_position_bucket(distance, bidirectional=False, num_buckets=32, max_distance=128)
print("key - query:", distance[::2].tolist())
print("encoder    :", encoder_buckets[::2].tolist())
print("decoder    :", decoder_buckets[::2].tolist())
far = torch.tensor([-500, -128, -64, -32, -16, 16, 32, 64, 128, 500])
print("far away   :", dict(zip(far.tolist(), relative_position_bucket(far, True, 32, 128).tolist())))

# %% [markdown]
# You should see
#
# ```output
# key - query: [-20, -18, -16, -14, -12, -10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
# encoder    : [10, 10, 10, 9, 9, 8, 8, 6, 4, 2, 0, 18, 20, 22, 24, 24, 25, 25, 26, 26, 26]
# decoder    : [17, 16, 16, 14, 12, 10, 8, 6, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
# far away   : {-500: 15, -128: 15, -64: 14, -32: 12, -16: 10, 16: 26, 32: 28, 64: 30, 128: 31, 500: 31}
# ```
#
# For the encoder, the distances -7 .. 0 in buckets 7 .. 0 one
# by one, keys after the query in the upper half (+2 -> 18, +4 -> 20: distance
# +1 is bucket 17), and wider bins farther out (-20 .. -16 all in bucket 10).
# The last bucket of each half (15 before, 31 after) takes every distance from
# 91 on. In the
# decoder every key after the query falls in bucket 0, which does not matter
# because the causal mask hides those keys.
#
# The bucket map over a whole 64-token sequence is easier to look at:

# %%
T = 64
key_minus_query = torch.arange(T)[None, :] - torch.arange(T)[:, None]      # (T, T): j - i
maps = {"encoder (bidirectional)": relative_position_bucket(key_minus_query, True, 32, 128),
        "decoder (causal)": relative_position_bucket(key_minus_query, False, 32, 128)}
if plt:
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for ax, (title, buckets) in zip(axes, maps.items()):
        image = ax.imshow(buckets, cmap="turbo", vmin=0, vmax=31)
        ax.set(title=title, xlabel="key position j", ylabel="query position i")
    fig.colorbar(image, ax=axes[:2], label="bucket of j - i", shrink=0.85)
    d = torch.arange(-140, 141)
    axes[2].plot(d, relative_position_bucket(d, True, 32, 128), label="encoder")
    axes[2].plot(d, relative_position_bucket(d, False, 32, 128), label="decoder", linestyle="--")
    axes[2].axvline(-128, color="grey", linewidth=0.5)
    axes[2].axvline(128, color="grey", linewidth=0.5)
    axes[2].set(title="bucket against distance (max_distance = 128)", xlabel="key - query", ylabel="bucket")
    axes[2].legend()
    save(fig, "t5_position_buckets.png")

# %% [markdown]
# You should see (in `t5_position_buckets.png`) a symmetric pattern of diagonal
# bands for the encoder, narrow near the diagonal and wide far from it, and for
# the decoder bands below the diagonal only. The right panel shows the staircase:
# steps of one up to distance 8 (encoder) or 16 (decoder), then wider and wider
# steps, flat from distance 91 (encoder) or 113 (decoder) on. So T5 tells "3
# words before" from "4 words before", but not "100" from "120".
#
# The bias is computed **once per stack** and shared by every layer of that
# stack; the table itself lives in `encoder.relative_bias` (stored in block 0 in
# the checkpoint). Cross-attention has no position bias at all.

# %%
bias = model.position_bias(model.encoder, query_length=6, key_length=6)
print("encoder position bias:", tuple(bias.shape), "= (1, heads, queries, keys)")
print("table:", tuple(model.encoder.relative_bias.weight.shape), "= (buckets, heads)")

# %% [markdown]
# You should see
#
# ```output
# encoder position bias: (1, 4, 6, 6) = (1, heads, queries, keys)
# table: (32, 4) = (buckets, heads)
# ```
#
# ## A forward pass, piece by piece
#
# T5 reads the input with the encoder, then the decoder predicts the target one
# token at a time, attending to the encoder output. `forward` is exactly
# `encode`, `decode`, `lm_logits`; we call them one by one.

# %%
batch = [tokenizer.encode(text).ids for text in ["Hello world", "Attention rocks!"]]
length = max(map(len, batch))
input_ids = torch.tensor([ids + [config.pad_token_id] * (length - len(ids)) for ids in batch])
attention_mask = (torch.arange(length)[None, :] < torch.tensor([len(ids) for ids in batch])[:, None]).long()
decoder_input_ids = torch.full((2, 1), config.decoder_start_token_id)   # the decoder starts from <pad>

with torch.no_grad():
    encoder_hidden = model.encode(input_ids, attention_mask)                      # (B, T, d_model)
    decoder_hidden, cache = model.decode(decoder_input_ids, encoder_hidden, attention_mask)
    logits = model.lm_logits(decoder_hidden)                                      # (B, 1, V)
    tied = torch.nn.functional.linear(decoder_hidden * config.d_model ** -0.5, model.shared.weight)
    print("input_ids", tuple(input_ids.shape), "-> encoder", tuple(encoder_hidden.shape),
          "-> decoder", tuple(decoder_hidden.shape), "-> logits", tuple(logits.shape))
    print("head = shared embedding after the d_model**-0.5 rescale:", torch.equal(logits, tied))
    print("forward() gives the same logits:", torch.equal(model(input_ids, attention_mask, decoder_input_ids), logits))

# %% [markdown]
# You should see, with the byte tokenizer,
#
# ```output demo
# input_ids (2, 17) -> encoder (2, 17, 64) -> decoder (2, 1, 64) -> logits (2, 1, 259)
# ```
#
# or with the real tokenizer
#
# ```output data
# input_ids (2, 4) -> encoder (2, 4, 64) -> decoder (2, 1, 64) -> logits (2, 1, 32128)
# ```
#
# then
#
# ```output
# head = shared embedding after the d_model**-0.5 rescale: True
# forward() gives the same logits: True
# ```
#
# `generate` decodes greedily with a key/value cache: each step feeds only the
# newest token and reuses the keys and values of the earlier ones (tutorial 2
# shows a cache in detail). The weights are random, so do not expect words.

# %%
generated = model.generate(input_ids, attention_mask, max_new_tokens=5)
print("greedy tokens:", generated.tolist())
cosine = torch.nn.functional.cosine_similarity(decoder_hidden[:, 0], model.shared.weight[0][None])
print("cosine(decoder output, embedding of its input token 0):", [f"{c:.2f}" for c in cosine.tolist()])

# %% [markdown]
# You should see
#
# ```output demo
# greedy tokens: [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
# cosine(decoder output, embedding of its input token 0): ['0.84', '0.85']
# ```
#
# The model keeps predicting token 0, the start token it was fed. That is
# what a *random* residual network does: its output is still mostly its input
# (the residual stream carries the input embedding through, cosine about
# 0.8-0.9 here), and
# the tied head scores the token whose embedding that is highest. A pretrained
# T5 has learned to do otherwise.
#
# ## Loading a Hugging Face checkpoint
#
# A Hugging Face T5 folder holds `config.json` and `model.safetensors`. We write
# one ourselves with `minidept.save_pretrained` (the same layout `transformers`
# writes) and read it back with `minidept.load_model`, which reads `config.json`
# and the weights (`minidept/io/checkpoint.py`), looks at `model_type` and calls
# `T5.from_checkpoint(config, tensors)`: the config becomes a `T5Config`, the
# model is built without memory for its weights, and the rename table below
# copies every tensor in, strictly.
#
# For a real model you pass a Hub id or a downloaded folder instead:
#
# ```python
# model = minidept.load_model("t5-small")          # downloads config.json + model.safetensors
# model = minidept.load_model("./t5-small")        # or a folder: hf download t5-small --local-dir ./t5-small
# ```

# %%
folder = Path(tempfile.mkdtemp()) / "tiny-t5"
save_pretrained(model, folder)
print("files:", sorted(p.name for p in folder.iterdir()))
print("model_type:", json.loads((folder / "config.json").read_text())["model_type"])
loaded = minidept.load_model(folder)
with torch.no_grad():
    same = torch.equal(loaded(input_ids, attention_mask, decoder_input_ids), logits)
print(type(loaded).__name__, "| same logits after the round trip:", same)

# %% [markdown]
# You should see
#
# ```output
# files: ['config.json', 'model.safetensors']
# model_type: t5
# T5 | same logits after the round trip: True
# ```
#
# The checkpoint uses Hugging Face's names (`encoder.block.0.layer.0.SelfAttention.q.weight`);
# our modules have readable ones (`encoder.blocks.0.self_attn.q.weight`). One
# printable table maps the one to the other. Loading is strict: every checkpoint
# key must be used (or be a known tied copy such as `encoder.embed_tokens.weight`)
# and every parameter filled, or `CheckpointError` lists what did not fit.

# %%
table = rename_table(config)
print("checkpoint key -> our parameter:")
for key in list(table)[:6]:
    print(f"  {key:62s} -> {table[key]}")
print(f"... {len(table)} keys in all")

# %% [markdown]
# You should see
#
# ```output
# checkpoint key -> our parameter:
#   shared.weight                                                  -> shared.weight
#   encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight -> encoder.relative_bias.weight
#   encoder.block.0.layer.0.layer_norm.weight                      -> encoder.blocks.0.self_attn_norm.weight
#   encoder.block.1.layer.0.layer_norm.weight                      -> encoder.blocks.1.self_attn_norm.weight
#   encoder.block.0.layer.0.SelfAttention.q.weight                 -> encoder.blocks.0.self_attn.q.weight
#   encoder.block.0.layer.0.SelfAttention.k.weight                 -> encoder.blocks.0.self_attn.k.weight
# ... 47 keys in all
# ```
#
# The relative bias of block 0 goes to `encoder.relative_bias.weight`; the shared
# embedding, per stack a bias table and a final norm, 8 tensors per encoder
# block and 13 per decoder block (its extra cross-attention and norm).
#
# A real t5-small's `config.json` maps onto the same dataclass (the project's
# data folder has a copy of it; without it we use the dataclass defaults, which
# are t5-small's). Building it on PyTorch's `meta` device allocates no memory,
# so we can count its parameters without any weights:

# %%
real_config = T5Config.from_hf_config(hf_config("t5-small")) if hf_config("t5-small") else T5Config()
with torch.device("meta"):
    t5_small = T5(real_config)
print(f"t5-small: d_model={real_config.d_model}, {real_config.num_layers}+{real_config.num_decoder_layers} blocks, "
      f"{sum(p.numel() for p in t5_small.parameters()):,} parameters")

# %% [markdown]
# You should see
#
# ```output
# t5-small: d_model=512, 6+6 blocks, 60,506,624 parameters
# ```
#
# ## Checking against the reference
#
# `transformers` is the reference implementation (a development dependency of
# minidept, never imported by the library itself). If it is installed we load
# the very same folder with `T5ForConditionalGeneration` and compare: the logits
# must agree to float32 rounding, and greedy decoding must give the same tokens.

# %%
try:
    from transformers import T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()                   # keep the output to what this tutorial is about
except ImportError:
    T5ForConditionalGeneration = None
    print("transformers is not installed: skipping the comparison (pip install transformers)")

if T5ForConditionalGeneration is not None:
    reference = T5ForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = reference(input_ids=input_ids, attention_mask=attention_mask,
                           decoder_input_ids=decoder_input_ids).logits
        their_tokens = reference.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                          num_beams=1, max_new_tokens=5)[:, 1:]   # drop the start token
    print(f"max |ours - transformers| over the logits: {(logits - theirs).abs().max().item():.2e}")
    print("same greedy tokens:", their_tokens.tolist() == generated.tolist())

# %% [markdown]
# You should see
#
# ```output
# max |ours - transformers| over the logits: ~0.00e+00
# same greedy tokens: True
# ```
#
# The difference is `0.00e+00` here, at most about `1e-6` elsewhere (float32
# rounding: two implementations may add the same numbers in a different order;
# `~` marks a number that depends on the machine).
#
# **Next:** tutorial 2 does the same for GPT-2, the decoder-only model, with a
# closer look at the key/value cache.
