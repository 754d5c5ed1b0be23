# %% [markdown]
# # Tutorial 8: scaling up
#
# The DePT paper also runs on LLaMA-2-7B and -13B (its Appendix B: SST-2, PT
# `l = 100` against DePT `m = 60`, `r = 40`). Going from a tiny T5 on a laptop
# to a 13-billion-parameter Llama on a GPU node takes four things, and this
# tutorial shows each on a tiny model:
#
# 1. a Llama (`minidept/models/llama.py`): what changed from GPT-2's block;
# 2. DePT on it, through the same decoder-only path as GPT-2;
# 3. `--dtype bfloat16`: the frozen backbone in 16 bits, the prompt in 32;
# 4. bigger batches than memory holds: `--grad-accum` and
#    `--activation-checkpointing`, and several processes with `torchrun`,
#    run here with two processes on the CPU.
#
# Each of these leaves the result unchanged (within rounding), and we check it.

# %%
import json
import os
import subprocess
import sys
import time

import torch

from minidept.io.checkpoint import read_safetensors, save_pretrained
from minidept.data.load import encode_examples, load_splits
from minidept.run.evaluate import load_for_inference
from minidept.models.gpt2 import GPT2
from minidept.models.llama import Llama, LlamaConfig, rope_frequencies, rotate
from minidept.io.backbones import DEMO_GPT2, DEMO_LLAMA
from minidept.run.train import TrainConfig, train

from tutorial_setup import (DATA, FAST, OUT, REPO, USE_DATA, hf_config, plt, save, tiny_llama_config,  # shared
                            tokenizer_dir)

torch.manual_seed(0)
torch.set_num_threads(1)   # the models here are tiny: one thread is fastest


# %% [markdown]
# ## The Llama block next to GPT-2's
#
# Both are decoder-only, pre-norm stacks. We build the two demo models
# (`--model demo-gpt2`, `--model demo-llama`: width 64, 2 blocks, 4 heads) and
# list the parameters of one block.

# %%
gpt2, llama = GPT2(DEMO_GPT2), Llama(DEMO_LLAMA)
for name, model, prefix in (("GPT-2", gpt2, "h.0."), ("Llama", llama, "layers.0.")):
    print(f"{name} block 0:")
    for key, tensor in model.state_dict().items():
        if key.startswith(prefix):
            print(f"  {key.removeprefix(prefix):32s} {tuple(tensor.shape)}")
print("position parameters: GPT-2", tuple(gpt2.wpe.weight.shape), "| Llama: none")

# %% [markdown]
# You should see
#
# ```output
# Llama block 0:
#   input_layernorm.weight           (64,)
#   self_attn.q_proj.weight          (64, 64)
#   self_attn.k_proj.weight          (32, 64)
#   self_attn.v_proj.weight          (32, 64)
#   self_attn.o_proj.weight          (64, 64)
#   post_attention_layernorm.weight  (64,)
#   mlp.gate_proj.weight             (128, 64)
#   mlp.up_proj.weight               (128, 64)
#   mlp.down_proj.weight             (64, 128)
# position parameters: GPT-2 (256, 64) | Llama: none
# ```
#
# after GPT-2's block, and four differences:
#
# - **RMSNorm instead of LayerNorm**: `input_layernorm.weight (64,)` and no
#   bias; it divides by the root mean square, with no mean subtracted.
# - **SwiGLU instead of GELU**: three matrices (`gate_proj`, `up_proj`
#   `(128, 64)`, `down_proj (64, 128)`): `down(silu(gate(x)) * up(x))`.
# - **Grouped-query attention**: `q_proj (64, 64)` makes 4 heads of 16, but
#   `k_proj` and `v_proj` are `(32, 64)`: 2 key/value heads, each read by a
#   group of 2 query heads. The key/value cache is half the size.
# - **No position table**: GPT-2 adds `wpe (256, 64)` to the input; Llama
#   rotates queries and keys instead (RoPE), with no parameters at all.
#
# RMSNorm by hand, against the module:

# %%
x = torch.randn(2, 3, 64)
norm = llama.layers[0].input_layernorm
by_hand = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
print("RMSNorm by hand == module:", torch.allclose(by_hand, norm(x), atol=1e-6))

# %% [markdown]
# You should see
#
# ```output
# RMSNorm by hand == module: True
# ```
#
# ## RoPE: positions by rotation
#
# Each head's 16 dimensions form 8 pairs; pair `i` of a query or key at
# position `p` is turned by the angle `p * theta^(-2i/16)` (`theta` = 10,000).
# Turning both q and k leaves their dot product depending only on the
# *distance* between their positions, which is what attention should see:

# %%
config = DEMO_LLAMA
inv_freq = rope_frequencies(config)                              # (8,) the frequencies theta^(-2i/16)


def turned(v, position):
    """v (16,) at `position`: pair (v_i, v_{i+8}) turned by position * inv_freq[i] (`rotate` takes the
    sines signed, (-sin, sin), so that swapping the halves is one roll)."""
    angle = position * inv_freq                                   # (8,)
    return rotate(v, torch.cat([angle.cos(), angle.cos()]), torch.cat([-angle.sin(), angle.sin()]))


q, k = torch.randn(16), torch.randn(16)
for p_q, p_k in ((5, 2), (105, 102), (7, 7)):
    print(f"q at {p_q:3d}, k at {p_k:3d}: q.k = {turned(q, p_q) @ turned(k, p_k):+.4f}")

# %% [markdown]
# You should see the same number for positions (5, 2) and (105, 102), both 3
# apart, and another for distance 0:
#
# ```output
# q at   5, k at   2: q.k = +0.6837
# q at 105, k at 102: q.k = +0.6837
# q at   7, k at   7: q.k = +0.9463
# ```
# Llama 3 stretches the slowest rotations
# to reach longer contexts (`rope_scaling` of type `llama3`: wavelengths
# beyond 8,192 positions slowed 32 times for Llama 3.2, a smooth blend in
# between); minidept also implements `linear` and refuses other types by name.
# The picture at the end draws the wavelengths.

# %%
llama3 = LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_theta=500000.0,
                     rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
plain = LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_theta=500000.0)
wavelengths = {name: 2 * torch.pi / rope_frequencies(c) for name, c in (("plain", plain), ("llama3", llama3))}
print(f"longest wavelength: {wavelengths['plain'].max():,.0f} positions -> {wavelengths['llama3'].max():,.0f}")

# %% [markdown]
# You should see the longest wavelength grow 32 times, while the short ones stay:
#
# ```output
# longest wavelength: 2,084,765 positions -> 66,712,476
# ```
#
# ## The real configs
#
# `LlamaConfig.from_hf_config` maps a Hugging Face `config.json`, field by
# field. Built on PyTorch's "meta" device (shapes, no memory), a model tells
# its size without a byte of weights:

# %%
if hf_config("llama-2-7b"):                            # the data folder's copies of real config.json files
    configs = {n: hf_config(n) for n in ["llama-2-7b", "llama-2-13b", "tinyllama-1.1b", "llama-3.2-1b"]}
else:   # the architecture fields of Llama-2-7B's config.json
    configs = {"llama-2-7b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                              "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}}
for name, fields in configs.items():
    c = LlamaConfig.from_hf_config(fields)
    with torch.device("meta"):
        n = sum(p.numel() for p in Llama(c).parameters())
    print(f"{name:15s} {n / 1e9:6.2f} B parameters, {2 * n / 1e9:5.1f} GB in bfloat16 | d={c.hidden_size}, "
          f"heads {c.num_attention_heads} / key-value {c.num_key_value_heads}, "
          f"rope {(c.rope_scaling or {}).get('rope_type', 'plain')}")

# %% [markdown]
# You should see
#
# ```output
# llama-2-7b        6.74 B parameters,  13.5 GB in bfloat16 | d=4096, heads 32 / key-value 32, rope plain
# ```
#
# and with `MINIDEPT_DATA` three more:
#
# ```output data
# llama-2-13b      13.02 B parameters,  26.0 GB in bfloat16 | d=5120, heads 40 / key-value 40, rope plain
# tinyllama-1.1b    1.10 B parameters,   2.2 GB in bfloat16 | d=2048, heads 32 / key-value 4, rope plain
# llama-3.2-1b      1.24 B parameters,   2.5 GB in bfloat16 | d=2048, heads 32 / key-value 8, rope llama3
# ```
#
# ## DePT on a tiny Llama
#
# A Llama takes the same path as GPT-2 (`DecoderOnlyPrompted`): the prompt is
# run once per batch and every row attends to its keys and values, the loss is
# computed only where there are labels. One difference is in the data: Llama's
# tokenizer puts `<s>` in front of a text, as in pretraining, so a row reads
# `<s> {sentence} Label : {answer} </s>`. With `MINIDEPT_DATA`, SST-2 with the
# real Llama 2 tokenizer and a tiny random Llama of its vocabulary; without it,
# `--model demo-llama` on the demo task. Then the published command's shape:
# `--method dept --m 60 --r 40` would read the same.

# %%
WORK = OUT / "08_scaling"
steps = 30 if FAST else 120
if USE_DATA:
    torch.manual_seed(0)
    folder = WORK / "tiny-llama"
    tiny = Llama(tiny_llama_config(32000, pad_token_id=0))
    torch.nn.init.normal_(tiny.lm_head.weight, std=0.3)   # a head a prompt can move, at width 64
    save_pretrained(tiny, folder)
    task = dict(task="sst2", model=str(folder), tokenizer=str(tokenizer_dir("llama")), data_dir=DATA,
                k_shot=16 if FAST else 200)
else:
    task = dict(task="demo", model="demo-llama")
base = dict(**task, method="dept", l=20, m=4, batch_size=8, max_steps=steps, eval_every=steps, log_every=5,
            max_eval_examples=16, quiet=True, overwrite=True)


def run(name, **options):
    """Train with `base` + options into WORK/name; return (losses, seconds, run folder)."""
    began = time.perf_counter()
    train(TrainConfig(**{**base, **options}, output_dir=str(WORK / name)), log=lambda *_: None)
    records = [json.loads(line) for line in (WORK / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], time.perf_counter() - began, WORK / name


losses, seconds, folder32 = run("float32")
settings = json.loads((folder32 / "config.json").read_text())
print(f"{settings['model_type']}, d={settings['d_model']}, {settings['trainable_parameters']:,} trainable parameters; "
      f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {seconds:.1f} s")
model, tokenizer, _ = load_for_inference(folder32)
row = encode_examples(base["task"], load_splits(base["task"], task.get("data_dir"))["train"][:1], tokenizer, 64,
                      True, model.eos_id)[0][0]
print("a training row starts with", row["input_ids"][:3], "=", repr(tokenizer.decode(row["input_ids"][:3],
                                                                                     skip_special_tokens=False)))

# %% [markdown]
# You should see a Llama with `r` from the budget at `d = 64`, `l = 20`,
# `m = 4` (1,280 trainable parameters with the demo's `s = 64`, 1,216 with
# SST-2's `s = 256`), whose loss falls (on the demo from about 5.4 to 4.8; on
# SST-2 from about 14.5, its head being drawn large, to about 10), and a row
# that starts with the beginning-of-sequence token (`<s>`: id 2 in the demo's
# byte tokenizer, id 1 in Llama 2's, then `sentence:`). On the demo, in 120
# steps (`~`: the seconds depend on the machine):
#
# ```output demo full
# llama, d=64, 1,280 trainable parameters; loss 5.409 -> 4.752 in ~4.9 s
# ```
#
# and in the test suite's 30 steps:
#
# ```output demo fast
# llama, d=64, 1,280 trainable parameters; loss 5.374 -> 4.825 in ~0.8 s
# a training row starts with [2, 118, 104] = '<s>se'
# ```
#
# and on SST-2:
#
# ```output data fast
# llama, d=64, 1,216 trainable parameters; loss 14.375 -> 11.153 in ~4.2 s
# a training row starts with [1, 10541, 29901] = '<s> sentence:'
# ```
#
# ## bfloat16: a 16-bit backbone, a 32-bit prompt
#
# `--dtype bfloat16` loads the frozen backbone in bfloat16 (8 bits of
# mantissa, float32's range): half the memory, and on CPUs with bfloat16
# instructions (AVX-512 BF16, AMX) and on GPUs faster matrix products. What
# trains stays float32: the prompt and the low-rank matrices, their
# gradients, AdamW's two moments; the loss too (the logits are cast up before
# the cross-entropy). The inputs meet the backbone in bfloat16 and the
# gradient comes back through it in bfloat16, then lands in float32.

# %%
losses16, seconds16, folder16 = run("bfloat16", dtype="bfloat16")
state = read_safetensors(folder16 / "state.safetensors")[1]
model16 = load_for_inference(folder16)[0]                      # evaluate / predict take the run's dtype
print("backbone:", model16.backbone.embed_tokens.weight.dtype, "| prompt:", model16.prompt.P.dtype,
      "| saved adapter and AdamW state:", sorted({str(t.dtype) for k, t in state.items() if not k.startswith("rng")}))
print(f"last logged loss: float32 {losses[-1]:.4f}, bfloat16 {losses16[-1]:.4f} "
      f"(relative difference {abs(losses16[-1] - losses[-1]) / losses[-1]:.1e})")

# %% [markdown]
# You should see a `torch.bfloat16` backbone, a `torch.float32` prompt, only
# `torch.float32` in the saved state, and the two losses
#
# ```output
# backbone: torch.bfloat16 | prompt: torch.float32 | saved adapter and AdamW state: ['torch.float32']
# ```
#
# ```output demo fast
# last logged loss: float32 4.8253, bfloat16 4.8250 (relative difference 6.9e-05)
# ```
#
# within a fraction of a percent (the test suite checks 2 % after 300 SST-2
# steps). At this width bfloat16 is no faster (the matrices are too small for
# its instructions to pay); `docs/benchmarks.md` has the measured speed-ups on
# t5-small and on a 100M-parameter Llama.
#
# ## Bigger batches than memory holds
#
# `--batch-size` stays what the paper means: examples per optimizer step.
# `--grad-accum K` runs them as K micro-batches, one backward pass each, and
# steps once. Each micro-batch's mean loss is weighted by its share of the
# batch's labelled tokens (a plain mean of K means would weigh the tokens of
# micro-batches with short answers more), so the step is the whole batch's.
# `--activation-checkpointing` keeps only each block's input during the forward
# pass and recomputes the block in the backward pass: activation memory no
# longer grows with the depth, for about one more forward pass.

# %%
losses_k, _, folder_k = run("grad-accum-2", grad_accum=2)
losses_c, _, folder_c = run("checkpointing", activation_checkpointing=True)
print(f"--grad-accum 2: max |loss difference| {max(abs(a - b) for a, b in zip(losses, losses_k)):.1e}")
print(f"--activation-checkpointing: max |loss difference| {max(abs(a - b) for a, b in zip(losses, losses_c)):.1e}")

# %% [markdown]
# You should see differences of 0 or about `1e-7` (float32 rounding: the
# micro-batches are padded to their own lengths and summed in another order;
# `~` marks numbers that depend on the machine):
#
# ```output
# --grad-accum 2: max |loss difference| ~3.8e-07
# --activation-checkpointing: max |loss difference| ~0.0e+00
# ```
#
# ## Two processes with torchrun
#
# `torchrun --nproc_per_node N -m minidept.train -- OPTIONS` starts N processes; each
# holds the whole frozen backbone, takes its own 1/N of every batch, and after
# the backward pass one all-reduce sums the adapter's gradients (already
# weighted by labelled tokens), so all take the same step: the run equals the
# one-process run. On GPUs the processes talk over NCCL; here, on the CPU, over
# gloo. Rank 0 alone prints and writes the run folder. We start two processes
# on the same task and compare their losses with the one-process run above.
# minidept's options go after `--`: torchrun reads `--l`, `--m` and `--r` as
# abbreviations of its own options (`--log-dir`, `--master-addr`, `--rdzv-...`).

# %%
options = [f"--{key.replace('_', '-')}={value}" for key, value in {**base, "quiet": None, "overwrite": None}.items()
           if value is not None] + ["--quiet", "--overwrite", "--threads", "1", "--output-dir", str(WORK / "torchrun")]
env = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
began = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "-m", "minidept.train", "--", *options], capture_output=True, text=True, env=env)
assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
records = [json.loads(line) for line in (WORK / "torchrun" / "metrics.jsonl").read_text().splitlines()]
losses_2 = [r["loss"] for r in records if "loss" in r]
world = json.loads((WORK / "torchrun" / "config.json").read_text())["world_size"]
print(f"world_size {world}, {time.perf_counter() - began:.0f} s with start-up; "
      f"max |loss difference| with one process {max(abs(a - b) for a, b in zip(losses, losses_2)):.1e}")

# %% [markdown]
# You should see `world_size 2` and a difference of about `1e-7` or 0:
#
# ```output
# world_size 2, ~12 s with start-up; max |loss difference| with one process ~3.8e-07
# ```
#
# Most of
# the seconds are start-up (each process imports torch and builds the model);
# on a GPU node the same command with `--nproc_per_node 8` divides the steps'
# time by about 8.
#
# What crosses the network is small: the adapter's gradient, once a step.
# DePT on LLaMA-2-7B (`m = 60`, `r = 40`) has 419,840 trainable values, 1.7 MB
# in float32; a ring all-reduce sends about twice that per GPU. What does not
# shrink is the backbone: every GPU holds all of it (13.5 GB for 7B, 26 GB for
# 13B in bfloat16), so the model must fit one GPU (docs/usage.md, "Bigger backbones").

# %%
if plt:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, w in wavelengths.items():
        left.plot(w.numpy(), marker=".", label=f"{name} RoPE")
    left.axhline(8192, color="grey", linestyle=":", label="original context (8,192)")
    left.set(yscale="log", xlabel="pair i of a head's dimensions", ylabel="wavelength (positions)",
             title="Llama 3.2's RoPE, plain and with llama3 scaling")
    left.legend(fontsize=8)
    for name, values, style in (("float32, 1 process", losses, "-"), ("bfloat16", losses16, "--"),
                                ("--grad-accum 2", losses_k, ":"), ("torchrun, 2 processes", losses_2, "-.")):
        right.plot([5 * (i + 1) for i in range(len(values))], values, style, label=name)
    right.set(xlabel="step", ylabel="training loss", title="DePT on a tiny Llama: the same run four ways")
    right.legend(fontsize=8)
    save(fig, "scaling_up.png")

# %% [markdown]
# You should see, left, the wavelengths of the 32 pairs growing from about 6
# positions to about 2 million, and the `llama3` curve leaving the short ones
# alone and moving the long ones up 32 times; right, four loss curves lying on
# top of each other.
