"""Efficiency benchmark: what a shorter prompt saves, and minidept against transformers + peft.

    python -m minidept.bench --json docs/benchmarks.json --plot docs/benchmarks.png   # issue 5, ~40 min
    python -m minidept.bench models --json docs/benchmarks-models.json               # issue 2, ~15 min
    python -m minidept.bench --quick          # a reduced set in under 2 minutes (CI smoke test)
    python -m minidept.bench --backbones t5-base --workloads train --methods pt,dept60 \\
        --json runs/bench.json --merge        # some rows only, merged into an earlier run
    python -m minidept.bench --device cuda --dtype bfloat16 ...   # on a GPU (see docs/benchmarks.md)

What is measured (the setting of the DePT paper, section 4.4 and Figures 3-4):
- Backbones built from the real `t5-small`, `t5-base` and `gpt2` configs
  (`--configs-dir`, default `$MINIDEPT_DATA/configs`) with random weights,
  float32 (`--dtype bfloat16`: the backbone in bfloat16, the adapters still
  float32), on the CPU with `torch.set_num_threads(--threads)` or, with
  `--device cuda`, on a GPU (each step synchronised before the clock is read;
  memory from the CUDA allocator's peak instead of the resident size). t5-base is
  t5-small's config with t5-base's sizes when no `t5-base.config.json` is there.
- `train`: one step = forward, backward and an AdamW step on the adapter only,
  batch 16. T5: inputs padded to s = 256 with a 2-token target; GPT-2: the
  text and its 2 target tokens padded to 256, loss on the target only.
- `infer`: one step = greedy generation of 2 tokens for a batch of 32 (T5:
  encoder + 2 decoder steps; GPT-2: the classification forward over the input,
  with the prompt's keys/values cached, then one more step).
- Regimes: `pad256` pads every input to s = 256 (the official code);
  `dynamic` pads each batch to its longest row (minidept's default), on real
  SST-2 training sentences when `MINIDEPT_DATA` holds them; `grouped` is
  `dynamic` with batches of similar length (`train --group-by-length`: the
  batches are drawn from one window of 50 batches sorted by length).
- Methods: `none` (no prompt: the floor), `pt` (l = 100), `dept0`..`dept80`
  (m, with the budget rank r), `adept60`, `ept60`; for inference also `pt60`
  and `adept60-folded` (ADePT's offset folded into the embedding table must cost
  what PT with m = 60 tokens costs). Which rows a plain run measures is
  `DEFAULT_PLAN` below: all of them on t5-small, fewer where a step is slow.
- Implementations: `minidept` (`PromptedModel`), and `peer`: the same workload
  with transformers + peft on the same weights: peft prompt tuning for PT, and
  for DePT the same prompt and low-rank modules fed through `inputs_embeds`
  (peft has no DePT). Skipped when transformers or peft is not installed.

Each figure is the median of the timed steps after warm-up, samples per second,
and the memory the workload adds: every (backbone, workload, regime, method,
implementation) runs in a fresh process, which builds everything, resets its
peak resident size (Linux `/proc/self/clear_refs`), reads `ru_maxrss` as the
baseline, runs the steps and reads `ru_maxrss` again; memory = peak - baseline.
Ratios: method / PT and minidept / peer. The targets of issue 5 are checked
at the end of the table. Timings on a shared machine are noisy: look at the
load average before trusting a run.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import GROUP_BATCHES, batches as epoch_batches
from .io import write_json

BACKBONES = ("t5-small", "t5-base", "gpt2")
# t5-base's hyper-parameters, applied to t5-small's config.json when no t5-base config is given.
T5_BASE_SIZES = {"d_model": 768, "d_ff": 3072, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12}
WORKLOADS = ("train", "infer")
REGIMES = ("pad256", "dynamic", "grouped")
SHORT_REGIMES = ("dynamic", "grouped")   # padded to the batch's longest row
IMPLS = ("minidept", "peer")
SWEEP = ("dept0", "dept20", "dept40", "dept60", "dept80")   # DePT's m, each with the budget rank r
# The default run (36 minutes on 2 cores in the last record): every method where a step is cheap (t5-small),
# the paper's Figure 3 sweep (training time and memory against m) on t5-base, and elsewhere the
# rows the targets of issue 5 need. pt60 and adept60-folded: ADePT folded must cost what PT with
# m = 60 tokens costs. --methods, --peer-methods and --dynamic-methods replace these choices.
DEFAULT_PLAN = {
    ("t5-small", "train"): ("none", "pt", *SWEEP, "adept60", "ept60"),
    ("t5-small", "infer"): ("none", "pt", "pt60", *SWEEP, "adept60", "adept60-folded", "ept60"),
    ("t5-base", "train"): ("none", "pt", *SWEEP),
    ("t5-base", "infer"): ("none", "pt", "pt60", "dept20", "dept60", "adept60-folded"),
    ("gpt2", "train"): ("none", "pt", "dept60"),
    ("gpt2", "infer"): ("none", "pt", "pt60", "dept20", "dept60", "adept60-folded"),
}
PEER_METHODS = {"train": ("none", "pt", "dept60"), "infer": ("none", "pt")}  # the peer's steps are the slow ones
DYNAMIC_METHODS = {"train": ("pt", "dept60"), "infer": ()}  # the realistic regime: PT and the published DePT

L_PT = 100          # vanilla prompt length
MAX_LENGTH = 256    # s
TARGET_TOKENS = 2   # T5 target: the label word and </s>; GPT-2: the label word and <|endoftext|>
NEW_TOKENS = 2      # tokens generated by an inference step
BATCH = {"train": 16, "infer": 32}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}   # --dtype: the backbone's weights
DEVICES = ("cpu", "cuda")
# glibc malloc serves every block over 32 MB (and, at first, over 128 kB) with its own mmap and
# unmaps it on free, so each training step faults in its activations again: ~0.9 M page faults,
# 2-3 s of kernel time in a 5-7 s t5-small step here, for both implementations alike, and most of
# the step-to-step noise. These settings make malloc keep freed memory for the next step (what
# PyTorch's CUDA caching allocator does on a GPU); --return-memory measures without them.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}
LR_PROMPT, LR_LOWRANK = 0.3, 5e-4  # the published SST-2 rates (methods.md section 5)

RESULT_MARK = "BENCH-RESULT "


# --------------------------------------------------------------------------- #
# Methods: the rows of the table
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Method:
    """A prompt method with its lengths, parsed from a name such as `pt`, `dept60` or `adept60-folded`."""
    name: str
    kind: str            # "none", "pt", "dept", "adept" or "ept"
    length: int          # prompt tokens in front of the input: l for PT, m otherwise, 0 for none
    folded: bool = False

    def prompt_config(self, max_length: int, seed: int):
        """The `PromptConfig` of this method; "none" is PT with an empty prompt (same code path, no tokens)."""
        from .prompts import PromptConfig

        if self.kind in ("none", "pt"):
            return PromptConfig("pt", l=self.length, max_length=max_length, seed=seed)
        return PromptConfig(self.kind, l=L_PT, m=self.length, max_length=max_length, seed=seed)


def parse_method(name: str) -> Method:
    match = re.fullmatch(r"(none|pt|dept|adept|ept)(\d+)?(-folded)?", name.strip())
    if not match:
        raise ValueError(f"unknown method {name!r}: use none, pt, ptL (e.g. pt60), deptM, adeptM, "
                         f"adeptM-folded or eptM with M <= {L_PT} (e.g. dept60)")
    kind, number, folded = match.group(1), match.group(2), bool(match.group(3))
    if kind == "none":
        if number or folded:
            raise ValueError(f"method {name!r}: 'none' takes no length")
        return Method(name, "none", 0)
    if folded and kind != "adept":
        raise ValueError(f"method {name!r}: only ADePT's token-wise offset can be folded")
    length = int(number) if number is not None else (L_PT if kind == "pt" else 60)
    if kind != "pt" and length > L_PT:
        raise ValueError(f"method {name!r}: m={length} is longer than l={L_PT}")
    return Method(name, kind, length, folded)


def peer_supports(method: Method) -> bool:
    """peft has prompt tuning; DePT goes through `inputs_embeds`; ADePT and EPT have no peer."""
    return method.kind in ("none", "pt", "dept") and not method.folded


# --------------------------------------------------------------------------- #
# Backbone configs and shared random weights
# --------------------------------------------------------------------------- #

def read_backbone_configs(configs_dir: Path, names) -> dict[str, dict]:
    """`config.json` dicts by backbone name, from `<name>.config.json` files in `configs_dir`."""
    configs = {}
    for name in names:
        path = configs_dir / f"{name}.config.json"
        if path.is_file():
            configs[name] = json.loads(path.read_text())
        elif name == "t5-base" and (configs_dir / "t5-small.config.json").is_file():
            small = json.loads((configs_dir / "t5-small.config.json").read_text())
            configs[name] = {**small, **T5_BASE_SIZES, "_name_or_path": "t5-base"}
        else:
            raise SystemExit(f"no config for backbone {name!r}: expected {path}. Pass --configs-dir DIR "
                             f"(a folder of <name>.config.json files) or set MINIDEPT_DATA "
                             f"(its configs/ folder is used)")
    return configs


def write_random_backbone(hf_config: dict, folder: Path, seed: int) -> Path:
    """Build our model from `hf_config` with seeded random weights and save it in the Hugging Face layout.

    Both implementations then load this one folder: the same weights, bit for bit.
    """
    from .gpt2 import GPT2, GPT2Config
    from .t5 import T5, T5Config

    torch.manual_seed(seed)
    if hf_config["model_type"] == "t5":
        model = T5(T5Config.from_hf_config(hf_config))
    else:
        model = GPT2(GPT2Config.from_hf_config(hf_config))
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- #
# Inputs: SST-2 sentences (or synthetic ones), tokenised, padded two ways
# --------------------------------------------------------------------------- #

def read_sst2_sentences(data_dir: str | None) -> list[tuple[str, int]] | None:
    if not data_dir:
        return None
    path = Path(data_dir) / "glue" / "SST-2" / "train.tsv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row[0], int(row[1])) for row in rows[1:]]


def make_examples(model_type: str, n: int, seed: int, data_dir: str | None, vocab_size: int,
                  max_length: int = MAX_LENGTH):
    """`n` examples (source ids, target ids) drawn with `seed`; sources cut to `max_length` - 2.

    T5: source = "sentence: {text}</s>", target = [label word, </s>].
    GPT-2: source = "{text} Label :", target = [label word, <|endoftext|>].
    Without SST-2 (no `MINIDEPT_DATA`), random ids with SST-2-like lengths.
    """
    rng = random.Random(seed)
    sentences = read_sst2_sentences(data_dir)
    tokenizer_dir = Path(data_dir or "") / ("t5-tokenizer" if model_type == "t5" else "gpt2-tokenizer")
    if sentences is None or not tokenizer_dir.is_dir():
        examples = []
        for _ in range(n):
            length = min(max_length - TARGET_TOKENS, int(rng.lognormvariate(3.0, 0.6)) + 3)
            examples.append(([rng.randrange(10, min(vocab_size, 30000)) for _ in range(length)],
                             [rng.randrange(10, min(vocab_size, 30000)), 1]))
        return examples, "synthetic"
    from . import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    eos = 1 if model_type == "t5" else 50256
    words = [tokenizer.encode(" negative" if model_type == "gpt2" else "negative").ids[0],
             tokenizer.encode(" positive" if model_type == "gpt2" else "positive").ids[0]]
    examples = []
    for sentence, label in rng.sample(sentences, n):
        if model_type == "t5":
            source = tokenizer.encode("sentence: " + sentence).ids      # ends with </s>
        else:
            source = tokenizer.encode(sentence.strip() + " Label :").ids
        examples.append((source[:max_length - TARGET_TOKENS], [words[label], eos]))
    return examples, "sst2"


def collate(examples, model_type: str, pad_to: int | None, pad_id: int, source_only: bool = False,
            left: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded tensors (left-padded with `left`), to `pad_to` or to the longest row.

    T5: input_ids/attention_mask of the source, labels (B, 2). GPT-2: source + target
    as one sequence with labels on the target only; `source_only` keeps the source
    (what generation is given).
    """
    rows, label_rows = [], []
    for source, target in examples:
        if model_type == "t5" or source_only:
            rows.append(source)
            label_rows.append(target)
        else:
            rows.append(source + target)
            label_rows.append([-100] * len(source) + target)
    width = pad_to or max(len(row) for row in rows)
    B = len(rows)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, width, dtype=torch.long)
    gpt2_labels = torch.full((B, width), -100, dtype=torch.long)
    for b, (row, label_row) in enumerate(zip(rows, label_rows)):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[b, span] = torch.tensor(row)
        attention_mask[b, span] = 1
        if model_type == "gpt2" and not source_only:
            gpt2_labels[b, span] = torch.tensor(label_row)
    if model_type == "t5":
        labels = torch.tensor(label_rows)
    else:
        labels = gpt2_labels
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --------------------------------------------------------------------------- #
# One (backbone, workload, regime, method, implementation): built, then timed
# --------------------------------------------------------------------------- #

@dataclass
class Spec:
    """Everything a worker process needs; travels as JSON."""
    bench: str                 # "methods" or "models"
    backbone: str
    folder: str                # the saved random weights
    model_type: str
    workload: str
    regime: str
    method: str
    impl: str
    batch: int
    length: int                # s: the pad-to length and DePT's number of offset rows
    warmup: int
    steps: int
    threads: int
    seed: int
    data_dir: str | None
    keep_freed_memory: bool = True   # glibc malloc keeps freed memory for the next step (KEEP_FREED_MEMORY)
    device: str = "cpu"              # "cuda": steps timed with synchronisation, memory from the CUDA allocator
    dtype: str = "float32"           # the backbone's weights (the adapters train in float32)


def build_minidept(spec: Spec, method: Method, batches):
    """A step function for minidept's `PromptedModel`, and facts for the record."""
    from . import load_model
    from .prompts import PromptedModel

    backbone = load_model(spec.folder, dtype=DTYPES[spec.dtype]).to(spec.device)
    model = PromptedModel(backbone, method.prompt_config(spec.length, spec.seed))
    info = {"r": model.config.r, "trainable_params": sum(p.numel() for p in model.trainable_parameters())}
    if spec.workload == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.param_groups(LR_PROMPT, LR_LOWRANK), eps=1e-6, weight_decay=0.0)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
            loss.backward()
            optimizer.step()
            return loss.item()
    else:
        model.eval()
        if method.folded:
            model.fold()

        def step(batch):
            return list(model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=NEW_TOKENS).shape)
    return step, info, model


class PeerPromptInputs(nn.Module):
    """The peer's DePT (and empty prompt) through `inputs_embeds`: `[P_s ; E(x) + scale * (A @ B)[:L]]`.

    The prompt and the low-rank update are minidept's own modules (the math lives
    once, in prompts.py); here they sit in front of a transformers model.
    """

    def __init__(self, embedding: nn.Embedding, method: Method, max_length: int, seed: int):
        super().__init__()
        from .prompts import LowRankEmbeddingUpdate, SoftPrompt, budget

        d = embedding.weight.shape[1]
        self.embedding = embedding
        self.prompt = SoftPrompt(method.length, d, "vocab", embedding.weight, seed=seed)
        self.update, self.r = None, 0
        if method.kind == "dept":
            self.r = budget("dept", L_PT, method.length, max_length, d)
            self.update = LowRankEmbeddingUpdate(max_length, self.r, d,
                                                 generator=torch.Generator().manual_seed(seed))

    def forward(self, input_ids, attention_mask, labels=None, prompt_labels=False):
        E = self.embedding(input_ids)
        if self.update is not None:
            E = self.update(E).to(E.dtype)   # float32 adapters in front of a bfloat16 backbone
        B, m = input_ids.shape[0], self.prompt.P.shape[0]
        embeds = torch.cat([self.prompt().to(E.dtype).expand(B, -1, -1), E], dim=1)
        mask = torch.cat([attention_mask.new_ones(B, m), attention_mask], dim=1)
        if labels is not None and prompt_labels:  # GPT-2: the prompt positions carry no loss
            labels = torch.cat([labels.new_full((B, m), -100), labels], dim=1)
        return embeds, mask, labels


def build_peer(spec: Spec, method: Method, batches):
    """The same workload with transformers (+ peft prompt tuning for PT) on the same weights."""
    from transformers import GPT2LMHeadModel, T5ForConditionalGeneration

    model_class = T5ForConditionalGeneration if spec.model_type == "t5" else GPT2LMHeadModel
    hf = model_class.from_pretrained(spec.folder, dtype=DTYPES[spec.dtype]).to(spec.device)
    hf.requires_grad_(False)
    is_t5 = spec.model_type == "t5"
    info = {"attn_implementation": getattr(hf.config, "_attn_implementation", None)}
    gen_kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                      pad_token_id=hf.config.pad_token_id if is_t5 else hf.config.eos_token_id)
    if method.kind == "pt":
        from peft import PromptTuningConfig, get_peft_model

        # num_transformer_submodules=1: the prompt on the encoder only (Lester et al.; peft's
        # default for seq2seq also prepends one to the decoder).
        config = PromptTuningConfig(task_type="SEQ_2_SEQ_LM" if is_t5 else "CAUSAL_LM",
                                    num_virtual_tokens=method.length, num_transformer_submodules=1)
        model = get_peft_model(hf, config).to(spec.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        info["trainable_params"] = sum(p.numel() for p in trainable)

        def forward_loss(batch):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss

        def generate(batch):
            return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  **gen_kwargs)
        groups = [{"params": trainable, "lr": LR_PROMPT}]
    else:
        inputs = PeerPromptInputs(hf.get_input_embeddings(), method, spec.length, spec.seed).to(spec.device)
        model = nn.ModuleDict({"hf": hf, "inputs": inputs})
        info["r"] = inputs.r
        info["trainable_params"] = sum(p.numel() for p in inputs.parameters() if p.requires_grad)

        def forward_loss(batch):
            embeds, mask, labels = inputs(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          prompt_labels=not is_t5)
            return hf(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

        def generate(batch):
            if method.kind == "none":
                return hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   **gen_kwargs)
            embeds, mask, _ = inputs(batch["input_ids"], batch["attention_mask"])
            return hf.generate(inputs_embeds=embeds, attention_mask=mask, **gen_kwargs)
        groups = [{"params": list(inputs.prompt.parameters()), "lr": LR_PROMPT}]
        if inputs.update is not None:
            groups.append({"params": list(inputs.update.parameters()), "lr": LR_LOWRANK})
    if spec.workload == "train":
        model.train()
        optimizer = torch.optim.AdamW(groups, eps=1e-6, weight_decay=0.0)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = forward_loss(batch)
            loss.backward()
            optimizer.step()
            return loss.item()
    else:
        model.eval()

        @torch.no_grad()
        def step(batch):
            return list(generate(batch).shape)
    return step, info, model


def method_batches(spec: Spec, impl_left_pad: bool):
    """One batch per step (warm-up included), the same sentences for every method and implementation."""
    n_steps = spec.warmup + spec.steps
    n_examples = spec.batch * max(n_steps, GROUP_BATCHES if spec.regime == "grouped" else 0)
    examples, data = make_examples(spec.model_type, n_examples, spec.seed, spec.data_dir,
                                   50257 if spec.model_type == "gpt2" else 32128, spec.length)
    if spec.regime == "grouped":  # the first batches of a length-grouped epoch (its batch order is shuffled)
        lengths = [len(source) for source, _ in examples]
        examples = [examples[i] for batch in epoch_batches(len(examples), spec.batch, spec.seed, lengths=lengths)
                    for i in batch]
    pad_id = 0 if spec.model_type == "t5" else 50256
    pad_to = spec.length if spec.regime == "pad256" else None
    source_only = spec.workload == "infer"
    batches = [collate(examples[i * spec.batch:(i + 1) * spec.batch], spec.model_type, pad_to, pad_id,
                       source_only=source_only, left=impl_left_pad and source_only)
               for i in range(n_steps)]
    return batches, data


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def padding_check(model, spec: Spec) -> float:
    """Max |difference| of the outputs on real tokens, dynamic padding vs padded to s (eval mode)."""
    examples, _ = make_examples(spec.model_type, min(spec.batch, 8), spec.seed + 1, spec.data_dir,
                                50257 if spec.model_type == "gpt2" else 32128, spec.length)
    pad_id = 0 if spec.model_type == "t5" else 50256
    short = to_device(collate(examples, spec.model_type, None, pad_id), spec.device)
    full = to_device(collate(examples, spec.model_type, spec.length, pad_id), spec.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if spec.model_type == "t5":
            decoder_input_ids = model.backbone.shift_right(short["labels"])
            a = model(short["input_ids"], short["attention_mask"], decoder_input_ids=decoder_input_ids)
            b = model(full["input_ids"], full["attention_mask"], decoder_input_ids=decoder_input_ids)
        else:
            real = short["attention_mask"].bool()
            a = model(short["input_ids"], short["attention_mask"])[real]
            b = model(full["input_ids"], full["attention_mask"])[:, :real.shape[1]][real]
    model.train(was_training)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- #
# Our T5 / GPT-2 against transformers' (the models issue)
# --------------------------------------------------------------------------- #

def build_models_step(spec: Spec):
    """Full forward + backward (every weight trainable), no-grad forward, or greedy generation of 8 tokens.

    batch x length random ids, no padding; T5's decoder gets `length` tokens too. Both
    implementations compute the same loss (forward) and tokens (generate), returned
    for a sanity check.
    """
    g = torch.Generator().manual_seed(spec.seed)
    V = 50257 if spec.model_type == "gpt2" else 32128
    ids = torch.randint(0, V, (spec.batch, spec.length), generator=g).to(spec.device)
    targets = torch.randint(0, V, (spec.batch, spec.length), generator=g).to(spec.device)
    mask = torch.ones_like(ids)
    is_t5 = spec.model_type == "t5"
    if spec.impl == "minidept":
        from . import load_model

        model = load_model(spec.folder, dtype=DTYPES[spec.dtype]).to(spec.device)
        decoder_ids = model.shift_right(targets) if is_t5 else None

        def logits():
            if is_t5:
                return model(ids, mask, decoder_input_ids=decoder_ids)
            return model(ids, mask)

        def generate():
            return model.generate(ids, mask, max_new_tokens=8)
    else:
        from transformers import GPT2LMHeadModel, T5ForConditionalGeneration

        model = (T5ForConditionalGeneration if is_t5 else GPT2LMHeadModel).from_pretrained(
            spec.folder, dtype=DTYPES[spec.dtype]).to(spec.device)
        decoder_ids = model._shift_right(targets) if is_t5 else None

        def logits():
            if is_t5:
                return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
            return model(input_ids=ids, attention_mask=mask).logits

        def generate():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                                 do_sample=False, num_beams=1,
                                 pad_token_id=model.config.pad_token_id if is_t5 else model.config.eos_token_id)
            return out[:, 1:] if is_t5 else out[:, ids.shape[1]:]
    if spec.workload == "train":
        model.train()
        model.requires_grad_(True)

        def step(_):
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(logits().flatten(0, 1).float(), targets.flatten())
            loss.backward()
            return loss.item()
    elif spec.workload == "infer":
        model.eval()

        @torch.no_grad()
        def step(_):
            return F.cross_entropy(logits().flatten(0, 1).float(), targets.flatten()).item()
    else:
        model.eval()

        def step(_):
            return generate().tolist()
    return step, {}, model


# --------------------------------------------------------------------------- #
# The worker: build, reset the peak, time, read the peak
# --------------------------------------------------------------------------- #

def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc `malloc_trim`), so that the peak resident
    size counts only what the steps use; with KEEP_FREED_MEMORY malloc would otherwise keep it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing kept that the steps could reuse unseen
        pass


def reset_peak_rss() -> bool:
    """Reset this process's peak resident size to its current size (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def measure(spec: Spec) -> dict:
    """Build one combination, time `spec.steps` steps after `spec.warmup`, and measure its memory."""
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    record = {"backbone": spec.backbone, "workload": spec.workload, "regime": spec.regime,
              "method": spec.method, "impl": spec.impl, "batch": spec.batch, "threads": spec.threads,
              "keep_freed_memory": spec.keep_freed_memory, "device": spec.device, "dtype": spec.dtype}
    if spec.bench == "models":
        batches = [None] * (spec.warmup + spec.steps)
        step, info, model = build_models_step(spec)
        record.update(input_tokens=spec.length, data="random")
    else:
        method = parse_method(spec.method)
        left = spec.impl == "peer" and spec.model_type == "gpt2"   # transformers generates from left padding
        batches, data = method_batches(spec, left)
        batches = [to_device(batch, spec.device) for batch in batches]
        build = build_minidept if spec.impl == "minidept" else build_peer
        step, info, model = build(spec, method, batches)
        record.update(data=data, prompt_tokens=method.length,
                      input_tokens=statistics.mean(b["input_ids"].shape[1] for b in batches),
                      real_tokens=statistics.mean(b["attention_mask"].sum().item() / spec.batch for b in batches))
    record.update(info)
    # transformers maps the safetensors file and pages weights in on first use; read every
    # weight now so that they count in the baseline of both implementations, not in the workload
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    gc.collect()
    release_free_memory()  # what building left freed (file buffers, copies) must not count as baseline
    record["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]
    record["memory_reset"] = reset_peak_rss()
    baseline = peak_rss_mb()
    cuda = spec.device.startswith("cuda")
    if cuda:  # on a GPU the workload's memory is what the CUDA allocator hands out
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated() / 2**20
    times, outputs = [], []
    for batch in batches:
        start = time.perf_counter()
        outputs.append(step(batch))
        if cuda:  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    timed = times[spec.warmup:]
    memory = (peak - baseline) if record["memory_reset"] else None
    if cuda:
        memory = torch.cuda.max_memory_allocated() / 2**20 - cuda_baseline
        record.update(cuda_baseline_mb=cuda_baseline, memory_from="cuda allocator")
    record.update(step_s=statistics.median(timed), step_times=timed, warmup_times=times[:spec.warmup],
                  step_spread=(max(timed) - min(timed)) / statistics.median(timed),
                  samples_per_s=spec.batch / statistics.median(timed),
                  baseline_rss_mb=baseline, peak_rss_mb=peak, memory_mb=memory,
                  last_output=outputs[-1])
    if spec.bench == "methods" and spec.regime in SHORT_REGIMES and spec.impl == "minidept" \
            and spec.workload == "train" and method.kind != "none":   # after the measurement: it allocates
        record["max_abs_diff_vs_pad256"] = padding_check(model, spec)
    return record


def worker_main(spec_json: str) -> int:
    spec = Spec(**json.loads(spec_json))
    record = measure(spec)
    print(RESULT_MARK + json.dumps(record), flush=True)
    return 0


def run_worker(spec: Spec, timeout: float) -> dict:
    """Run `measure(spec)` in a fresh process and return its record (or one with an "error").

    Started through `sh -c 'cmd & wait'`: the shell forks the worker, so the worker
    does not inherit this process's peak resident size (Linux carries `ru_maxrss`
    over exec, and Python starts children with vfork).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           **(KEEP_FREED_MEMORY if spec.keep_freed_memory else {})}
    command = [sys.executable, "-m", "minidept.bench", "_worker", json.dumps(asdict(spec))]
    base = {"backbone": spec.backbone, "workload": spec.workload, "regime": spec.regime,
            "method": spec.method, "impl": spec.impl, "batch": spec.batch, "threads": spec.threads}
    try:
        done = subprocess.run(["/bin/sh", "-c", '"$0" "$@" & wait $!', *command], capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return {**base, "error": lines[-1] if lines else f"worker exited with code {done.returncode}"}


# --------------------------------------------------------------------------- #
# Ratios, the targets of issue 5, the table
# --------------------------------------------------------------------------- #

def record_key(r: dict) -> tuple:
    return (r["backbone"], r["workload"], r["regime"], r["method"], r["impl"])


def sort_key(r: dict) -> tuple:
    """Table order: backbone, workload, regime, then methods as in the paper (PT, DePT by m, ...)."""
    order = ("none", "pt", "pt60", *SWEEP, "adept60", "adept60-folded", "ept60", "model")
    def index(seq, value):
        return seq.index(value) if value in seq else len(seq)
    return (index(BACKBONES, r["backbone"]), index(WORKLOADS + ("generate",), r["workload"]),
            index(REGIMES, r["regime"]), index(order, r["method"]), r["method"], r["impl"] != "minidept")


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def add_ratios(records: list[dict]) -> list[dict]:
    """method / PT (same implementation), minidept / peer (same method), dynamic / pad256, infer / none."""
    ok = [r for r in records if "error" not in r]
    key = {record_key(r): r for r in ok}
    for r in ok:
        here = (r["backbone"], r["workload"], r["regime"])
        pt = key.get((*here, "pt", r["impl"]))
        if pt is not None:
            r["time_vs_pt"] = _ratio(r["step_s"], pt["step_s"])
            r["memory_vs_pt"] = _ratio(r["memory_mb"], pt["memory_mb"])
        none = key.get((*here, "none", r["impl"]))
        if none is not None:
            r["speed_vs_none"] = _ratio(r["samples_per_s"], none["samples_per_s"])
        if r["impl"] == "minidept":
            peer = key.get((*here, r["method"], "peer")) or key.get((*here, r["method"], "transformers"))
            if peer is not None:
                r["time_vs_peer"] = _ratio(r["step_s"], peer["step_s"])
                r["memory_vs_peer"] = _ratio(r["memory_mb"], peer["memory_mb"])
        if r["regime"] in SHORT_REGIMES:
            padded = key.get((r["backbone"], r["workload"], "pad256", r["method"], r["impl"]))
            if padded is not None:
                r["speed_vs_pad256"] = _ratio(r["samples_per_s"], padded["samples_per_s"])
    return records


def check_targets(records: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The targets of issue 5 that these records can answer: (target, measured, met)."""
    key = {record_key(r): r for r in records if "error" not in r}
    rows = []

    def get(backbone, workload, method, field, impl="minidept", regime="pad256"):
        record = key.get((backbone, workload, regime, method, impl))
        return None if record is None else record.get(field)

    def add(name, value, met, text):
        if value is not None:
            rows.append((name, text, bool(met)))

    for b in BACKBONES:
        t, mem = get(b, "train", "pt", "time_vs_peer"), get(b, "train", "pt", "memory_vs_peer")
        add(f"{b}: PT train time minidept/peer <= 0.90", t, t is not None and t <= 0.90, f"{t:.2f}" if t else "")
        add(f"{b}: PT train memory minidept/peer <= 1.00", mem, mem is not None and mem <= 1.0,
            f"{mem:.2f}" if mem else "")
    t, mem = get("t5-base", "train", "dept60", "time_vs_pt"), get("t5-base", "train", "dept60", "memory_vs_pt")
    add("t5-base: DePT m=60 / PT train time <= 0.80", t, t is not None and t <= 0.80, f"{t:.2f}" if t else "")
    add("t5-base: DePT m=60 / PT train memory <= 0.85", mem, mem is not None and mem <= 0.85,
        f"{mem:.2f}" if mem else "")
    t, mem = get("gpt2", "train", "pt", "time_vs_peer"), get("gpt2", "train", "pt", "memory_vs_peer")
    add("gpt2: PT train speed-up over peer >= 1.5x", t, t is not None and 1 / t >= 1.5,
        f"{1 / t:.2f}x" if t else "")
    add("gpt2: PT train memory minidept/peer <= 0.50", mem, mem is not None and mem <= 0.5,
        f"{mem:.2f}" if mem else "")
    for regime in SHORT_REGIMES:
        for b in BACKBONES:
            s = get(b, "train", "dept60", "speed_vs_pad256", regime=regime)
            diff = get(b, "train", "dept60", "max_abs_diff_vs_pad256", regime=regime)
            add(f"{b}: DePT m=60 train samples/s, {regime} / pad256 >= 5", s, s is not None and s >= 5,
                f"{s:.2f}x" + (f" (max |diff| on real tokens {diff:.1e})" if diff is not None else "") if s else "")
    s = get("gpt2", "infer", "pt", "speed_vs_none")
    add("gpt2: PT inference (cached prompt) / no prompt >= 0.90", s, s is not None and s >= 0.9,
        f"{s:.2f}" if s else "")
    for b in BACKBONES:
        folded, pt_m = get(b, "infer", "adept60-folded", "step_s"), get(b, "infer", "pt60", "step_s")
        t = _ratio(folded, pt_m)
        add(f"{b}: ADePT m=60 folded / PT l=60 inference time <= 1.05", t, t is not None and t <= 1.05,
            f"{t:.2f}" if t else "")
    return rows


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(records: list[dict]) -> str:
    """One line per record: a Markdown table, readable on stdout and pasteable into docs."""
    head = ["backbone", "workload", "regime", "method", "impl", "tokens", "s/step", "spread", "samples/s", "memory MB",
            "time/PT", "mem/PT", "time/peer", "mem/peer", "dyn/pad256"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if "error" in r:
            cells = [r["backbone"], r["workload"], r["regime"], r["method"], r["impl"], "error: " + r["error"]]
            cells += [""] * (len(head) - len(cells))
        else:
            tokens = r.get("input_tokens", 0) + r.get("prompt_tokens", 0)
            cells = [r["backbone"], r["workload"], r["regime"], r["method"], r["impl"], f"{tokens:.0f}",
                     _fmt(r["step_s"], 3), f"{r['step_spread']:.0%}" if "step_spread" in r else "-",
                     _fmt(r["samples_per_s"], 1), _fmt(r["memory_mb"], 0),
                     _fmt(r.get("time_vs_pt")), _fmt(r.get("memory_vs_pt")), _fmt(r.get("time_vs_peer")),
                     _fmt(r.get("memory_vs_peer")), _fmt(r.get("speed_vs_pad256"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_targets(rows) -> str:
    lines = ["| target (issue 5) | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {text} | {'yes' if met else 'NO'} |" for name, text, met in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# The plot: the paper's Figures 3 and 4 (time and memory against m, inference speed against m)
# --------------------------------------------------------------------------- #

def plot(records: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "error" not in r and r["regime"] == "pad256"]
    backbones = [b for b in BACKBONES if any(r["backbone"] == b for r in ok)] or \
        sorted({r["backbone"] for r in ok})
    panels = [("train", "step_s", "train step (s)"), ("train", "memory_mb", "train memory (MB)"),
              ("infer", "samples_per_s", "inference (samples/s)")]
    fig, axes = plt.subplots(len(backbones), 3, figsize=(13, 3.4 * len(backbones)), squeeze=False)
    styles = {"minidept": dict(color="C0", marker="o"), "peer": dict(color="C1", marker="s", linestyle="--")}
    for row, backbone in zip(axes, backbones):
        for ax, (workload, field, label) in zip(row, panels):
            for impl, style in styles.items():
                mine = {r["method"]: r for r in ok if r["backbone"] == backbone and r["workload"] == workload
                        and r["impl"] == impl and r.get(field) is not None}
                dept = sorted((parse_method(name).length, r[field]) for name, r in mine.items()
                              if parse_method(name).kind == "dept")
                if dept:
                    ax.plot(*zip(*dept), label=f"DePT ({impl})", **style)
                if "pt" in mine:
                    ax.axhline(mine["pt"][field], color=style["color"], linestyle=":",
                               label=f"PT l=100 ({impl})")
                if "none" in mine:
                    ax.axhline(mine["none"][field], color=style["color"], linestyle="-.", alpha=0.5,
                               label=f"no prompt ({impl})")
                for name, marker in (("adept60", "^"), ("adept60-folded", "v"), ("ept60", "D"), ("pt60", "x")):
                    if name in mine:
                        ax.plot([60], [mine[name][field]], marker=marker, color=style["color"], linestyle="",
                                markerfacecolor="none", label=f"{name} ({impl})")
            ax.set_title(f"{backbone}: {label}")
            ax.set_xlim(-5, 85)
            ax.set_xlabel("short prompt length m (r from the budget)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- #
# The plan and the command line
# --------------------------------------------------------------------------- #

def machine_info(threads: int, device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": version("transformers"), "peft": version("peft"),
            "load_average": [round(x, 2) for x in load] if load else None,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}


def peer_available() -> bool:
    return find_spec("transformers") is not None and find_spec("peft") is not None


def plan_methods(args) -> list[Spec]:
    """One Spec per (backbone, workload, regime, method, implementation) to measure."""
    specs = []
    for backbone in args.backbones:
        for workload in args.workloads:
            for regime in args.regimes:
                if regime in SHORT_REGIMES:
                    names = args.dynamic_methods[workload]
                else:
                    names = args.methods or DEFAULT_PLAN[(backbone, workload)]
                for method in map(parse_method, names):
                    if workload == "train" and method.folded:  # folding is for inference
                        continue
                    for impl in args.impls:
                        if impl == "peer" and not (peer_supports(method) and
                                                   method.name in args.peer_methods[workload]):
                            continue
                        specs.append(Spec("methods", backbone, "", "", workload, regime, method.name, impl,
                                          args.batch or BATCH[workload], args.length, args.warmup, args.steps,
                                          args.threads, args.seed, args.data_dir, not args.return_memory,
                                          args.device, args.dtype))
    return specs


def plan_models(args) -> list[Spec]:
    return [Spec("models", backbone, "", "", workload, "random", "model", impl, args.batch or 16, args.length,
                 args.warmup, args.steps, args.threads, args.seed, None, not args.return_memory,
                 args.device, args.dtype)
            for backbone in args.backbones for workload in args.workloads for impl in args.impls]


def _csv(allowed, what):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}: "
                                             f"choose from {', '.join(allowed)}")
        return values
    return parse


def _methods(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        for v in values:
            parse_method(v)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return values


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m minidept.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="bench: 'methods' (default) times the prompt methods; 'models' times our T5 / GPT-2 "
               "against transformers (full forward+backward, forward, generate).")
    parser.add_argument("bench", nargs="?", default="methods", choices=("methods", "models"))
    parser.add_argument("--backbones", type=_csv(BACKBONES, "backbone"), default=None,
                        help=f"comma-separated, from {','.join(BACKBONES)} (default: all; models: t5-small,gpt2)")
    parser.add_argument("--workloads", type=_csv(WORKLOADS + ("generate",), "workload"), default=None,
                        help="train,infer (models also: generate)")
    parser.add_argument("--regimes", type=_csv(REGIMES, "regime"), default=list(REGIMES),
                        help="pad256 (all inputs padded to s), dynamic (each batch to its longest row), "
                             "grouped (dynamic, batches of similar length)")
    parser.add_argument("--methods", type=_methods, default=None,
                        help="e.g. none,pt,dept60,adept60,ept60,pt60,adept60-folded (default: DEFAULT_PLAN in "
                             "bench.py: the whole sweep on t5-small, target rows elsewhere)")
    parser.add_argument("--impls", type=_csv(IMPLS + ("transformers",), "implementation"), default=None,
                        help="minidept and/or peer (transformers + peft)")
    parser.add_argument("--peer-methods", type=_methods, default=None,
                        help="methods measured on the peer too (default: none,pt,dept60 for train, none,pt for "
                             "infer; with --methods: those; it supports none, ptL and deptM)")
    parser.add_argument("--dynamic-methods", type=_methods, default=None,
                        help="methods measured in the dynamic and grouped regimes (default: pt,dept60 for train; with "
                             "--methods: those)")
    parser.add_argument("--configs-dir", type=Path, default=None,
                        help="folder of <backbone>.config.json (default: $MINIDEPT_DATA/configs)")
    parser.add_argument("--data-dir", default=os.environ.get("MINIDEPT_DATA"),
                        help="folder with glue/SST-2 and the tokenizers (default: $MINIDEPT_DATA); "
                             "without it inputs are synthetic")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all cores; --quick: 1, which a busy CI machine "
                             "cannot stall the way it stalls OpenMP threads that wait for each other)")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 for train, 32 for infer")
    parser.add_argument("--length", type=int, default=MAX_LENGTH, help="s: inputs padded to this (default 256)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="reduced set for CI: t5-small and gpt2, pt and dept60 (peer: pt), batch 4, length 64, "
                             "1 warm-up + 1 timed step, 1 thread")
    parser.add_argument("--json", dest="json_path", default=None, help="write one record per combination here")
    parser.add_argument("--merge", action="store_true",
                        help="keep the records already in --json for combinations this run does not measure "
                             "(re-measure some rows, or build the full table in parts)")
    parser.add_argument("--plot", dest="plot_path", default=None, help="draw the Figure 3/4-style curves (PNG)")
    parser.add_argument("--worker-timeout", type=float, default=1200.0, help="seconds per measurement")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cuda: time on the GPU (synchronised) and take memory from the CUDA allocator")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="the backbones' weights (default float32; the adapters train in float32)")
    parser.add_argument("--return-memory", action="store_true",
                        help="leave glibc malloc at its defaults, which unmap large freed blocks so that every "
                             "step faults its memory in again (default: KEEP_FREED_MEMORY in bench.py)")
    args = parser.parse_args(argv)

    if args.threads is None:
        args.threads = 1 if args.quick else os.cpu_count()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                     "install a CUDA build of torch on a GPU machine, or use --device cpu")
    if args.merge and not args.json_path:
        parser.error("--merge needs --json PATH (the records to merge with)")
    if args.threads < 1 or args.warmup < 0 or args.steps < 1 or args.length < 8 or \
            (args.batch is not None and args.batch < 1):
        parser.error("need --threads >= 1, --warmup >= 0, --steps >= 1, --length >= 8, --batch >= 1")
    args.methods_given = args.methods is not None
    if args.backbones is None:
        args.backbones = ["t5-small", "gpt2"] if args.quick or args.bench == "models" else list(BACKBONES)
    if args.bench == "models":
        args.workloads = args.workloads or ["train", "infer", "generate"]
        args.impls = ["minidept" if i == "minidept" else "transformers" for i in (args.impls or IMPLS)]
    else:
        if args.workloads and "generate" in args.workloads:
            parser.error("workload 'generate' belongs to 'models'; the methods' infer step generates")
        args.workloads = args.workloads or list(WORKLOADS)
        args.impls = ["peer" if i == "transformers" else i for i in (args.impls or IMPLS)]
        peer, dynamic = dict(PEER_METHODS), dict(DYNAMIC_METHODS)
        if args.quick and not args.methods_given:
            # CI: PT and DePT, the peer for PT, the realistic regime for DePT training.
            args.methods = ["pt", "dept60"]
            peer, dynamic = {"train": ["pt"], "infer": ["pt"]}, {"train": ["dept60"], "infer": []}
        elif args.methods_given:  # the given methods everywhere unless said otherwise
            peer = dynamic = {workload: args.methods for workload in WORKLOADS}
        # per workload: the methods measured on the peer too, and in the dynamic regime
        args.peer_methods = {w: args.peer_methods for w in WORKLOADS} if args.peer_methods else peer
        args.dynamic_methods = {w: args.dynamic_methods for w in WORKLOADS} if args.dynamic_methods else dynamic
    if args.quick:  # small batches, one warm-up and one timed step
        args.batch, args.length, args.warmup, args.steps = args.batch or 4, min(args.length, 64), 1, 1
    if args.configs_dir is None:
        if not args.data_dir:
            parser.error("no backbone configs: pass --configs-dir DIR (holding t5-small.config.json, "
                         "gpt2.config.json) or set MINIDEPT_DATA")
        args.configs_dir = Path(args.data_dir) / "configs"
    if any(i in ("peer", "transformers") for i in args.impls) and not peer_available():
        print("transformers / peft not installed: measuring minidept only", file=sys.stderr)
        args.impls = ["minidept"]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1])
    args = parse_args(argv)
    configs = read_backbone_configs(args.configs_dir, args.backbones)
    specs = plan_models(args) if args.bench == "models" else plan_methods(args)
    info = machine_info(args.threads, args.device)
    print(f"# minidept.bench {args.bench}: {len(specs)} measurements, {args.dtype}, on {info['gpu'] or info['cpu']} "
          f"({info['cores']} cores, {args.threads} threads), torch {info['torch']}, transformers "
          f"{info['transformers']}, peft {info['peft']}, load average {info['load_average']}", flush=True)
    kept = []
    if args.merge and args.json_path and Path(args.json_path).is_file():
        planned = {(s.backbone, s.workload, s.regime, s.method, s.impl) for s in specs}
        kept = [r for r in json.loads(Path(args.json_path).read_text()) if record_key(r) not in planned]
    records = []
    with tempfile.TemporaryDirectory(prefix="minidept-bench-") as tmp:
        folders = {}
        for name in args.backbones:
            folders[name] = write_random_backbone(configs[name], Path(tmp) / name, args.seed)
        gc.collect()
        for i, spec in enumerate(specs, 1):
            spec.folder, spec.model_type = str(folders[spec.backbone]), configs[spec.backbone]["model_type"]
            started = time.perf_counter()
            record = run_worker(spec, args.worker_timeout)
            record.update(machine=info)
            records.append(record)
            summary = record.get("error") or (f"{record['step_s']:.3f} s/step, {record['samples_per_s']:.1f} "
                                              f"samples/s, {_fmt(record['memory_mb'], 0)} MB, load "
                                              f"{record['load_average'][0]:.2f}")
            print(f"[{i}/{len(specs)}] {spec.backbone} {spec.workload} {spec.regime} {spec.method} {spec.impl}: "
                  f"{summary} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            if args.json_path:  # written as we go: a long run that stops keeps what it measured
                write_json(Path(args.json_path), sorted(kept + records, key=sort_key))
    records = sorted(kept + records, key=sort_key)
    add_ratios(records)
    print(format_table(records))
    if args.bench == "methods":
        targets = check_targets(records)
        if targets:
            print()
            print(format_targets(targets))
    if args.json_path:
        write_json(Path(args.json_path), records)
    if args.plot_path and args.bench == "methods":
        Path(args.plot_path).parent.mkdir(parents=True, exist_ok=True)
        plot(records, args.plot_path)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
