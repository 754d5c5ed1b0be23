"""Pretrain a pocket model from scratch: `python -m minidept.pretrain --data-dir DIR --output-dir DIR` (a T5;
`--family gpt2`: a GPT-2).

Prompt tuning steers what a frozen model knows; on random weights it reaches chance
(docs/pocket.md). This tool makes a small T5 that knows something, on a CPU, from
the GLUE/SuperGLUE files alone, with T5's own recipe in miniature (Raffel et al. 2020,
sections 3.1.4, 3.5.2 and 3.7: span corruption plus supervised tasks in one mixture):

1. the text: the training split of every pretraining task (`load_splits(task)["train"]`,
   never its validation or test split), each field once;
2. a vocabulary trained on that text (`tokenizers`' byte-pair encoding, with T5's
   specials: <pad> 0, </s> 1, <unk> 2, and the sentinels <extra_id_0..N-1> at the end);
3. the mixture: span corruption of the text (15% of the tokens dropped in spans of mean
   length 3, each span replaced by a sentinel; the target lists the spans) and the held-in
   tasks cast with minidept's own casting (`format_example`: source "sentence: ...",
   target "0") behind a task prefix ("sst2 sentence: ..." -> "0"), each task in proportion
   to its size up to a cap (T5's examples-proportional mixing). The held-out tasks are
   never seen, not even their text: a prompt has to learn them. Without the prefix the
   model has no task to follow, so a prompt in its place can unlock a held-in skill;
4. T5 (original layout: relu feed-forward, head tied to the embedding) initialised as
   Mesh TensorFlow does, trained with Adafactor (T5's optimizer: its steps are relative
   to each weight's scale, so the embedding rows, N(0, 1), move as fast as the rest)
   through the core loop (`minidept/loop.py`) with bfloat16 matrix products on the CPU;
5. the weights saved in bfloat16, in the Hugging Face layout (config.json,
   model.safetensors, tokenizer.json), and `recipe.json`: every setting, the data, the
   mixture, the versions, the command and the time it took.

`--family gpt2` makes a decoder-only model from the same recipe: the same text, the same
vocabulary procedure in GPT-2's layout (<|endoftext|> is its end of text and eos; no sentinels),
and the decoder-only form of each objective: next-token prediction on the text in place of
span corruption, and the held-in tasks cast as minidept casts them for a decoder-only model
(`encode_examples`: "sst2 sentence: ... Label : 0<|endoftext|>", the loss on the target only),
in the same mixture; GPT-2's initialisation (N(0, 0.02), the residual projections scaled down),
the same optimizer and loop.

Given the seed, the thread count and the machine, the run is deterministic. The models
shipped in minidept (`--model pocket-t5`, `--model pocket-gpt2`, in `minidept/pocket/`) were
made by this command with its defaults (and `--family gpt2`); docs/pocket.md has their numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..io.checkpoint import atomic_write, save_pretrained, write_json
from ..data.load import IGNORE_INDEX, DataError, batches, collate, decode_predictions, encode_examples, load_splits
from ..data.tasks import format_example, get_task, score
from ..loop import Hooks, train_loop
from ..models.gpt2 import GPT2, GPT2Config
from ..models.t5 import T5, T5Config
from ..run.cli import UsageError, command, option, parse

RECIPE_FILE, LOG_FILE, TOKENIZER_FILE = "recipe.json", "metrics.jsonl", "tokenizer.json"
PAD_ID, EOS_ID = 0, 1                        # T5's special ids; GPT-2's <pad> and <|endoftext|> (its eos)
MONITOR_TASK = "sst2"                       # scored during the run (never trained on its validation split)


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run: the command line's options and the Python API."""
    data_dir: str | None = option(None, "folder with the GLUE/SuperGLUE files (default: $MINIDEPT_DATA)")
    output_dir: str | None = option(None, "where the model folder is written (required)")
    family: str = option("t5", "t5 (encoder-decoder, span corruption) or gpt2 (decoder-only, next-token prediction)")
    held_in: str = option("sst2,cola,stsb,cb,wic,wsc,copa", "tasks trained with their prefix, comma-separated")
    held_out: str = option("mrpc,rte", "tasks kept out of everything (recorded, and checked not to be used)")
    text_only: str = option("multirc", "tasks whose training text is used for the unlabelled objective only "
                                       "(MultiRC: its passages are longer than --max-length)")
    vocab_size: int = option(4096, "tokens in the vocabulary, the specials and T5's sentinels included")
    sentinels: int = option(100, "T5: sentinel tokens <extra_id_N> for span corruption")
    d_model: int = option(256, "width of the model (GPT-2's n_embd)")
    num_heads: int = option(4, "attention heads (of d_model / num_heads each)")
    d_ff: int = option(768, "width of the feed-forward layer (GPT-2's n_inner)")
    num_layers: int | None = option(None, "blocks: T5's encoder (default 3) or GPT-2's stack (default 2)")
    num_decoder_layers: int = option(2, "T5: decoder blocks")
    n_positions: int = option(256, "GPT-2: the context in tokens (rows of its position embedding)")
    steps: int | None = option(None, "optimizer steps (default: 2000 for T5, 1500 for GPT-2, whose unlabelled rows "
                                     "are twice as long)")
    batch_size: int = option(64, "rows per step")
    optimizer: str = option("adafactor", "adafactor (T5's) or adamw")
    lr: float | None = option(None, "Adafactor's relative step size (default T5's constant 0.01) or AdamW's "
                                    "learning rate (default 1e-3)")
    warmup_steps: int = option(100, "linear warmup, then linear decay to 0 (minidept/loop.py)")
    span_share: float = option(0.3, "share of the rows that are unlabelled text (T5: span corruption; GPT-2: "
                                    "next-token prediction); the rest are the held-in tasks")
    mixing_cap: int = option(30000, "a task counts at most this many examples in the mixing rates (T5's K)")
    noise_density: float = option(0.15, "T5: share of the tokens dropped by span corruption")
    mean_span_length: float = option(3.0, "T5: mean length of a dropped span")
    chunk_length: int | None = option(None, "tokens of text per unlabelled row: T5's before corruption (default "
                                            "64), GPT-2's (default 128: a prompt moves the text to later "
                                            "positions, which must be trained too)")
    max_length: int = option(128, "longest task input in tokens (longer ones are cut)")
    limit: int | None = option(None, "use at most N training examples of each task (quick runs and tests)")
    eval_every: int = option(250, "score the monitor task every N steps (0: never)")
    eval_examples: int = option(500, "validation examples of the monitor task scored")
    log_every: int = option(10, "write a training record to metrics.jsonl every N steps")
    seed: int = option(0, "seeds the initialisation, the span corruption and the mixture")
    threads: int = option(1, "CPU threads for torch")
    quiet: bool = option(False, "no progress bar")


# The settings whose default depends on the family (T5's, GPT-2's), and the settings of one family only
FAMILY_DEFAULTS = {"num_layers": {"t5": 3, "gpt2": 2}, "steps": {"t5": 2000, "gpt2": 1500},
                   "chunk_length": {"t5": 64, "gpt2": 128}}
ONLY = {"t5": ("sentinels", "num_decoder_layers", "noise_density", "mean_span_length"), "gpt2": ("n_positions",)}


def with_family_defaults(config: PretrainConfig) -> PretrainConfig:
    """`config` with each setting left at None set to its default: its family's, the optimizer's for --lr."""
    defaults = {name: values[config.family] for name, values in FAMILY_DEFAULTS.items()}
    defaults["lr"] = 0.01 if config.optimizer == "adafactor" else 1e-3
    return dataclasses.replace(config, **{name: value for name, value in defaults.items()
                                          if getattr(config, name) is None})


def task_names(text: str) -> list[str]:
    return [get_task(name).name for name in text.split(",") if name.strip()]


def check(config: PretrainConfig) -> PretrainConfig:
    """Values argparse cannot check; each message names the value and the fix."""
    if not config.output_dir:
        raise UsageError("--output-dir is required: the folder the model is written to")
    if config.family not in ("t5", "gpt2"):
        raise UsageError(f"--family {config.family}: choose t5 or gpt2")
    if config.optimizer not in ("adafactor", "adamw"):
        raise UsageError(f"--optimizer {config.optimizer}: choose adafactor or adamw")
    if config.lr is not None and not config.lr > 0:
        raise UsageError(f"--lr {config.lr}: must be above 0")
    config = with_family_defaults(config)
    try:
        held_in, held_out, text_only = (task_names(getattr(config, k)) for k in ("held_in", "held_out", "text_only"))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not held_in:
        raise UsageError("--held-in names no task: give at least one, e.g. --held-in sst2")
    if overlap := set(held_out) & set(held_in + text_only):
        raise UsageError(f"task(s) {sorted(overlap)} are both held out and used: take them out of --held-out or "
                         "of --held-in / --text-only")
    if made := [name for name in held_in + text_only if get_task(name).make_splits is not None]:
        raise UsageError(f"task(s) {made} are made by code, not read from --data-dir: pretrain on real tasks")
    for name in ("vocab_size", "sentinels", "d_model", "num_heads", "d_ff", "num_layers", "num_decoder_layers",
                 "n_positions", "steps", "batch_size", "chunk_length", "max_length", "eval_examples", "log_every",
                 "threads"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(config, name)}: must be at least 1")
    if config.d_model % config.num_heads:
        raise UsageError(f"--d-model {config.d_model} is not a multiple of --num-heads {config.num_heads}")
    if not (0 <= config.span_share < 1 and 0 < config.noise_density < 1 and config.mean_span_length >= 1):
        raise UsageError(f"--span-share {config.span_share} must be in [0, 1), --noise-density "
                         f"{config.noise_density} in (0, 1), --mean-span-length {config.mean_span_length} at least 1")
    if config.vocab_size < sentinels(config) + 3 + 100:
        raise UsageError(f"--vocab-size {config.vocab_size} leaves fewer than 100 tokens besides the "
                         f"{sentinels(config)} sentinels and 3 specials: raise it")
    if config.family == "gpt2" and max(config.max_length, config.chunk_length) > config.n_positions:
        raise UsageError(f"--max-length {config.max_length} or --chunk-length {config.chunk_length} is longer than "
                         f"GPT-2's context --n-positions {config.n_positions}: lower it or raise --n-positions")
    data_dir = config.data_dir or os.environ.get("MINIDEPT_DATA")
    if not data_dir or not Path(data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder; pretraining reads the GLUE/SuperGLUE files from a "
                         "local folder (--data-dir DIR or MINIDEPT_DATA=DIR)")
    return dataclasses.replace(config, data_dir=str(Path(data_dir).expanduser()), held_in=",".join(held_in),
                               held_out=",".join(held_out), text_only=",".join(text_only))


# --------------------------------------------------------------------------- #
# The text, the vocabulary, span corruption
# --------------------------------------------------------------------------- #

def sentinels(config: PretrainConfig) -> int:
    """T5's sentinel tokens; GPT-2 has none (its unlabelled objective is next-token prediction)."""
    return config.sentinels if config.family == "t5" else 0


def read_tasks(config: PretrainConfig) -> dict[str, list[dict]]:
    """The training split of each held-in and text-only task (its validation and test splits are never read)."""
    examples = {}
    for name in task_names(config.held_in) + task_names(config.text_only):
        try:
            examples[name] = load_splits(name, config.data_dir)["train"][:config.limit]
        except DataError as error:
            raise UsageError(f"{error} (pretraining uses the training split of every task in --held-in and "
                             "--text-only; leave the ones without one out)") from None
    return examples


def plain_text(examples: dict[str, list[dict]]) -> list[str]:
    """Each text field of the training examples once, in order (MultiRC's HTML markup removed)."""
    seen, texts = set(), []
    for name, rows in examples.items():
        for row in rows:
            for field in get_task(name).fields:
                text = row.get(field)
                if isinstance(text, str):
                    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()
                    if text and text not in seen:
                        seen.add(text)
                        texts.append(text)
    return texts


def prefixed(task: str, example: dict) -> tuple[str, str]:
    """minidept's casting with the task's name in front: ("sst2 sentence: ...", "0")."""
    source, target = format_example(task, example)
    return f"{task} {source}", target


def train_tokenizer(texts: list[str], vocab_size: int, sentinels: int, family: str = "t5"):
    """A byte-pair vocabulary (`tokenizers`' BPE on SentencePiece-style words: "▁" marks a word start) in T5's
    layout: <pad> 0, </s> 1, <unk> 2, the pieces, then the sentinels with <extra_id_0> last; </s> appended to
    every encoding. Digits are single tokens, so every label id is one token after the word-start piece.

    BPE rather than T5's Unigram because its training is deterministic: `tokenizers`' Unigram trainer orders
    pieces of equal score differently from one run to the next.

    family "gpt2": the same training, in GPT-2's layout: <pad> 0 (a placeholder: minidept pads GPT-2 with its
    end-of-text token and masks the pads), <|endoftext|> 1 (the end of a text, GPT-2's eos), <unk> 2, the
    pieces, no sentinels (call it with sentinels=0); nothing appended to an encoding, and no "▁" put in front
    of a text. As with GPT-2's own byte-level BPE, a source, the cue " Label : " and a target tokenised apart
    then give the ids of the joined text (minidept/data/load.py, `encode_examples`), and a label id is one
    token.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    gpt2 = family == "gpt2"
    start = {"prepend_scheme": "never"} if gpt2 else {}
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(**start),
                                                      pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.decoder = decoders.Metaspace(**start)
    specials = ["<pad>", "<|endoftext|>" if gpt2 else "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - sentinels, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    if tokenizer.get_vocab_size() != vocab_size - sentinels:
        raise UsageError(f"--vocab-size {vocab_size}: the text holds only {tokenizer.get_vocab_size()} distinct "
                         f"pieces besides the {sentinels} sentinels; lower --vocab-size or use more text")
    if gpt2:
        return tokenizer
    tokenizer.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(sentinels))])   # <extra_id_0> last
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    return tokenizer


def span_corruption(tokens: np.ndarray, rng: np.random.Generator, noise_density: float, mean_span_length: float,
                    vocab_size: int) -> tuple[list[int], list[int]]:
    """T5's unsupervised objective on one row of text (Raffel et al. 2020, section 3.1.4):
    "Thank you for inviting me" -> ("Thank you <X> me </s>", "<X> for inviting </s>").

    round(n * noise_density) tokens are dropped, in round(noise / mean_span_length) spans; the
    lengths of the spans and of the kept runs between them are random splits (T5's
    random_spans_noise_mask). Span i becomes the sentinel <extra_id_i> (id vocab_size - 1 - i)
    in the input, and the target lists each sentinel followed by the tokens it replaced.
    """
    n = len(tokens)
    noise = min(max(1, round(n * noise_density)), n - 1)
    spans = max(1, min(round(noise / mean_span_length), noise, n - noise))

    def split(total: int) -> np.ndarray:   # `total` items cut into `spans` non-empty runs at random places
        cuts = np.sort(rng.choice(np.arange(1, total), spans - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [total]]))

    noise_lengths, kept_lengths = split(noise), split(n - noise)
    inputs, targets, i = [], [], 0
    for span, (kept, dropped) in enumerate(zip(kept_lengths, noise_lengths)):
        sentinel = vocab_size - 1 - span
        inputs += tokens[i:i + kept].tolist() + [sentinel]
        targets += [sentinel] + tokens[i + kept:i + kept + dropped].tolist()
        i += kept + dropped
    return inputs + [EOS_ID], targets + [EOS_ID]


# --------------------------------------------------------------------------- #
# The mixture
# --------------------------------------------------------------------------- #

def mixing_rates(sizes: dict[str, int], span_share: float, cap: int,
                 text: str = "span_corruption") -> dict[str, float]:
    """The share of the rows of each source: the unlabelled `text` objective `span_share`, the tasks the rest,
    each in proportion to min(size, cap) (examples-proportional mixing with T5's limit K)."""
    capped = {name: min(size, cap) for name, size in sizes.items()}
    total = sum(capped.values())
    return {text: span_share, **{name: (1 - span_share) * n / total for name, n in capped.items()}}


def text_objective(config: PretrainConfig) -> str:
    """The unlabelled objective's name in the mixture: T5's span corruption, GPT-2's next-token prediction."""
    return "span_corruption" if config.family == "t5" else "language_modelling"


def build_rows(config: PretrainConfig, tokenizer, examples: dict[str, list[dict]], texts: list[str],
               rng: np.random.Generator) -> tuple[list[dict], dict]:
    """The run's rows, steps * batch_size of them: {"input_ids", "labels", "source"}; and what was mixed.

    A task's examples are taken in shuffled passes (a new shuffle each pass), as many as its rate gives;
    the unlabelled rows are windows of `chunk_length` tokens of the text (all of it, joined, each text
    closed by the end-of-text token), at a random offset each pass. T5: each window is corrupted afresh
    each time. GPT-2: the window is its own label (next-token prediction on every token), and a task
    example is cast as minidept casts it for a decoder-only model, behind the prefix:
    "sst2 sentence: ... Label : 1<|endoftext|>", the loss on "1<|endoftext|>" only.
    """
    held_in, text = task_names(config.held_in), text_objective(config)
    gpt2 = config.family == "gpt2"
    encoded = {}
    for name in held_in:
        if gpt2:
            cast, _ = encode_examples(name, examples[name], tokenizer, config.max_length, decoder_only=True,
                                      eos_id=EOS_ID, prefix=f"{name} ")
            encoded[name] = [(row["input_ids"], row["labels"]) for row in cast]
            continue
        pairs = [prefixed(name, example) for example in examples[name]]
        sources = tokenizer.encode_batch([source for source, _ in pairs])
        targets = tokenizer.encode_batch([target for _, target in pairs])
        # a source longer than max_length is cut, keeping its closing </s>
        encoded[name] = [(s.ids if len(s.ids) <= config.max_length else s.ids[:config.max_length - 1] + [EOS_ID],
                          t.ids) for s, t in zip(sources, targets)]
    closing = [EOS_ID] if gpt2 else []   # T5's tokenizer appends </s> itself
    stream = np.array([i for e in tokenizer.encode_batch(texts) for i in e.ids + closing], dtype=np.int64)
    rates = mixing_rates({name: len(rows) for name, rows in encoded.items()}, config.span_share, config.mixing_cap,
                         text)
    total = config.steps * config.batch_size
    counts = {name: int(round(rate * total)) for name, rate in rates.items()}
    counts[text] += total - sum(counts.values())   # rounding: the rows add up to total
    rows = []
    for name in held_in:
        order = []
        while len(order) < counts[name]:
            order += rng.permutation(len(encoded[name])).tolist()
        rows += [{"input_ids": encoded[name][i][0], "labels": encoded[name][i][1], "source": name}
                 for i in order[:counts[name]]]
    starts, L = [], config.chunk_length
    while len(starts) < counts[text]:
        offset = int(rng.integers(0, L))
        starts += (offset + L * rng.permutation((len(stream) - offset) // L)).tolist()
    for start in starts[:counts[text]]:
        if gpt2:
            inputs = targets = stream[start:start + L].tolist()
        else:
            inputs, targets = span_corruption(stream[start:start + L], rng, config.noise_density,
                                              config.mean_span_length, config.vocab_size)
        rows.append({"input_ids": inputs, "labels": targets, "source": text})
    mixture = {name: {"rate": round(rates[name], 4), "rows": counts[name],
                      **({"examples": len(encoded[name])} if name in encoded else {"text_tokens": len(stream)})}
               for name in rates}
    return rows, mixture


# --------------------------------------------------------------------------- #
# The model and its loss
# --------------------------------------------------------------------------- #

def t5_config(config: PretrainConfig) -> T5Config:
    return T5Config(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_model // config.num_heads,
                    d_ff=config.d_ff, num_layers=config.num_layers, num_decoder_layers=config.num_decoder_layers,
                    num_heads=config.num_heads, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="relu",
                    tie_word_embeddings=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)


@torch.no_grad()
def init_t5(model: T5) -> None:
    """Mesh TensorFlow's initialisation, as T5 was trained: embeddings and position biases N(0, 1), each
    weight matrix N(0, 1/fan_in), the queries also divided by sqrt(d_kv) (T5 has no 1/sqrt(d_kv) in its
    attention: minidept/models/t5.py, `Attention`); the norms' weights 1."""
    for name, param in model.named_parameters():
        if name == "shared.weight" or name.endswith("relative_bias.weight"):
            param.normal_(0.0, 1.0)
        elif param.dim() == 2:
            fan_in = param.shape[1] * (model.config.d_kv if name.endswith(".q.weight") else 1)
            param.normal_(0.0, fan_in ** -0.5)
        else:
            param.fill_(1.0)


def gpt2_config(config: PretrainConfig) -> GPT2Config:
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.d_model,
                      n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.d_ff,
                      activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=EOS_ID, eos_token_id=EOS_ID)


class TextToText(nn.Module):
    """The pretraining loss of a T5: cross-entropy of the target tokens under teacher forcing, matrix products
    in bfloat16 (the weights, their gradients and the loss stay float32)."""

    def __init__(self, t5: T5):
        super().__init__()
        self.t5 = t5

    def forward(self, input_ids, attention_mask, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.t5(input_ids, attention_mask, self.t5.shift_right(labels))   # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


class NextToken(nn.Module):
    """The pretraining loss of a GPT-2: cross-entropy of each labelled token given the tokens before it
    (position t predicts token t + 1; pads and a task's source are labelled -100 and skipped), matrix
    products in bfloat16 (the weights, their gradients and the loss stay float32)."""

    def __init__(self, gpt2: GPT2):
        super().__init__()
        self.gpt2 = gpt2

    def forward(self, input_ids, attention_mask, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.gpt2(input_ids, attention_mask)                              # (B, T, V)
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX)


def monitor(model: T5 | GPT2, tokenizer, examples: list[dict], max_length: int = 128,
            batch_size: int = 100) -> dict[str, float]:
    """Greedy accuracy of the monitor task on `examples`, with its prefix and without (a prompt's place).
    A GPT-2 continues "{prefix}{source} Label : " (minidept's decoder-only casting)."""
    model.eval()
    scores = {}
    for key, prefix in (("prefixed", f"{MONITOR_TASK} "), ("no_prefix", "")):
        predictions, references = [], []
        for i in range(0, len(examples), batch_size):
            part = examples[i:i + batch_size]
            if model.is_encoder_decoder:
                pairs = [format_example(MONITOR_TASK, example) for example in part]
                rows = [{"input_ids": e.ids, "labels": [EOS_ID]}
                        for e in tokenizer.encode_batch([prefix + source for source, _ in pairs])]
                batch, targets = collate(rows, PAD_ID), [target for _, target in pairs]
                inputs = batch["input_ids"], batch["attention_mask"]
            else:
                rows, _ = encode_examples(MONITOR_TASK, part, tokenizer, max_length, decoder_only=True,
                                          eos_id=EOS_ID, prefix=prefix)
                batch, targets = collate(rows, PAD_ID), [row["target"] for row in rows]
                inputs = batch["prompt_ids"], batch["prompt_mask"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                generated = model.generate(*inputs, max_new_tokens=4)
            predictions += decode_predictions(tokenizer, generated, EOS_ID, PAD_ID)
            references += targets
        scores[f"{MONITOR_TASK}_{key}"] = score(MONITOR_TASK, predictions, references)["accuracy"]
    return scores


class PretrainHooks(Hooks):
    """metrics.jsonl (a training record every `log_every` steps, the monitor's scores) and the progress bar."""

    def __init__(self, config: PretrainConfig, log_file, log=print):
        self.config, self.log_file, self.log = config, log_file, log
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.losses = []
        self.bar = tqdm(total=config.steps, disable=config.quiet, desc="pretrain", unit="step", dynamic_ncols=True,
                        file=sys.stderr)

    def write(self, record: dict) -> None:
        record.update(elapsed=round(time.perf_counter() - self.started, 2),
                      cpu_seconds=round(time.process_time() - self.cpu_started, 2))
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def after_step(self, step, loss, grad_norm, seconds, optimizer):
        self.losses.append(loss)
        if step % self.config.log_every == 0 or step == self.config.steps:
            mean = sum(self.losses) / len(self.losses)
            self.losses = []
            self.write({"step": step, "loss": round(mean, 5), "lr": optimizer.param_groups[0]["lr"],
                        "grad_norm": round(grad_norm, 4)})
            self.bar.set_postfix(loss=f"{mean:.3f}")
        self.bar.update(1)

    def after_evaluation(self, step, scores, improved):
        self.write({"step": step, "split": "validation", "examples": self.config.eval_examples, **scores})
        (self.log if self.config.quiet else self.bar.write)(
            f"step {step:>5}  " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #

def command_line(config: PretrainConfig) -> str:
    """The command that makes this model: the options that differ from the defaults (the data folder as DATA;
    the settings of the other family left out)."""
    defaults = dataclasses.replace(with_family_defaults(PretrainConfig(family=config.family)), family="t5")
    parts = ["python -m minidept.pretrain --data-dir DATA"]
    for field in dataclasses.fields(PretrainConfig):
        value = getattr(config, field.name)
        if field.name in ("data_dir", "output_dir", "quiet", *ONLY["gpt2" if config.family == "t5" else "t5"]) \
                or value == getattr(defaults, field.name):
            continue
        parts.append(f"--{field.name.replace('_', '-')} {value}")
    parts.insert(1, f"--output-dir {Path(config.output_dir).name}")
    return " ".join(parts)


def pretrain(config: PretrainConfig, log=print) -> dict:
    """Make the pocket model in `config.output_dir`; return its recipe (also written as recipe.json)."""
    import tokenizers

    config = check(config)
    torch.set_num_threads(config.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)

    examples = read_tasks(config)
    texts = plain_text(examples)
    held_in = task_names(config.held_in)
    sources = [source for name in held_in for source, _ in (prefixed(name, e) for e in examples[name])]
    tokenizer = train_tokenizer(texts + sources, config.vocab_size, sentinels(config), config.family)
    atomic_write(out / TOKENIZER_FILE, tokenizer.to_str().encode())
    rows, mixture = build_rows(config, tokenizer, examples, texts, rng)
    log(f"pretrain: {len(texts):,} texts, vocabulary {config.vocab_size:,}, {len(rows):,} rows: "
        + ", ".join(f"{name} {m['rate']:.1%}" for name, m in mixture.items()))
    prepared = time.perf_counter() - started

    if config.family == "t5":
        backbone = T5(t5_config(config))
        init_t5(backbone)
        model = TextToText(backbone)
    else:
        backbone = GPT2(gpt2_config(config))   # GPT-2's own initialisation (minidept/models/gpt2.py): N(0, 0.02),
        model = NextToken(backbone)            # the residual output projections divided by sqrt(2 * n_layer)
    if config.optimizer == "adafactor":
        optimizer = torch.optim.Adafactor(model.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    order = batches(len(rows), config.batch_size, seed=config.seed, lengths=[len(r["input_ids"]) for r in rows],
                    drop_last=True)   # length-grouped: little padding

    def batch_at(step: int):
        batch = collate([rows[i] for i in order[step]], PAD_ID)
        yield {name: batch[name] for name in ("input_ids", "attention_mask", "labels")}, 1.0

    evaluate = None
    if config.eval_every and MONITOR_TASK in held_in:
        held = load_splits(MONITOR_TASK, config.data_dir)["validation"][:config.eval_examples]
        evaluate = lambda model: monitor(backbone, tokenizer, held, config.max_length)   # noqa: E731
    with open(out / LOG_FILE, "w", encoding="utf-8") as log_file:
        hooks = PretrainHooks(config, log_file, log)
        train_start = time.perf_counter()
        train_loop(model, optimizer, batch_at, config.steps, warmup_steps=config.warmup_steps, evaluate=evaluate,
                   metric=f"{MONITOR_TASK}_prefixed", eval_every=config.eval_every or config.steps, hooks=hooks)
        hooks.bar.close()
    train_seconds = time.perf_counter() - train_start
    final = monitor(backbone, tokenizer, load_splits(MONITOR_TASK, config.data_dir)["validation"],
                    config.max_length) if MONITOR_TASK in held_in else {}

    save_pretrained(backbone.to(torch.bfloat16), out)   # bfloat16: half the bytes; loads as float32 or bfloat16
    params = sum(p.numel() for p in backbone.parameters())
    other = ONLY["gpt2" if config.family == "t5" else "t5"]   # settings of the other family: not recorded
    recipe = {
        "what": "a small T5 pretrained from scratch by minidept (python -m minidept.pretrain): span corruption on "
                "the training text of the tasks below plus the held-in tasks with a task prefix"
                if config.family == "t5" else
                "a small GPT-2 pretrained from scratch by minidept (python -m minidept.pretrain --family gpt2): "
                "next-token prediction on the training text of the tasks below plus the held-in tasks with a task "
                "prefix",
        "command": command_line(config),
        "settings": {k: v for k, v in dataclasses.asdict(config).items()
                     if k not in ("data_dir", "output_dir", "quiet", *other)},
        "held_in": held_in, "held_out": task_names(config.held_out), "text_only": task_names(config.text_only),
        "data": "the training split of each task (minidept's split rule, docs/methods.md section 6); never a "
                "validation or test split; held-out tasks not at all",
        "casting": "held-in: '<task> ' + minidept's format_example source -> its target ('sst2 sentence: ...' -> '0')"
                   if config.family == "t5" else
                   "held-in: minidept's decoder-only casting behind '<task> ': 'sst2 sentence: ... Label : 0"
                   "<|endoftext|>', the loss on the target and the end of text only",
        "mixture": mixture,
        "parameters": params, "dtype": "bfloat16",
        "monitor": {f"{MONITOR_TASK} validation accuracy, greedy": final},
        "seconds": {"total": round(time.perf_counter() - started, 1), "training": round(train_seconds, 1),
                    "data_and_tokenizer": round(prepared, 1),
                    "cpu": round(time.process_time() - cpu_started, 1)},
        "machine": {"threads": config.threads, "cpu_count": os.cpu_count(), "processor": platform.processor()
                    or platform.machine(), "load_average": [round(x, 2) for x in os.getloadavg()]
                    if hasattr(os, "getloadavg") else None},
        "versions": {"torch": torch.__version__, "tokenizers": tokenizers.__version__,
                     "python": platform.python_version(), "numpy": np.__version__},
    }
    write_json(out / RECIPE_FILE, recipe)
    log(f"pretrain: {params:,} parameters, {config.steps} steps in {train_seconds / 60:.1f} min on "
        f"{config.threads} thread(s); {MONITOR_TASK} validation accuracy {final}; written to {out}")
    return recipe


@command("python -m minidept.pretrain")
def main(argv: list[str] | None, prog: str) -> int | None:
    pretrain(parse(PretrainConfig, argv, prog, __doc__.split("\n\n")[0]))
