"""Train a prompt on a frozen backbone: `python -m minidept.train --task sst2`, or `train(TrainConfig(...))`.

One plain loop (nanoGPT style): get a batch, forward, loss, backward, clip the
gradient norm to 1.0, AdamW step, set the learning rate; every `--eval-every`
steps decode the validation split greedily, score it and keep the best adapter
(by the task's first metric). At the end the best adapter is scored on the test
split. The settings are those of the official DePT runs (docs/methods.md
section 5): the official text init, two learning rates, linear warmup from 0
(500 steps, at most a tenth of the run) then linear decay, batch 32 (an epoch's
last batch may be smaller), seed 42, the task's published m, rates and steps;
r from the budget.

Files in `--output-dir`: `config.json` (every resolved setting), `metrics.jsonl`
(one JSON record a line: training and evaluation records), `adapter.safetensors`
(the best adapter so far), `state.safetensors` (for --resume) and `results.json`
(best validation and test metrics of the best adapter).

Faults lose nothing: every file is written atomically; the training state
(trainable tensors, AdamW's moments, the RNG; the step and the best score as
JSON metadata, nothing pickled) is saved every `--save-every` steps; the batch
and the learning rate depend only on (seed, step), so `--resume` continues
with exactly the losses the run would have had, after a kill at any moment too
(a run that saved no state yet starts again from step 0; a log line cut short
is dropped). Ctrl-C (or SIGTERM) sets a flag that the loop checks between
steps, and the state is saved at that boundary. A non-finite loss stops the run
before the update. One run at a time per folder: `.lock` names the process that
holds it (an advisory lock that ends with the process; POSIX only).

Bigger backbones (README): `--dtype bfloat16`, `--grad-accum K` (K micro-batches,
one optimizer step), `--activation-checkpointing`, and several processes with
`torchrun --nproc_per_node N -m minidept.train -- OPTIONS` (`minidept/distributed.py`:
each process takes 1/N of every batch; the run equals a one-process run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

try:
    import fcntl                 # POSIX: the run folder's lock
except ImportError:              # Windows: no lock
    fcntl = None

from . import distributed
from ..io.adapters import ADAPTER_FILE, load_adapter_into, read_adapter, save_adapter
from ..checkpoint import CONFIG_FILE, CheckpointError, atomic_write, copy_into, read_safetensors, write_json
from ..io.state import load_state, save_state
from .cli import UsageError, fail, option, parse
from ..data.load import IGNORE_INDEX, DataError, batches, collate, encode_examples, k_shot, load_splits
from .evaluate import evaluate
from ..methods import DEFAULT_INIT_TEXT, INITS, METHODS, PromptConfig
from ..io.backbones import DTYPES, load_backbone
from ..prompted import PromptedModel
from ..io.adapters import adapter_config, adapter_settings
from .report import MetricsLog, check_reporter
from ..data.tasks import TASKS, get_task

LOG_FILE = "metrics.jsonl"
STATE_FILE, RESULTS_FILE, LOCK_FILE = "state.safetensors", "results.json", ".lock"
RUN_FILES = (CONFIG_FILE, LOG_FILE, ADAPTER_FILE, STATE_FILE, RESULTS_FILE)

# AdamW as the official DePT runs (docs/methods.md section 5; the paper's table says betas (0.9, 0.98), wd 0.01).
BETAS, EPS, WEIGHT_DECAY, CLIP_NORM = (0.9, 0.999), 1e-6, 0.0, 1.0
MAX_WARMUP = 500
MAX_LR = 1000.0

@dataclass
class TrainConfig:
    """Every setting of a training run: the command line's options and the Python API.

    A setting left at None takes, in this order: its value in the saved run (with
    --resume), the task's published value, or the default its help names.
    """
    task: str | None = option(None, f"{', '.join(TASKS)} (required)")
    model: str | None = option(None, "Hub id or local folder with config.json + model.safetensors (default "
                                     "t5-base); demo / demo-gpt2 / demo-llama for the embedded random demo models")
    tokenizer: str | None = option(None, "folder with the tokenizer files (default: the model folder)")
    method: str | None = option(None, "default dept", choices=METHODS)
    l: int | None = option(None, "vanilla prompt length: PT's length and everyone's budget l*d (default 100)")
    m: int | None = option(None, "short prompt length (default: the task's published m; PT: l)")
    r: int | None = option(None, "rank of DePT/EPT (bottleneck of ADePT); default: the largest within l*d")
    max_length: int | None = option(None, "s, the longest input in tokens (default: the task's, 256 mostly)")
    init: str | None = option(None, "prompt initialisation (default text, as the official runs: the embeddings "
                                    "of --init-text's tokens and end-of-sequence, cycled to the prompt's length)",
                              choices=INITS)
    init_text: str | None = option(None, f"the text of --init text (default {DEFAULT_INIT_TEXT!r}, sic)")
    init_from: str | None = option(None, "start from an adapter trained on another task (transfer): a file, "
                                         "a run folder, a PEFT prompt-tuning folder or a Hub repository owner/name",
                                   metavar="ADAPTER")
    batch_size: int | None = option(None, "examples per optimizer step, over all processes (default: the task's: "
                                          "32; MRQA and ReCoRD 16)")
    grad_accum: int | None = option(None, "split each process's share of a batch into K micro-batches, one "
                                          "backward each, one step: less memory, the same result (default 1)",
                                    metavar="K")
    group_by_length: bool | None = option(None, "batch training examples of similar length (less padding, "
                                                "faster; off in the paper's code)")
    max_steps: int | None = option(None, "default: the task's published number of steps")
    warmup_steps: int | None = option(None, f"default min({MAX_WARMUP}, max_steps // 10)")
    lr_prompt: float | None = option(None, "learning rate of the prompt (default: the task's)")
    lr_lowrank: float | None = option(None, "learning rate of A, B / the offset network (default: the task's)")
    eval_every: int | None = option(None, "evaluate on the validation split every N steps (default 1000)")
    save_every: int | None = option(None, "save the training state every N steps (default: --eval-every)")
    log_every: int | None = option(None, "write a training record to metrics.jsonl every N steps (default 10)")
    eval_batch_size: int | None = option(None, "default 64")
    max_eval_examples: int | None = option(None, "score at most N examples of the validation split and of the "
                                                 "test split too (quick runs; the counts are printed and saved)")
    k_shot: int | None = option(None, "train on K examples in all, as the official runs: one pass over the "
                                      "training split shuffled with --seed, taking an example while its class "
                                      "has fewer than K // C (C classes), or whatever its class once K - 1 are "
                                      "taken (STS-B: two classes, score <= 2.5 and above)", metavar="K")
    data_dir: str | None = option(None, "folder with the GLUE/SuperGLUE files (default: $MINIDEPT_DATA, else the Hub)")
    output_dir: str | None = option(None, "default runs/{task}-{method}-{model}-seed{seed}")
    seed: int | None = option(None, "seeds the prompt init, dropout and the data order (default 42)")
    device: str | None = option(None, "default auto", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str | None = option(None, "the frozen backbone's dtype (default float32; float16 on GPUs only); the "
                                     "adapter, its gradients, AdamW's state and the loss stay float32",
                               choices=tuple(DTYPES))
    activation_checkpointing: bool | None = option(None, "keep only each frozen block's input and recompute the "
                                                         "block in the backward pass: less memory, one more forward")
    # how to run, not what: never saved with the run
    resume: bool | None = option(None, "continue the run in --output-dir from its saved state; options not "
                                       "given are taken from its config.json")
    overwrite: bool | None = option(None, "start again in an --output-dir that holds a run")
    stop_at: int | None = option(None, "stop after this step and save the state (the schedule still follows "
                                       "--max-steps); continue with --resume", metavar="STEP")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")
    quiet: bool | None = option(None, "no progress bar")
    report_to: str | None = option(None, "also send metrics.jsonl's records to TensorBoard (RUN/tensorboard) or "
                                         "W&B; needs pip install 'minidept[tensorboard]' or 'minidept[wandb]'",
                                   choices=("tensorboard", "wandb"))


NOT_SAVED = ("resume", "overwrite", "stop_at", "threads", "quiet", "report_to")
# Settings that a resumed run must share with the saved one (the others may change, with a note).
FIXED_ON_RESUME = ("task", "model", "method", "l", "m", "r", "max_length", "init", "init_text", "init_from",
                   "batch_size", "group_by_length", "k_shot", "seed")


def command_line(settings: dict) -> list[str]:
    """The options of `python -m minidept.train` that give these settings (TrainConfig's fields; unset ones
    and false flags left out)."""
    argv = []
    for field in dataclasses.fields(TrainConfig):
        value = settings.get(field.name)
        if value is not None and value is not False:
            argv += [f"--{field.name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def setup(config: TrainConfig, log=print):
    """Resolve and check every setting, then load what the run needs; nothing is written.

    A setting left at None takes its value from the saved run (--resume), the task's
    published settings, or the default its help names. Mistakes raise a UsageError /
    DataError / CheckpointError; the model and the data are both tried first, so one
    message can name every missing piece (with no network: how to pass --model FOLDER
    and --data-dir). Returns (config with every setting filled in, prompted model,
    tokenizer, task, encoded splits, facts for config.json).
    """
    given, saved = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}, {}
    for attempt in ("given", "saved") if config.resume else ("given",):
        values = {**saved, **given}
        if "task" not in values:
            raise UsageError("--task is required (e.g. --task sst2, or --task demo --model demo)")
        try:
            task = get_task(values["task"])
        except ValueError as error:
            raise UsageError(str(error)) from None
        adapter = {}
        if "init_from" in values:    # transfer: the source adapter's shape is the default
            source = read_adapter(values["init_from"])
            adapter = adapter_settings(source[0], values["init_from"])
        method = values.get("method", adapter.get("method", "dept"))
        l = values.get("l", adapter.get("l", task.l))
        max_steps, eval_every = values.get("max_steps", task.max_steps), values.get("eval_every", 1000)
        model, seed = values.get("model", "t5-base"), values.get("seed", 42)
        defaults = dict(model=model, method=method, l=l, m=adapter.get("m", l if method == "pt" else task.m),
                        r=(adapter.get("r") or None) if adapter.get("method") == method else None,   # PT stores r=0
                        max_length=adapter.get("max_length", task.max_length), init="text", batch_size=task.batch_size,
                        grad_accum=1, dtype="float32", activation_checkpointing=False,
                        group_by_length=False, max_steps=max_steps, warmup_steps=min(MAX_WARMUP, max_steps // 10),
                        lr_prompt=task.lr_prompt, lr_lowrank=task.lr_lowrank, eval_every=eval_every,
                        save_every=eval_every, log_every=10, eval_batch_size=64, seed=seed, device="auto",
                        data_dir=None if task.make_splits else os.environ.get("MINIDEPT_DATA") or None,
                        output_dir=f"runs/{task.name}-{method}-{Path(str(model)).name}-seed{seed}",
                        resume=False, overwrite=False, quiet=False,
                        init_text=DEFAULT_INIT_TEXT if values.get("init", "text") == "text" else None)
        folder = Path(given.get("output_dir", defaults["output_dir"]))
        # with --resume the run folder's config.json supplies what is not given (a run killed before it
        # wrote config.json has neither it nor a state: it starts again from step 0)
        if attempt == "given" and config.resume and any((folder / f).is_file() for f in (CONFIG_FILE, STATE_FILE)):
            try:
                saved = {k: v for k, v in json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))["run"].items()
                         if v is not None}
            except (OSError, ValueError, KeyError) as error:
                raise UsageError(f"--resume: cannot read {folder / CONFIG_FILE} ({error})") from None
    config = dataclasses.replace(config, **{**defaults, **saved, **given, "task": task.name})
    for key in ("model", "tokenizer", "data_dir"):   # local folders by absolute path: the run works from anywhere
        if getattr(config, key) and Path(getattr(config, key)).expanduser().is_dir():
            config = dataclasses.replace(config, **{key: str(Path(getattr(config, key)).expanduser().resolve())})

    # Values argparse cannot check alone; each message names the value and the fix.
    for name in ("l", "max_length", "batch_size", "grad_accum", "max_steps", "eval_every", "save_every", "log_every",
                 "eval_batch_size", "r", "max_eval_examples", "k_shot", "stop_at", "threads", "m", "warmup_steps",
                 "seed"):
        value, least = getattr(config, name), 0 if name in ("m", "warmup_steps", "seed") else 1
        if value is not None and not least <= value < 2**63:   # torch's generators take 64-bit seeds
            raise UsageError(f"--{name.replace('_', '-')}={value}: must be "
                             + (f"at least {least}" if value < least else "below 2**63"))
    world = int(os.environ.get("WORLD_SIZE", 1))   # processes started by torchrun
    if config.batch_size < world * config.grad_accum:
        raise UsageError(f"--batch-size {config.batch_size} cannot give each of {world} process(es) "
                         f"--grad-accum {config.grad_accum} micro-batches of at least one example: raise "
                         "--batch-size or lower --grad-accum")
    if config.m > config.l:
        raise UsageError(f"--m={config.m} is larger than --l={config.l}: the short prompt must not be longer than "
                         f"the vanilla prompt whose budget it shares; lower --m or raise --l")
    if config.method == "pt" and (config.m != config.l or config.r is not None):
        raise UsageError(f"--method pt: PT's prompt has length --l={config.l} and no rank; set --l, leave out "
                         f"--m (got {config.m}) and --r (got {config.r})")
    for name in ("lr_prompt", "lr_lowrank"):
        if not 0 < getattr(config, name) <= MAX_LR:   # NaN fails too; larger rates overflow AdamW's float32 step
            raise UsageError(f"--{name.replace('_', '-')}={getattr(config, name)}: must be a number in (0, {MAX_LR}] "
                             "(the published rates are 0.3-0.5 for the prompt, 1e-4-5e-3 for the low-rank part)")
    if config.report_to:
        check_reporter(config.report_to)
    if config.init == "text" and not config.init_text:
        raise UsageError("--init text needs a non-empty --init-text (default "
                         f"{DEFAULT_INIT_TEXT!r})")
    out = Path(config.output_dir)
    existing = next(folder for folder in (out, *out.parents) if folder.exists())   # where the folder will be made
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {out}: {existing} is {'not writable' if existing.is_dir() else 'a file'}; "
                         "choose another --output-dir")
    if config.resume:
        differ = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {getattr(config, k)!r}"
                  for k in FIXED_ON_RESUME if k in saved and saved[k] != getattr(config, k)]
        if differ:
            raise UsageError(f"--resume: these settings differ from the saved run in {out}: {'; '.join(differ)}. "
                             "Resume with the same values, or start a new run in another --output-dir")
        for key in sorted(given.keys() - set(FIXED_ON_RESUME) - set(NOT_SAVED)):
            if saved.get(key) != given[key]:
                log(f"  note: --{key.replace('_', '-')} changed on resume: {saved.get(key)!r} -> {given[key]!r}")
    elif not config.overwrite and any((out / name).exists() for name in RUN_FILES):
        raise UsageError(f"--output-dir {out} already holds a run: " + (
            "continue it with the same command plus --resume" if (out / STATE_FILE).is_file() else
            "it saved no state yet, the same command plus --resume starts it again from step 0")
            + "; start it again with --overwrite, or choose another --output-dir")

    # Load the backbone and the data (both tried, so that one message names every missing piece).
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

    if config.init_from:   # the source adapter fits its own settings and this backbone (before anything is built)
        adapter_config(*source, backbone, config.init_from)
    init_text_ids, eos = None, backbone.config.eos_token_id
    if config.init == "text":   # the text's ids WITH end-of-sequence, as the official code (GPT-2's tokenizer adds none)
        ids = tokenizer.encode(config.init_text).ids
        init_text_ids = tuple(ids if ids[-1:] == [eos] else ids + [eos])
    backbone.activation_checkpointing = config.activation_checkpointing
    model = PromptedModel(backbone, PromptConfig(method=config.method, l=config.l, m=config.m, r=config.r,
                                                 max_length=config.max_length, init=config.init,
                                                 init_text_ids=init_text_ids, seed=config.seed))
    if config.init_from:   # transfer: every tensor of the source adapter, names and shapes equal
        copy_into(model.adapter_state_dict(), source[1],
                  f"--init-from {config.init_from}", hint="use the --method, --l, --m, --r and --max-length "
                                                          "of the source run")
    data, truncated = {}, {}
    for split, examples in splits.items():
        data[split], truncated[split] = encode_examples(task, examples, tokenizer, config.max_length,
                                                        not backbone.is_encoder_decoder, model.eos_id)
    if not data["train"] or not data["validation"]:
        raise UsageError(f"task {task.name}: the train and validation splits must not be empty")
    config = dataclasses.replace(config, r=model.config.r if config.method != "pt" else None)
    facts = {"model_type": backbone.model_type, "d_model": backbone.d_model,
             "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
             "budget_l_times_d": config.l * backbone.d_model, "prompt_config": dataclasses.asdict(model.config),
             "examples": {k: len(v) for k, v in data.items()}, "truncated": truncated,
             "device": str(model.prompt.P.device), "world_size": world, "torch": torch.__version__}
    return config, model, tokenizer, task, data, facts


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rates for update number `step` (0-based).

    As the official runs (transformers' linear schedule): `step / warmup_steps` during
    the warmup, so the first update has learning rate 0, then linear decay that would
    reach 0 at `max_steps` (the last update gets 1/(max - warmup)).
    """
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


def _clean(value):
    """JSON-safe numbers: NaN / inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #

def train(config: TrainConfig, log=print) -> dict:
    """Train the method of `config` and write the run folder; return the results.

    "status" is "done" (results.json written), "stopped" (--stop-at), "interrupted"
    (Ctrl-C or SIGTERM; the state is saved) or "diverged" (a non-finite loss).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))   # torchrun: this many processes, each with a part of every batch
    rank = distributed.start(config.device) if world > 1 else 0
    log = log if rank == 0 else lambda *_: None    # rank 0 alone prints, logs and writes the run's files
    config, model, tokenizer, task, data, facts = setup(config, log)
    if world > 1:
        torch.distributed.barrier()   # every rank has checked the run folder before rank 0 writes to it
    out, metric = Path(config.output_dir), task.metrics[0]
    evaluate_split = evaluate if world == 1 else distributed.evaluate   # torchrun: split across the ranks
    with folder_lock(out, rank):   # one run per folder (torchrun: one lock file a rank)
        if config.threads:
            torch.set_num_threads(config.threads)
        run = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SAVED}
        show_settings(run, facts, task, log)
        for name in RUN_FILES if rank == 0 else ():   # what writes a kill interrupted left (atomic_write's .tmp)
            for tmp in out.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        device = model.prompt.P.device
        rows = data["train"]
        lengths = [len(row["input_ids"]) for row in rows] if config.group_by_length else None
        optimizer = torch.optim.AdamW(model.param_groups(config.lr_prompt, config.lr_lowrank), betas=BETAS, eps=EPS,
                                      weight_decay=WEIGHT_DECAY)
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        per_epoch = -(-len(rows) // config.batch_size)   # batches an epoch, the last one partial (as the official runs)
        # --grad-accum K: K micro-batches per step. Each one's mean loss is weighted by its share of the
        # batch's labelled tokens, so their gradients add up to that of the batch's mean loss (a mean of
        # K means would weigh the tokens of short micro-batches more).
        # torchrun: each rank takes K of the batch's world * K micro-batches, weighted the same way.
        K = config.grad_accum
        labelled = [sum(t != IGNORE_INDEX for t in row["labels"]) for row in rows] if K * world > 1 else None

        # Everything besides tensors that a resumed run needs to carry on exactly.
        progress = dict(step=0, best=None, best_step=None, best_scores=None, loss_sum=0.0, loss_count=0,
                        train_seconds=0.0, elapsed=0.0)
        if config.resume and (out / STATE_FILE).is_file():
            progress, rng = load_state(out / STATE_FILE, model.adapter_state_dict(), optimizer, progress.keys())
            if progress["best_step"] is not None and not (out / ADAPTER_FILE).is_file():
                raise CheckpointError(f"{out / ADAPTER_FILE} is missing, but the state saved at step "
                                      f"{progress['step']} says the best adapter was saved at step "
                                      f"{progress['best_step']}: put the file back, or start again with --overwrite")
            suffix = f".{rank}" if rank else ""   # torchrun: each rank's own generators (rank 0's if not saved)
            torch.set_rng_state(rng.get("cpu" + suffix, rng["cpu"]))
            if device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng.get("cuda" + suffix, rng["cuda"]), device)
            records = log_records_until(out / LOG_FILE, progress["step"]) if rank == 0 else []   # later ones come again
            log(f"resumed from step {progress['step']} " + (f"(best {metric} {progress['best']:.2f} at step "
                                                             f"{progress['best_step']})" if progress["best_step"]
                                                             else "(not evaluated yet)"))
        else:   # a new run, or a resumed one that had saved no state yet: from step 0, nothing of before kept
            if config.resume:
                log(f"no state saved in {out} yet: starting from step 0")
            for name in (ADAPTER_FILE, STATE_FILE, RESULTS_FILE) if rank == 0 else ():
                (out / name).unlink(missing_ok=True)
            torch.manual_seed(config.seed + rank)   # dropout; the prompt init and the data order have their own seeds
            records = []
        if rank == 0:
            atomic_write(out / CONFIG_FILE, json.dumps({"run": run, **facts}, indent=2, sort_keys=True).encode())
            atomic_write(out / LOG_FILE, "".join(line + "\n" for line in records).encode())
        # metrics.jsonl, whose records also go to TensorBoard / W&B with --report-to (reopened for the test record)
        open_log = lambda: (open(os.devnull, "a") if rank else  # noqa: E731
                            MetricsLog(out / LOG_FILE, config.report_to, run) if config.report_to
                            else open(out / LOG_FILE, "a", encoding="utf-8"))
        log_file = open_log()
        step, stop = progress["step"], config.stop_at or config.max_steps
        started, elapsed_before = time.perf_counter(), progress["elapsed"]
        last_log = (progress["train_seconds"], step)
        epoch_batches = (None, [])   # (epoch, its batches): drawn once an epoch

        # Ctrl-C and SIGTERM ask the loop to stop at the next step boundary, where the state is saved
        # (signal handlers belong to the main thread; elsewhere, a signal stops the process as usual).
        # torchrun: a rank's signal is only a request (`asked`); the ranks agree on the step to stop at in
        # the all-reduce of the gradients.
        interrupted, asked, handlers = [], [], {}
        flag = interrupted if world == 1 else asked
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, lambda *_: flag.append(True)) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=config.max_steps, initial=step, disable=config.quiet or rank > 0,
                   desc=f"{config.method} {task.name}",
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        model.train()   # dropout on (the backbone's too: T5 trains with dropout 0.1)
        try:
            while step < stop and not interrupted:
                t0 = time.perf_counter()
                epoch, i = divmod(step, per_epoch)   # the batch depends on (seed, step) only: resume is exact
                if epoch_batches[0] != epoch:
                    epoch_batches = (epoch, batches(len(rows), config.batch_size, config.seed, epoch, lengths=lengths))
                indices = epoch_batches[1][i]
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * lr_factor(step, config.warmup_steps, config.max_steps)
                optimizer.zero_grad(set_to_none=True)
                # --grad-accum: K micro-batches (fewer when an epoch's last, partial batch has fewer rows)
                parts = [indices] if labelled is None else \
                    [part.tolist() for part in np.array_split(indices, world * K)[rank * K:(rank + 1) * K] if len(part)]
                total = sum(labelled[j] for j in indices) if labelled is not None else None   # labelled tokens
                loss = 0.0
                for part in parts:   # one micro-batch, unless --grad-accum
                    batch = collate([rows[j] for j in part], model.pad_id)
                    part_loss = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      labels=batch["labels"].to(device))
                    if labelled is not None:
                        part_loss = part_loss * (sum(labelled[j] for j in part) / total)
                    part_loss.backward()
                    loss += part_loss.detach()
                if world > 1:   # the ranks' gradients, losses and stop requests summed, in one all-reduce
                    loss, stop_asked = distributed.all_reduce(params, loss, bool(asked))
                    if stop_asked:
                        interrupted.append(True)
                grad_norm, loss = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM).item(), float(loss)
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    bar.close()
                    log(f"stopped: non-finite loss {loss}, gradient norm {grad_norm} at step {step + 1}; nothing "
                        f"was saved from this step. {after_divergence(out, model)}")
                    return {"status": "diverged", "step": step}
                optimizer.step()
                step += 1
                progress["loss_sum"] += loss
                progress["loss_count"] += 1
                progress["train_seconds"] += time.perf_counter() - t0
                elapsed = elapsed_before + time.perf_counter() - started

                if step % config.log_every == 0 or step == stop:
                    mean_loss = progress["loss_sum"] / progress["loss_count"]
                    speed = (step - last_log[1]) / max(1e-9, progress["train_seconds"] - last_log[0])
                    last_log = (progress["train_seconds"], step)
                    progress.update(loss_sum=0.0, loss_count=0)
                    lrs = {f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups}
                    log_file.write(json.dumps(_clean({"step": step, "loss": mean_loss, **lrs, "grad_norm": grad_norm,
                                                      "steps_per_s": round(speed, 3), "elapsed": round(elapsed, 3)})) + "\n")
                    log_file.flush()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                bar.update(1)
                if step % config.eval_every == 0 or step == config.max_steps:
                    scores = evaluate_split(model, data["validation"], task, tokenizer, config.eval_batch_size)
                    best = progress["best"]
                    improved = best is None or (not math.isnan(scores[metric]) and (math.isnan(best) or scores[metric] > best))
                    if improved:
                        if rank == 0:
                            save_adapter(model, out / ADAPTER_FILE)
                        progress.update(best=scores[metric], best_step=step, best_scores=_clean(scores))
                    log_file.write(json.dumps(_clean({"step": step, "split": "validation", **scores,
                                                      "examples": len(data["validation"]), "best": progress["best"],
                                                      "elapsed": round(elapsed, 3)})) + "\n")
                    log_file.flush()
                    (log if config.quiet or rank else bar.write)(
                        f"step {step:>6}  validation {', '.join(f'{k} {v:.2f}' for k, v in scores.items())} "
                        f"on {len(data['validation'])} examples" + ("  (best so far, adapter saved)" if improved else ""))
                if step % config.save_every == 0 or step == stop or interrupted:
                    rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(device)}
                                                             if device.type == "cuda" else {})}
                    if world > 1:
                        rng = distributed.gather_rng(rng, device)
                    progress.update(step=step, elapsed=elapsed_before + time.perf_counter() - started)
                    if rank == 0:
                        os.fsync(log_file.fileno())   # the log reaches the saved step, whatever happens next
                        save_state(out / STATE_FILE, model.adapter_state_dict(), optimizer, progress, rng)
        finally:
            bar.close()
            log_file.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if interrupted:
            log(f"interrupted: state saved at step {step} in {out / STATE_FILE}; continue with the same command "
                "plus --resume")
            return {"status": "interrupted", "step": step}
        if step < config.max_steps:
            log(f"stopped at step {step} as asked (--stop-at); continue with the same command plus --resume")
            return {"status": "stopped", "step": step}

        # The end: the best adapter on the test split.
        if world > 1:
            torch.distributed.barrier()   # rank 0 has written the best adapter
        load_adapter_into(model, out / ADAPTER_FILE)
        test = evaluate_split(model, data["test"], task, tokenizer, config.eval_batch_size) if data["test"] else {}
        seconds = progress["train_seconds"]
        results = {"status": "done", "task": task.name, "method": config.method, "steps": step,
                   "best_step": progress["best_step"], "validation": progress.get("best_scores"), "test": test,
                   "examples": {split: len(data[split]) for split in ("validation", "test")},
                   "trainable_parameters": facts["trainable_parameters"], "train_seconds": round(seconds, 3),
                   "steps_per_s": round(step / seconds, 3) if seconds else None,
                   "elapsed": round(elapsed_before + time.perf_counter() - started, 3)}
        if rank == 0:
            write_json(out / RESULTS_FILE, _clean(results))
        with open_log() as handle:
            handle.write(json.dumps(_clean({"step": step, "split": "test", **test, "examples": len(data["test"]),
                                            "best_step": progress["best_step"]})) + "\n")
        log(f"best validation {metric} {progress['best']:.2f} at step {progress['best_step']} on "
            f"{len(data['validation'])} examples; test " + ", ".join(f"{k} {v:.2f}" for k, v in test.items())
            + f" on {len(data['test'])} examples")
        return results


@contextlib.contextmanager
def folder_lock(out: Path, rank: int = 0):
    """One run per folder: an advisory lock on OUT/.lock, which names our process, while the block runs. The
    system drops it when the process ends, however it ends (fcntl is POSIX: no lock on Windows). Under
    torchrun each process locks its own file, .lock.RANK."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / (LOCK_FILE + (f".{rank}" if rank else "")), "a+", encoding="utf-8") as lock:
        try:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise UsageError(f"--output-dir {out} is in use by another run (process {holder}): wait for it to end, "
                             "or choose another --output-dir") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


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


def log_records_until(path: Path, step: int) -> list[str]:
    """The lines of metrics.jsonl that a run resumed at `step` keeps: the records up to that step, without
    the final test record. A last line cut short (a full disk, a kill while it was written) is dropped:
    the saved state says the log reached `step`, and the records after it come again."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if record["step"] <= step and record.get("split") != "test":
                kept.append(line)
        except (ValueError, KeyError, TypeError) as error:
            if number < len(lines):
                raise CheckpointError(f"{path} line {number} is not a training record ({error}): delete that "
                                      "line, or start again with --overwrite") from None
    return kept


def after_divergence(out: Path, model: PromptedModel) -> str:
    """What a diverged run leaves and what to do next: resume from the saved state with lower rates, or
    start again when nothing was saved or when the saved parameters are themselves far off (non-finite, or
    over 1000 times the largest value of the backbone's embeddings, the prompt's natural scale)."""
    lower = "lower --lr-prompt / --lr-lowrank"
    if not (out / STATE_FILE).is_file():
        return f"No state was saved yet: start again with {lower} (and --overwrite)"
    metadata, tensors = read_safetensors(out / STATE_FILE)
    progress = json.loads(metadata["progress"])
    saved = torch.cat([t.flatten().float() for name, t in tensors.items() if name.startswith("param.")])
    largest, scale = saved.abs().max().item(), model.backbone.get_input_embeddings().weight.abs().max().item()
    kept = f"{out / STATE_FILE} holds step {progress['step']}" + (
        f" and {out / ADAPTER_FILE} the best adapter (step {progress['best_step']})"
        if progress["best_step"] is not None and (out / ADAPTER_FILE).is_file() else "")
    if not math.isfinite(largest) or largest > 1000 * scale:
        return (f"{kept}, but its parameters are far off themselves (largest |value| {largest:.3g}, the "
                f"embeddings' {scale:.3g}): resuming would diverge again. Start again with {lower} (and --overwrite)")
    return f"{kept}: continue from it with the same command plus --resume, with {lower}"


def main(argv: list[str] | None = None) -> int:
    prog = "python -m minidept.train"
    try:
        config = parse(TrainConfig, argv, prog, __doc__.split("\n\n")[0])
        results = train(config)
        if torch.distributed.is_initialized():   # torchrun: every process has finished before any leaves the group
            torch.distributed.barrier()
    except SystemExit as exit:   # --help, or a bad option already reported
        return exit.code
    except (ValueError, KeyboardInterrupt) as error:  # a user's mistake, or Ctrl-C before the loop: one line
        return fail(prog, error)
    finally:
        if torch.distributed.is_initialized():   # torchrun
            torch.distributed.destroy_process_group()
    return {"done": 0, "stopped": 0, "interrupted": 130, "diverged": 1}[results["status"]]


if __name__ == "__main__":
    sys.exit(main())
