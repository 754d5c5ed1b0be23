"""Train a prompt on a frozen backbone: `python -m minidept.train --task sst2`, or `train(TrainConfig(...))`.

The loop itself is `minidept/loop.py` (batch, forward, backward, clip, AdamW step, evaluate,
keep the best). This file is the run around it: `setup` resolves and checks every setting
(`TrainConfig`, `minidept/run/config.py`) and loads the model and the data; `train` holds the
run folder (`minidept/run/folder.py`) and passes the loop its hooks (`RunHooks`): the log,
the progress bar, the best adapter, the training state, Ctrl-C and torchrun.
The settings are those of the official DePT runs (docs/methods.md section 5): the official
text init, two learning rates, linear warmup from 0 (500 steps, at most a tenth of the run)
then linear decay, batch 32 (an epoch's last batch may be smaller), seed 42, the task's
published m, rates and steps; r from the budget.

Faults lose nothing: every file is written atomically; the training state (trainable tensors,
AdamW's moments, the RNG; the step and the best score as JSON metadata, nothing pickled) is
saved every `--save-every` steps; the batch and the learning rate depend only on (seed, step),
so `--resume` continues with exactly the losses the run would have had, after a kill at any
moment too. Ctrl-C (or SIGTERM) sets a flag that the loop checks between steps (and between
evaluation batches), and the state is saved at that boundary. A non-finite loss stops the run
before the update. One run at a time per folder (`.lock`).

Bigger backbones: `--dtype bfloat16`, `--grad-accum K`, `--activation-checkpointing`, and
`torchrun --nproc_per_node N -m minidept.train -- OPTIONS` (`minidept/run/distributed.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io.checkpoint import CONFIG_FILE, CheckpointError, atomic_write, copy_into, read_safetensors, write_json
from ..data.load import DataError, batches, collate, encode_examples, k_shot, load_splits, tokenize
from ..data.tasks import get_task
from ..io.adapters import (ADAPTER_FILE, MAX_PROMPT_LENGTH, adapter_config, adapter_settings, load_adapter_into,
                           read_adapter, save_adapter)
from ..io.backbones import BUILT_IN_MODELS, DTYPES, load_backbone
from ..io.state import load_state, save_state
from ..loop import Diverged, Hooks, Progress, lr_factor, train_loop  # noqa: F401  (lr_factor: the schedule)
from ..methods import PromptConfig
from ..prompted import IGNORE_INDEX, PromptedModel
from . import distributed, fastpath
from .cli import UsageError, command, parse
from .config import (BUILT_IN_EVAL_EVERY, BUILT_IN_STEPS, DEFAULTS, FIXED_ON_RESUME, MAX_WARMUP, NOT_SAVED,
                     TrainConfig, command_line)  # noqa: F401  (command_line: used by the tools)
from .evaluate import evaluate
from .folder import (LOCK_FILE, LOG_FILE, RESULTS_FILE, RUN_FILES, STATE_FILE, folder_lock,  # noqa: F401
                     holds_run, log_records_until, read_run_config, remove_temporaries)
from .report import MetricsLog, check_reporter

# AdamW as the official DePT runs (docs/methods.md section 5; the paper's table says betas (0.9, 0.98), wd 0.01).
BETAS, EPS, WEIGHT_DECAY, CLIP_NORM = (0.9, 0.999), 1e-6, 0.0, 1.0
MAX_LR = 1000.0
MAX_TRAINABLE = 10**9              # values of one adapter: far above any published setting (LLaMA-2: 419,840)
MAX_BATCH_TOKENS = 2**20           # tokens of one micro-batch (the published runs: 32 x 256 = 8,192)


# --------------------------------------------------------------------------- #
# Settings: given > saved run (--resume) > source adapter (--init-from) > the task's > TrainConfig's
# --------------------------------------------------------------------------- #

def resolve(config: TrainConfig, log=print):
    """(config with every setting filled in, task, what --resume found saved, what was given, the source
    adapter or None). With --resume, a setting left at its default takes the saved run's value."""
    original = config
    given = {k: v for k, v in dataclasses.asdict(config).items() if v != DEFAULTS[k] and v is not None}
    saved = {}
    if config.resume:
        folder = given.get("output_dir") or (default_output_dir(given) if "task" in given else None)
        if folder and (Path(folder) / CONFIG_FILE).is_file():
            saved = {k: v for k, v in read_run_config(folder, known=set(DEFAULTS))["run"].items() if v is not None}
    values = {**saved, **given}
    if "task" not in values:
        raise UsageError("--task is required (e.g. --task sst2, or --task demo --model pocket-t5)"
                         + ("; with --resume, --output-dir names the run to continue" if config.resume else ""))
    try:
        task = get_task(values["task"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    values["task"] = task.name
    differ = [f"--{k.replace('_', '-')} {saved[k]!r} -> {given[k]!r}" for k in FIXED_ON_RESUME
              if k in saved and k in given and saved[k] != given[k] and not same_folder(k, saved[k], given[k])]
    if differ:
        raise UsageError(f"--resume: these settings cannot change in a run ({'; '.join(differ)}). Resume with the "
                         "saved values (leave them out), or start a new run in another --output-dir")
    source, adapter = None, {}
    if "init_from" in values:        # transfer: the source adapter's shape is the default
        source = read_adapter(values["init_from"])
        adapter = adapter_settings(source[0], values["init_from"])
    method = values.get("method", adapter.get("method", DEFAULTS["method"]))
    l = values.get("l", adapter.get("l", task.l))
    model = values.get("model", DEFAULTS["model"])
    built_in = model in BUILT_IN_MODELS and not Path(model).is_dir()
    max_steps = values.get("max_steps", BUILT_IN_STEPS if built_in else task.max_steps)
    eval_every = values.get("eval_every", BUILT_IN_EVAL_EVERY if built_in else 1000)
    derived = dict(m=adapter.get("m", l if method == "pt" else task.m),
                   r=(adapter.get("r") or None) if adapter.get("method") == method else None,   # PT stores r=0
                   max_length=adapter.get("max_length", task.max_length), batch_size=task.batch_size,
                   grad_accum=task.grad_accum,
                   max_steps=max_steps, warmup_steps=min(MAX_WARMUP, max_steps // 10), lr_prompt=task.lr_prompt,
                   lr_lowrank=task.lr_lowrank, eval_every=eval_every, save_every=eval_every,
                   data_dir=None if task.make_splits else os.environ.get("MINIDEPT_DATA") or None)
    config = dataclasses.replace(config, **{**DEFAULTS, **{k: v for k, v in derived.items() if v is not None},
                                            **values, "method": method, "l": l})
    config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir(dataclasses.asdict(config)),
                                 **{k: getattr(original, k) for k in NOT_SAVED})
    if config.init != "text":        # the text is used by --init text only
        config = dataclasses.replace(config, init_text=None)
    if built_in and "max_steps" not in values:
        log(f"  note: {model} is built into minidept: {max_steps} steps, evaluation every {eval_every} (the task's "
            f"published {task.max_steps:,} steps are for t5-base); --max-steps and --eval-every change them")
    for key in ("model", "tokenizer", "data_dir", "init_from"):   # local paths made absolute: the run works anywhere
        if getattr(config, key) and Path(getattr(config, key)).expanduser().exists():
            config = dataclasses.replace(config, **{key: str(Path(getattr(config, key)).expanduser().resolve())})
    return config, task, saved, given, source


def default_output_dir(values: dict) -> str:
    model = values.get("model") or DEFAULTS["model"]
    return (f"runs/{values['task']}-{values.get('method') or DEFAULTS['method']}-{Path(str(model)).name}-seed"
            f"{values.get('seed', DEFAULTS['seed'])}")


def same_folder(key: str, a, b) -> bool:
    """A folder given by another path is the same setting (relative or absolute, `~`)."""
    paths = [Path(str(v)).expanduser() for v in (a, b)]
    return key in ("model", "tokenizer", "data_dir", "init_from", "output_dir") and all(p.exists() for p in paths) and \
        paths[0].resolve() == paths[1].resolve()


def check(config: TrainConfig, saved: dict, given: dict, log=print) -> None:
    """Values argparse cannot check alone, and the run folder; each message names the value and the fix."""
    for key in ("data_dir", "tokenizer"):
        if getattr(config, key) and not Path(getattr(config, key)).expanduser().is_dir():
            raise UsageError(f"--{key.replace('_', '-')} {getattr(config, key)}: no such folder "
                             f"({Path(getattr(config, key)).expanduser().absolute()})")
    for name in ("l", "max_length", "batch_size", "grad_accum", "max_steps", "eval_every", "save_every", "log_every",
                 "eval_batch_size", "r", "max_eval_examples", "k_shot", "stop_at", "threads", "m", "warmup_steps",
                 "seed"):
        value, least = getattr(config, name), 0 if name in ("m", "warmup_steps", "seed") else 1
        if value is not None and not least <= value < 2**63:   # torch's generators take 64-bit seeds
            raise UsageError(f"--{name.replace('_', '-')}={value}: must be "
                             + (f"at least {least}" if value < least else "below 2**63"))
    if config.stop_at is not None and config.stop_at > config.max_steps:
        raise UsageError(f"--stop-at {config.stop_at} is after --max-steps {config.max_steps}: the run ends at "
                         "--max-steps; lower --stop-at")
    if config.threads is not None and config.threads > 4 * (os.cpu_count() or 1):
        raise UsageError(f"--threads {config.threads}: this machine has {os.cpu_count()} CPU cores; use at most "
                         f"{4 * (os.cpu_count() or 1)} (fewer than the cores is often faster on a busy machine)")
    world = int(os.environ.get("WORLD_SIZE", 1))   # processes started by torchrun
    if config.batch_size < world * config.grad_accum:
        raise UsageError(f"--batch-size {config.batch_size} cannot give each of {world} process(es) "
                         f"--grad-accum {config.grad_accum} micro-batches of at least one example: raise "
                         "--batch-size or lower --grad-accum")
    if config.l > MAX_PROMPT_LENGTH:
        raise UsageError(f"--l {config.l}: a prompt longer than {MAX_PROMPT_LENGTH:,} vectors is not taken (the papers "
                         "use 100; every input carries the prompt)")
    try:   # the method's own rules (m <= l, PT has no m or r, ...), before anything is loaded
        PromptConfig(method=config.method, l=config.l, m=config.m, r=config.r, max_length=config.max_length,
                     init="random")
    except ValueError as error:
        raise UsageError(as_options(error)) from None
    for name in ("lr_prompt", "lr_lowrank"):
        if not 0 < getattr(config, name) <= MAX_LR:   # NaN fails too; larger rates overflow AdamW's float32 step
            raise UsageError(f"--{name.replace('_', '-')}={getattr(config, name)}: must be a number in (0, {MAX_LR}] "
                             "(the published rates are 0.3-0.5 for the prompt, 1e-4-5e-3 for the low-rank part)")
    if config.report_to:
        check_reporter(config.report_to)
    if config.init == "text" and not config.init_text:
        raise UsageError(f"--init text needs a non-empty --init-text (default {DEFAULTS['init_text']!r})")
    out = Path(config.output_dir)
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--output-dir {out} is a symlink to nothing (or a loop); remove it or choose another")
    existing = next(folder for folder in (out, *out.parents) if folder.exists())   # where the folder will be made
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {out}: {existing.resolve()} is "
                         f"{'not writable' if existing.is_dir() else 'a file'}; choose another --output-dir")
    if out.is_dir() and not holds_run(out) and any(out.iterdir()):
        if (out / CONFIG_FILE).is_file() or (out / "model.safetensors").is_file():
            raise UsageError(f"--output-dir {out} holds a model (config.json without a run), not a run: choose "
                             "another --output-dir; a run never writes into a model folder")
    if config.resume:
        for key in sorted(given.keys() - set(FIXED_ON_RESUME) - set(NOT_SAVED)):
            if key in saved and saved[key] != given[key] and not same_folder(key, saved[key], given[key]):
                log(f"  note: --{key.replace('_', '-')} changed on resume: {saved[key]!r} -> {given[key]!r}")
    elif not config.overwrite and holds_run(out):
        raise UsageError(f"--output-dir {out} already holds a run: " + (
            "continue it with the same command plus --resume" if (out / STATE_FILE).is_file() else
            "it saved no state yet, the same command plus --resume starts it again from step 0")
            + "; start it again with --overwrite, or choose another --output-dir (Python: TrainConfig(resume=True) "
              "or overwrite=True)")


def load(config: TrainConfig, task, source, log=print, fit_context: bool = False):
    """(prompted model, tokenizer, encoded splits, facts for config.json): the backbone and the data are both
    tried first, so that one message names every missing piece. `fit_context`: max_length is the task's
    default, not chosen, and is lowered if the prompt and it would pass a decoder's learned positions."""
    errors = []
    try:
        backbone, tokenizer = load_backbone(config.model, config.tokenizer, DTYPES[config.dtype], config.device)
    except ValueError as error:
        errors.append(str(error))
    try:
        splits = load_splits(task, config.data_dir)
    except DataError as error:
        errors.append(str(error))
    if errors:
        raise UsageError("\nalso: ".join(errors))
    if config.k_shot:
        try:
            splits["train"] = k_shot(task, splits["train"], config.k_shot, config.seed)
        except ValueError as error:
            raise UsageError(f"--k-shot {config.k_shot}: {error}") from None
        if len(splits["train"]) < config.k_shot:
            log(f"  note: --k-shot {config.k_shot} takes {len(splits['train'])} examples of {task.name}, as the "
                "official rule does (K // C of each class, then one more only once K - 1 are taken)")
    for split in ("validation", "test") if config.max_eval_examples else ():
        splits[split] = splits[split][:config.max_eval_examples]
    if source:   # the source adapter fits its own settings and this backbone (before anything is built)
        adapter_config(*source, backbone, config.init_from)
    init_text_ids, eos = None, backbone.config.eos_token_id
    if config.init == "text":   # the text's ids WITH end-of-sequence, as the official code (GPT-2's tokenizer adds none)
        ids = tokenize(tokenizer.encode, config.init_text).ids
        init_text_ids = tuple(ids if ids[-1:] == [eos] else ids + [eos])
    backbone.activation_checkpointing = config.activation_checkpointing
    context = backbone.context_length   # None for T5 (relative positions)
    if fit_context and context is not None and 0 < context - config.m < config.max_length:
        log(f"  note: --max-length {context - config.m}: the task's {config.max_length} input tokens after "
            f"{config.m} prompt vectors would pass the model's {context} positions (pass --max-length to choose another)")
        config = dataclasses.replace(config, max_length=context - config.m)
    try:
        prompt = PromptConfig(method=config.method, l=config.l, m=config.m, r=config.r, max_length=config.max_length,
                              init=config.init, init_text_ids=init_text_ids, seed=config.seed)
        prompt = prompt.resolve(backbone.d_model, backbone.context_length)
    except ValueError as error:   # a prompt longer than the context, no rank within the budget, ...
        raise UsageError(as_options(error)) from None
    if prompt.count(backbone.d_model) > MAX_TRAINABLE:
        raise UsageError(f"{config.method} with --l {config.l}, --m {config.m}, --r {prompt.r} at d = "
                         f"{backbone.d_model} makes {prompt.count(backbone.d_model):,} trainable values, more than "
                         f"{MAX_TRAINABLE:,}: lower --l, --m or --r")
    model = PromptedModel(backbone, prompt)
    if source:   # transfer: every tensor of the source adapter, names and shapes equal
        copy_into(model.adapter_state_dict(), source[1], f"--init-from {config.init_from}",
                  hint="use the --method, --l, --m, --r and --max-length of the source run")
    data, truncated = {}, {}
    for split, examples in splits.items():
        data[split], truncated[split] = encode_examples(task, examples, tokenizer, config.max_length,
                                                        not backbone.is_encoder_decoder, model.eos_id)
    if not data["train"] or not data["validation"]:
        raise UsageError(f"task {task.name}: the train and validation splits must not be empty")
    world = int(os.environ.get("WORLD_SIZE", 1))
    rows = -(-min(config.batch_size, len(data["train"])) // (world * config.grad_accum))   # one micro-batch
    longest = max(len(row["input_ids"]) for row in data["train"])
    if rows * longest > MAX_BATCH_TOKENS:
        raise UsageError(f"--batch-size {config.batch_size}: a micro-batch of {rows:,} examples of up to {longest} "
                         f"tokens is {rows * longest:,} tokens, more than {MAX_BATCH_TOKENS:,}: lower --batch-size "
                         "or raise --grad-accum")
    facts = {"model_type": backbone.model_type, "d_model": backbone.d_model,
             "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
             "budget_l_times_d": config.l * backbone.d_model, "prompt_config": dataclasses.asdict(model.config),
             "examples": {k: len(v) for k, v in data.items()}, "truncated": truncated,
             "device": str(model.prompt.P.device), "world_size": int(os.environ.get("WORLD_SIZE", 1)),
             "torch": torch.__version__}
    return model, tokenizer, data, facts


def setup(config: TrainConfig, log=print):
    """Resolve and check every setting, then load what the run needs; nothing is written. Mistakes raise a
    UsageError / DataError / CheckpointError. Returns (config with every setting filled in, prompted model,
    tokenizer, task, encoded splits, facts for config.json)."""
    config, task, saved, given, source = resolve(config, log)
    check(config, saved, given, log)
    model, tokenizer, data, facts = load(config, task, source, log, fit_context="max_length" not in {**saved, **given})
    config = dataclasses.replace(config, r=model.config.r if config.method != "pt" else None,
                                 max_length=model.config.max_length)
    return config, model, tokenizer, task, data, facts


# --------------------------------------------------------------------------- #
# The run around the loop
# --------------------------------------------------------------------------- #

class RunHooks(Hooks):
    """What `python -m minidept.train` adds to the loop: metrics.jsonl and the progress bar, the best adapter,
    the training state, Ctrl-C / SIGTERM as a request to stop, and torchrun's all-reduce (rank 0 alone writes)."""

    def __init__(self, config, out: Path, model, optimizer, data, task, progress: Progress, records: dict,
                 log_file, rank: int, world: int, log):
        self.config, self.out, self.model, self.optimizer, self.data, self.task = config, out, model, optimizer, data, task
        self.progress, self.records, self.log_file, self.rank, self.world, self.log = progress, records, log_file, \
            rank, world, log
        self.interrupted, self.asked = False, False   # torchrun: a rank's signal is only a request
        self.started, self.elapsed_before = time.perf_counter(), records["elapsed"]
        self.last_log = (records["train_seconds"], progress.step)
        self.bar = tqdm(total=config.max_steps, initial=progress.step, disable=config.quiet or rank > 0,
                        desc=f"{config.method} {task.name}", unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_signal(self, *_):
        """Ctrl-C / SIGTERM: stop at the next step boundary, where the state is saved. A second one stops at
        once (KeyboardInterrupt): the state saved last is kept, and --resume continues from it exactly."""
        if self.interrupted or self.asked:
            raise KeyboardInterrupt
        self.interrupted, self.asked = self.world == 1, self.world > 1
        (self.log if self.config.quiet or self.rank else self.bar.write)(
            "stopping after the current step (and its evaluation, if one is running) to save the state; "
            "Ctrl-C again stops at once, keeping the state saved last")

    def stop_requested(self) -> bool:
        return self.interrupted

    def reduce(self, loss, params):
        if self.world == 1:
            return loss
        loss, stop = distributed.all_reduce(params, loss, self.asked)   # gradients, losses, stop requests
        self.interrupted = self.interrupted or stop
        return loss

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def write(self, record: dict) -> None:
        self.log_file.write(json.dumps(clean(record)) + "\n")
        self.log_file.flush()

    def after_step(self, step, loss, grad_norm, seconds, optimizer):
        r = self.records
        r["loss_sum"], r["loss_count"], r["train_seconds"] = r["loss_sum"] + loss, r["loss_count"] + 1, \
            r["train_seconds"] + seconds
        if step % self.config.log_every == 0 or step == (self.config.stop_at or self.config.max_steps):
            mean_loss = r["loss_sum"] / r["loss_count"]
            speed = (step - self.last_log[1]) / max(1e-9, r["train_seconds"] - self.last_log[0])
            self.last_log = (r["train_seconds"], step)
            r.update(loss_sum=0.0, loss_count=0)
            lrs = {f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups}
            self.write({"step": step, "loss": mean_loss, **lrs, "grad_norm": grad_norm,
                        "steps_per_s": round(speed, 3), "elapsed": round(self.elapsed(), 3)})
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        self.bar.update(1)

    def after_evaluation(self, step, scores, improved):
        if improved and self.rank == 0:
            save_adapter(self.model, self.out / ADAPTER_FILE)
        n = len(self.data["validation"])
        self.write({"step": step, "split": "validation", **scores, "examples": n, "best": self.progress.best,
                    "elapsed": round(self.elapsed(), 3)})
        (self.log if self.config.quiet or self.rank else self.bar.write)(
            f"step {step:>6}  validation {', '.join(f'{k} {v:.2f}' for k, v in scores.items())} on {n} examples"
            + ("  (best so far, adapter saved)" if improved else ""))

    def save(self, step, progress):
        device = self.model.prompt.P.device
        rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(device)}
                                                 if device.type == "cuda" else {})}
        if self.world > 1:
            rng = distributed.gather_rng(rng, device)
        self.records["elapsed"] = self.elapsed()
        if self.rank == 0:
            os.fsync(self.log_file.fileno())   # the log reaches the saved step, whatever happens next
            save_state(self.out / STATE_FILE, self.model.adapter_state_dict(), self.optimizer,
                       {**dataclasses.asdict(progress), **self.records}, rng)


def batch_source(model, rows: list[dict], config: TrainConfig, rank: int, world: int):
    """batch_at(step) for the loop: the step's batch (`data.batches`, drawn once an epoch from (seed, epoch),
    the last one partial as in the official runs), as this process's micro-batches. With --grad-accum (and
    torchrun's processes) each micro-batch's loss is weighted by its share of the batch's labelled tokens, so
    their gradients add up to that of the batch's mean loss."""
    per_epoch = -(-len(rows) // config.batch_size)
    lengths = [len(row["input_ids"]) for row in rows] if config.group_by_length else None
    micro = config.grad_accum    # micro-batches per process and step
    labelled = [sum(t != IGNORE_INDEX for t in row["labels"]) for row in rows] if micro * world > 1 else None
    epoch_batches = [None, []]
    device = model.prompt.P.device

    def batch_at(step: int):
        epoch, i = divmod(step, per_epoch)
        if epoch_batches[0] != epoch:
            epoch_batches[:] = epoch, batches(len(rows), config.batch_size, config.seed, epoch, lengths=lengths)
        indices = epoch_batches[1][i]
        if labelled is None:
            parts = [indices]
        else:   # this process's share of the batch's world * micro micro-batches (fewer when a short batch has fewer rows)
            shares = np.array_split(indices, world * micro)[rank * micro:(rank + 1) * micro]
            parts = [part.tolist() for part in shares if len(part)]
        total = sum(labelled[j] for j in indices) if labelled is not None else None
        for part in parts:
            batch = collate([rows[j] for j in part], model.pad_id)
            weight = 1.0 if total is None else sum(labelled[j] for j in part) / total
            yield {name: batch[name].to(device) for name in ("input_ids", "attention_mask", "labels")}, weight
    return batch_at


def train(config: TrainConfig, log=print) -> dict:
    """Train the method of `config` and write the run folder; return the results.

    "status" is "done" (results.json written), "stopped" (--stop-at), "interrupted" (Ctrl-C or SIGTERM; the
    state is saved) or "diverged" (a non-finite loss).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))   # torchrun: this many processes, each with a part of every batch
    rank = distributed.start(config.device) if world > 1 else 0
    log = log if rank == 0 else lambda *_: None    # rank 0 alone prints, logs and writes the run's files
    config, model, tokenizer, task, data, facts = setup(config, log)
    if world > 1:
        torch.distributed.barrier()   # every rank has checked the run folder before rank 0 writes to it
    out = Path(config.output_dir)
    # one run per folder (torchrun: one lock file a rank); CPU training's dropout masks drawn four times cheaper
    with folder_lock(out, rank), fastpath.switched(True):
        if config.threads:
            torch.set_num_threads(config.threads)
        run = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SAVED}
        show_settings(run, facts, task, log)
        if rank == 0:
            remove_temporaries(out)
        optimizer = torch.optim.AdamW(model.param_groups(config.lr_prompt, config.lr_lowrank), betas=BETAS, eps=EPS,
                                      weight_decay=WEIGHT_DECAY)
        progress, records, kept = resume(config, out, model, optimizer, task, rank, log)
        if rank == 0:
            atomic_write(out / CONFIG_FILE, json.dumps({"run": run, **facts}, indent=2, sort_keys=True).encode())
            atomic_write(out / LOG_FILE, "".join(line + "\n" for line in kept).encode())
        open_log = lambda: (open(os.devnull, "a") if rank else  # noqa: E731  (--report-to: also TensorBoard / W&B)
                            MetricsLog(out / LOG_FILE, config.report_to, run) if config.report_to
                            else open(out / LOG_FILE, "a", encoding="utf-8"))
        evaluate_split = evaluate if world == 1 else distributed.evaluate   # torchrun: split across the ranks
        with open_log() as log_file:
            hooks = RunHooks(config, out, model, optimizer, data, task, progress, records, log_file, rank, world, log)
            handlers = {}   # Ctrl-C and SIGTERM ask the loop to stop at the next step boundary (main thread only)
            if threading.current_thread() is threading.main_thread():
                handlers = {sig: signal.signal(sig, hooks.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                train_loop(model, optimizer, batch_source(model, data["train"], config, rank, world), config.max_steps,
                           warmup_steps=config.warmup_steps, clip_norm=CLIP_NORM, progress=progress,
                           stop_at=config.stop_at, metric=task.metrics[0], eval_every=config.eval_every,
                           save_every=config.save_every, hooks=hooks,
                           evaluate=lambda m: evaluate_split(m, data["validation"], task, tokenizer,
                                                             config.eval_batch_size))
            except Diverged as error:
                log(f"stopped: {error}; nothing was saved from this step. {after_divergence(out, model, error)}")
                return {"status": "diverged", "step": error.step - 1}
            finally:
                hooks.bar.close()
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
        if hooks.interrupted:
            log(f"interrupted: state saved at step {progress.step} in {out / STATE_FILE}; continue with the same "
                "command plus --resume")
            return {"status": "interrupted", "step": progress.step}
        if progress.step < config.max_steps:
            log(f"stopped at step {progress.step} as asked (--stop-at); continue with the same command plus --resume")
            return {"status": "stopped", "step": progress.step}
        return finish(config, out, model, tokenizer, task, data, facts, progress, records, hooks, open_log, log)


def resume(config, out: Path, model, optimizer, task, rank: int, log):
    """(the loop's progress, the run's records, the log lines kept): from the saved state with --resume (the
    adapter, AdamW's moments and the generators restored), else a new run from step 0."""
    records = dict(loss_sum=0.0, loss_count=0, train_seconds=0.0, elapsed=0.0)
    if not (config.resume and (out / STATE_FILE).is_file()):
        if config.resume:
            log(f"no state saved in {out} yet: starting from step 0")
        for name in (ADAPTER_FILE, STATE_FILE, RESULTS_FILE) if rank == 0 else ():
            (out / name).unlink(missing_ok=True)
        torch.manual_seed(config.seed + rank)   # dropout; the prompt init and the data order have their own seeds
        return Progress(), records, []
    keys = [field.name for field in dataclasses.fields(Progress)] + list(records)
    saved, rng = load_state(out / STATE_FILE, model.adapter_state_dict(), optimizer, keys)
    progress = Progress(**{k: saved[k] for k in keys[:len(dataclasses.fields(Progress))]})
    records.update({k: saved[k] for k in records})
    if progress.best_step is not None and not (out / ADAPTER_FILE).is_file():
        raise CheckpointError(f"{out / ADAPTER_FILE} is missing, but the state saved at step {progress.step} says "
                              f"the best adapter was saved at step {progress.best_step}: put the file back, or start "
                              "again with --overwrite")
    suffix, device = f".{rank}" if rank else "", model.prompt.P.device   # torchrun: each rank's own generators
    torch.set_rng_state(rng.get("cpu" + suffix, rng["cpu"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng.get("cuda" + suffix, rng["cuda"]), device)
    kept = log_records_until(out / LOG_FILE, progress.step) if rank == 0 else []   # later records come again
    log(f"resumed from step {progress.step} " + (f"(best {task.metrics[0]} {progress.best:.2f} at step "
                                                 f"{progress.best_step})" if progress.best_step else "(not evaluated yet)"))
    return progress, records, kept


def finish(config, out, model, tokenizer, task, data, facts, progress, records, hooks, open_log, log) -> dict:
    """The end: the best adapter scored on the test split; the test record, then results.json (a run with
    results.json is complete)."""
    if hooks.world > 1:
        torch.distributed.barrier()   # rank 0 has written the best adapter
    load_adapter_into(model, out / ADAPTER_FILE)
    evaluate_split = evaluate if hooks.world == 1 else distributed.evaluate
    test = evaluate_split(model, data["test"], task, tokenizer, config.eval_batch_size) if data["test"] else {}
    seconds = records["train_seconds"]
    results = {"status": "done", "task": task.name, "method": config.method, "steps": progress.step,
               "best_step": progress.best_step, "validation": progress.best_scores, "test": test,
               "examples": {split: len(data[split]) for split in ("validation", "test")},
               "trainable_parameters": facts["trainable_parameters"], "train_seconds": round(seconds, 3),
               "steps_per_s": round(progress.step / seconds, 3) if seconds else None,
               "elapsed": round(hooks.elapsed(), 3)}
    with open_log() as handle:
        handle.write(json.dumps(clean({"step": progress.step, "split": "test", **test, "examples": len(data["test"]),
                                       "best_step": progress.best_step})) + "\n")
        handle.flush()
        if hooks.rank == 0:
            os.fsync(handle.fileno())
    if hooks.rank == 0:
        write_json(out / RESULTS_FILE, clean(results))
    log(f"best validation {task.metrics[0]} {progress.best:.2f} at step {progress.best_step} on "
        f"{len(data['validation'])} examples; test " + ", ".join(f"{k} {v:.2f}" for k, v in test.items())
        + f" on {len(data['test'])} examples")
    return results


def as_options(error: ValueError) -> str:
    """A PromptConfig message in the command's words: `m=120` becomes `--m=120`, `max_length` `--max-length`."""
    return re.sub(r"\b(?:(l|m|r)=|max_length\b)", lambda found: f"--{found.group(1)}=" if found.group(1)
                  else "--max-length", str(error))


def clean(value):
    """JSON-safe numbers: NaN / inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


def show_settings(run: dict, facts: dict, task, log=print) -> None:
    """Print the run's settings and facts, as config.json records them."""
    log("run settings:")
    shown = {**run, **facts, "tokenizer": run["tokenizer"] or "the model's",
             "data_dir": run["data_dir"] or ("built in" if task.make_splits else "the Hub")}
    for key, value in shown.items():
        if key not in ("prompt_config", "torch") and value is not None:
            log(f"  {key:<24} {value}")
    if facts["trainable_parameters"] > facts["budget_l_times_d"]:   # an explicit --r may go over the budget
        log(f"  note: {facts['trainable_parameters']:,} trainable parameters, above PT's l*d = "
            f"{facts['budget_l_times_d']:,} (--r {run['r']} is above the budget rule's rank)")


def after_divergence(out: Path, model: PromptedModel, error: Diverged | None = None) -> str:
    """What a diverged run leaves and what to do next: resume from the saved state with lower rates, or
    start again when nothing was saved or when the saved parameters are themselves far off (non-finite, or
    over 1000 times the largest value of the backbone's embeddings, the prompt's natural scale). A failure at
    the first step, taken at learning rate 0, is the backbone's or the data's, not the rates'."""
    embeddings = model.backbone.get_input_embeddings().weight
    if error is not None and error.step == 1:
        broken = not torch.isfinite(embeddings).all()
        return ("The first step has learning rate 0, so the rates are not the cause: " +
                ("the backbone's embeddings hold NaN or infinite values; check the model's weights" if broken else
                 "check the backbone's weights and --dtype (float16 overflows where bfloat16 does not)"))
    lower = "lower --lr-prompt / --lr-lowrank"
    if not (out / STATE_FILE).is_file():
        return f"No state was saved yet: start again with {lower} (and --overwrite)"
    metadata, tensors = read_safetensors(out / STATE_FILE)
    progress = json.loads(metadata["progress"])
    saved = torch.cat([t.flatten().float() for name, t in tensors.items() if name.startswith("param.")])
    largest, scale = saved.abs().max().item(), embeddings.abs().max().item()
    kept = f"{out / STATE_FILE} holds step {progress['step']}" + (
        f" and {out / ADAPTER_FILE} the best adapter (step {progress['best_step']})"
        if progress["best_step"] is not None and (out / ADAPTER_FILE).is_file() else "")
    if not math.isfinite(largest) or largest > 1000 * scale:
        return (f"{kept}, but its parameters are far off themselves (largest |value| {largest:.3g}, the "
                f"embeddings' {scale:.3g}): resuming would diverge again. Start again with {lower} (and --overwrite)")
    return f"{kept}: continue from it with the same command plus --resume, with {lower}"


@command("python -m minidept.train", "free space or fix the folder's permissions, then the same command plus --resume")
def main(argv: list[str] | None, prog: str) -> int:
    try:
        config = parse(TrainConfig, argv, prog, __doc__.split("\n\n")[0])
        results = train(config)
        if torch.distributed.is_initialized():   # torchrun: every process has finished before any leaves the group
            distributed.collective(torch.distributed.barrier)
    finally:
        if torch.distributed.is_initialized():   # torchrun
            torch.distributed.destroy_process_group()
    return {"done": 0, "stopped": 0, "interrupted": 130, "diverged": 1}[results["status"]]

if __name__ == "__main__":
    sys.exit(main())
