"""Train a prompt on a frozen T5 or GPT-2: `python -m minidept.train --task sst2`.

One plain loop (nanoGPT style): get a batch, forward, loss, backward, clip the
gradient norm to 1.0, AdamW step, set the learning rate, and every
`--eval-every` steps decode the validation split greedily, score it with the
task's metrics and keep the best adapter (by the task's first metric). At the
end the best adapter is scored on the test split.

Settings (methods.md section 5, the official DePT runs): AdamW with betas
(0.9, 0.999), eps 1e-6, weight decay 0, two parameter groups (the prompt at
`--lr-prompt`, the low-rank / offset parameters at `--lr-lowrank`); linear
warmup then linear decay to 0 at `--max-steps`; batch 32; seed 42. The
per-task defaults (m, learning rates, steps, max length) are the published
settings in `minidept.tasks`; `r` defaults to the largest rank within PT's
budget of l*d parameters. Warmup is 500 steps, capped at a tenth of
`--max-steps` so that short runs still spend most steps at full rate.

Files in `--output-dir`:
    config.json            every resolved setting of the run (printed at start too)
    metrics.jsonl          one JSON object a line: training records (step, loss, learning
                           rates, gradient norm, speed, elapsed) and evaluation records
    adapter.safetensors    the best adapter so far (PromptedModel.save_adapter)
    state.safetensors      the training state for --resume (see below)
    results.json           best validation metrics and the test metrics of the best adapter

Faults lose nothing. Every file is written atomically. The training state is
one safetensors file: the current trainable tensors, AdamW's moment tensors and
the random number generator state, with the step, the best score so far and
the loss accumulators as JSON in its metadata (nothing is pickled). The data
order depends only on (seed, step) (`data.train_batch`) and the learning rate
is a function of the step, so `--resume` continues with exactly the losses the
run would have had. A non-finite loss stops the run and keeps the last saved
state; Ctrl-C saves the state first.

`python -m minidept.train --task demo --model demo` runs on the embedded demo
(`minidept.demo`): nothing to download.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from .demo import DEMO_L
from .data import DataError, collate, decode_predictions, encode_examples, k_shot, load_splits, special_ids, \
    train_batch
from .io import CheckpointError, resolve_model_dir, save_tensors, write_bytes, write_json
from .prompts import METHODS, PromptConfig, PromptedModel, read_adapter
from .tasks import Task, get_task, score

CONFIG_FILE, LOG_FILE, ADAPTER_FILE = "config.json", "metrics.jsonl", "adapter.safetensors"
STATE_FILE, RESULTS_FILE = "state.safetensors", "results.json"
RUN_FILES = (CONFIG_FILE, LOG_FILE, ADAPTER_FILE, STATE_FILE, RESULTS_FILE)
STATE_FORMAT = "minidept-train-state-1"

# AdamW as the official DePT runs (methods.md section 5; the paper's table says betas (0.9, 0.98), wd 0.01).
BETAS, EPS, WEIGHT_DECAY, CLIP_NORM = (0.9, 0.999), 1e-6, 0.0, 1.0
MAX_WARMUP = 500


class UsageError(ValueError):
    """A bad option or input: reported as one line on stderr, exit code 2, nothing written."""


# --------------------------------------------------------------------------- #
# Options
# --------------------------------------------------------------------------- #

class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (and exit code 2), used by every minidept script."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    p = Parser(prog="python -m minidept.train", description=__doc__.split("\n\n")[0])
    # Options left at None get their value in `resolve_run`: from the task's published
    # settings, the model's width, the saved run (--resume), or a plain default.
    a = p.add_argument
    a("--task", help="sst2, cola, mrpc, qqp, stsb, mnli, qnli, rte, boolq, cb, multirc, wic, wsc, or demo")
    a("--model", help="Hub id or local folder with config.json + model.safetensors (default t5-base); "
                      "'demo' / 'demo-gpt2' for the embedded random demo models")
    a("--tokenizer", help="folder with the tokenizer files (default: the model folder)")
    a("--method", choices=METHODS, help="default dept")
    a("--l", type=int, help="vanilla prompt length: PT's length and everyone's budget l*d (default 100)")
    a("--m", type=int, help="short prompt length (default: the task's published m; PT: l)")
    a("--r", type=int, help="rank of DePT/EPT (bottleneck of ADePT); default: the largest within l*d")
    a("--max-length", type=int, help="s, the longest input in tokens (default: the task's, 256 mostly)")
    a("--init", choices=("vocab", "text", "random"), help="prompt initialisation (default vocab)")
    a("--init-text", help="text whose embeddings initialise the prompt with --init text")
    a("--init-from", metavar="ADAPTER", help="start from an adapter trained on another task (transfer)")
    a("--batch-size", type=int, help="default 32")
    a("--group-by-length", action="store_true", default=None,
      help="batch training examples of similar length (less padding, faster; off in the paper's code)")
    a("--max-steps", type=int, help="default: the task's published number of steps")
    a("--warmup-steps", type=int, help=f"default min({MAX_WARMUP}, max_steps // 10)")
    a("--lr-prompt", type=float, help="learning rate of the prompt (default: the task's)")
    a("--lr-lowrank", type=float, help="learning rate of A, B / the offset network (default: the task's)")
    a("--eval-every", type=int, help="evaluate on the validation split every N steps (default 1000)")
    a("--save-every", type=int, help="save the training state every N steps (default: --eval-every)")
    a("--log-every", type=int, help="write a training record to metrics.jsonl every N steps (default 10)")
    a("--eval-batch-size", type=int, help="default 64")
    a("--max-eval-examples", type=int, help="evaluate on at most N examples of each split (quick runs)")
    a("--k-shot", type=int, help="train on K examples per class, drawn with --seed")
    a("--data-dir", help="folder with the GLUE/SuperGLUE files (default: $MINIDEPT_DATA, else the Hub)")
    a("--output-dir", help="default runs/{task}-{method}-{model}-seed{seed}")
    a("--seed", type=int, help="seeds the prompt init, dropout and the data order (default 42)")
    a("--device", choices=("auto", "cpu", "cuda", "mps"), help="default auto")
    a("--resume", action="store_true", help="continue the run in --output-dir from its saved state; "
                                            "options not given are taken from its config.json")
    a("--overwrite", action="store_true", help="start again in an --output-dir that holds a run")
    a("--stop-at", type=int, metavar="STEP", help="stop after this step and save the state (the schedule "
                                                  "still follows --max-steps); continue with --resume")
    a("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    a("--quiet", action="store_true", help="no progress bar")
    return p


@dataclass(frozen=True)
class Run:
    """Every setting of one training run, resolved; saved as config.json."""
    task: str
    model: str
    tokenizer: str | None
    method: str
    l: int
    m: int
    r: int | None            # None until the model's width is known (then the budget's r)
    max_length: int
    init: str
    init_text: str | None
    init_from: str | None
    batch_size: int
    max_steps: int
    warmup_steps: int
    lr_prompt: float
    lr_lowrank: float
    eval_every: int
    save_every: int
    log_every: int
    eval_batch_size: int
    max_eval_examples: int | None
    k_shot: int | None
    data_dir: str | None
    output_dir: str
    seed: int
    device: str
    group_by_length: bool = False
    stop_at: int | None = None


RUN_FIELDS = {field.name for field in dataclasses.fields(Run)}

# Settings that a resumed run must share with the saved one (the rest may change, with a note).
FIXED_ON_RESUME = ("task", "model", "method", "l", "m", "r", "max_length", "init", "init_text", "init_from",
                   "batch_size", "group_by_length", "k_shot", "seed")


def _task(name: str) -> Task:
    if name == "demo":
        from .demo import DEMO_TASK
        return DEMO_TASK
    try:
        return get_task(name)
    except ValueError as error:
        raise UsageError(f"{error} (or demo)") from None


def resolve_run(args: argparse.Namespace, saved: dict | None = None) -> Run:
    """Fill every option left unset: saved run (when resuming) > task settings > defaults. Checks values."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in RUN_FIELDS}
    saved = saved or {}

    def pick(name, default):
        return given.get(name, saved.get(name, default))

    name = pick("task", None)
    if name is None:
        raise UsageError("--task is required (e.g. --task sst2, or --task demo --model demo)")
    task = _task(name)
    adapter = _adapter_config(given["init_from"]) if "init_from" in given else {}
    method = pick("method", adapter.get("method", "dept"))
    l = pick("l", adapter.get("l", DEMO_L if task.name == "demo" else 100))
    m = pick("m", adapter.get("m", l if method == "pt" else task.m))
    r = pick("r", (adapter.get("r") or None) if adapter.get("method") == method else None)   # PT stores r=0
    max_steps = pick("max_steps", task.max_steps)
    eval_every = pick("eval_every", 1000)
    model = pick("model", "t5-base")
    seed = pick("seed", 42)
    run = Run(
        task=task.name, model=str(model), tokenizer=pick("tokenizer", None), method=method, l=l, m=m, r=r,
        max_length=pick("max_length", adapter.get("max_length", task.max_length)),
        init=pick("init", "vocab"), init_text=pick("init_text", None), init_from=pick("init_from", None),
        batch_size=pick("batch_size", 32), max_steps=max_steps,
        warmup_steps=pick("warmup_steps", min(MAX_WARMUP, max_steps // 10)),
        lr_prompt=pick("lr_prompt", task.lr_prompt), lr_lowrank=pick("lr_lowrank", task.lr_lowrank),
        eval_every=eval_every, save_every=pick("save_every", eval_every), log_every=pick("log_every", 10),
        eval_batch_size=pick("eval_batch_size", 64), max_eval_examples=pick("max_eval_examples", None),
        k_shot=pick("k_shot", None), data_dir=pick("data_dir", None),
        output_dir=str(pick("output_dir", f"runs/{task.name}-{method}-{Path(str(model)).name}-seed{seed}")),
        seed=seed, device=pick("device", "auto"), group_by_length=bool(pick("group_by_length", False)),
        stop_at=given.get("stop_at"))
    _check(run)
    return run


def _check(run: Run) -> None:
    """Values argparse cannot check alone; each message names the value and the fix."""
    positive = ("l", "max_length", "batch_size", "max_steps", "eval_every", "save_every", "log_every",
                "eval_batch_size")
    for name in positive:
        if getattr(run, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(run, name)}: must be at least 1")
    for name in ("m", "warmup_steps"):
        if getattr(run, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(run, name)}: must not be negative")
    for name in ("r", "max_eval_examples", "k_shot", "stop_at"):
        if getattr(run, name) is not None and getattr(run, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(run, name)}: must be at least 1")
    if run.m > run.l:
        raise UsageError(f"--m={run.m} is larger than --l={run.l}: the short prompt must not be longer than "
                         f"the vanilla prompt whose budget it shares; lower --m or raise --l")
    if run.method == "pt" and run.m != run.l:
        raise UsageError(f"--m={run.m} with --method pt: PT's prompt has length --l={run.l}; set --l instead")
    if run.method == "pt" and run.r is not None:
        raise UsageError(f"--r={run.r} with --method pt: PT has no rank; leave --r out")
    for name in ("lr_prompt", "lr_lowrank"):
        if not (math.isfinite(getattr(run, name)) and getattr(run, name) > 0):
            raise UsageError(f"--{name.replace('_', '-')}={getattr(run, name)}: must be a positive number")
    if run.init == "text" and not run.init_text:
        raise UsageError("--init text needs --init-text 'some words' (the official code uses "
                         "'Classify this text is postive or not:')")
    if run.stop_at is not None and run.stop_at > run.max_steps:
        raise UsageError(f"--stop-at={run.stop_at} is after --max-steps={run.max_steps}")


def _adapter_config(path: str) -> dict:
    """The PromptConfig stored in an adapter file (for --init-from defaults)."""
    try:
        metadata, _ = read_adapter(path)
    except CheckpointError as error:
        raise UsageError(f"--init-from: {error}") from None
    return {**json.loads(metadata["config"]), "model_type": metadata["model_type"]}


# --------------------------------------------------------------------------- #
# Setup: model, tokenizer, data
# --------------------------------------------------------------------------- #

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available[name]:
        raise UsageError(f"--device {name} is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def load_backbone(name: str, tokenizer_name: str | None = None):
    """(frozen backbone in eval mode, tokenizer) for a Hub id, a local folder, or a demo model name."""
    from . import demo, load_model, load_tokenizer

    if name in demo.DEMO_MODELS and not Path(name).is_dir():   # a folder called "demo" still wins
        return demo.build_model(name), demo.byte_tokenizer(demo.DEMO_MODELS[name])
    folder = resolve_model_dir(name)
    return load_model(folder), load_tokenizer(tokenizer_name or folder)


def model_type_of(backbone) -> str:
    from .t5 import T5
    return "t5" if isinstance(backbone, T5) else "gpt2"


def answer_tokens(task: Task, tokenizer, model_type: str) -> int:
    """How many tokens greedy decoding may write: the longest possible target, plus end-of-sequence.

    Computed from the task's possible targets ("0", "1", ...; STS-B "0.0" to "5.0"),
    never from the references, so evaluation cannot peek at the answers.
    """
    targets = task.targets if task.num_classes else [f"{i / 10:.1f}" for i in range(51)]
    lengths = [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in targets]
    return max(lengths) + 1


def load_data(run: Run, task: Task) -> dict[str, list[dict]]:
    """The task's splits as example dicts (k-shot training set and eval caps applied)."""
    if task.name == "demo":
        from .demo import make_splits
        splits = make_splits()
    else:
        splits = load_splits(task, run.data_dir)
    if run.k_shot:
        try:
            splits["train"] = k_shot(splits["train"], run.k_shot, run.seed)
        except ValueError as error:
            raise UsageError(f"--k-shot {run.k_shot}: {error}") from None
    if run.max_eval_examples:
        for split in ("validation", "test"):
            splits[split] = splits[split][:run.max_eval_examples]
    return splits


def build_model(run: Run, backbone, tokenizer) -> PromptedModel:
    """The method in front of the frozen backbone; --init-from copies a trained adapter's tensors in."""
    init_text_ids = None
    if run.init == "text":
        init_text_ids = tuple(tokenizer.encode(run.init_text, add_special_tokens=False).ids)
    config = PromptConfig(method=run.method, l=run.l, m=run.m, r=run.r, max_length=run.max_length,
                          init=run.init, init_text_ids=init_text_ids, seed=run.seed)
    model = PromptedModel(backbone, config)
    if run.init_from:
        _copy_adapter(model, run.init_from)
    return model


def _copy_adapter(model: PromptedModel, path: str) -> None:
    """Transfer: copy every tensor of an adapter trained on another task (names and shapes must match)."""
    metadata, tensors = read_adapter(path)
    if metadata["model_type"] != model.model_type:
        raise UsageError(f"--init-from {path} was trained on {metadata['model_type']}, this model is "
                         f"{model.model_type}")
    own = model.adapter_state_dict()
    problems = [f"{n} missing" for n in own if n not in tensors]
    problems += [f"{n}: {tuple(tensors[n].shape)} in the file, {tuple(p.shape)} here"
                 for n, p in own.items() if n in tensors and tensors[n].shape != p.shape]
    if problems:
        raise UsageError(f"--init-from {path} does not fit this run ({'; '.join(problems)}): use the same "
                         "--method, --l, --m, --r and --max-length as the source run")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(tensors[name])


def prepare(run: Run, log=print):
    """Load everything a run needs, or raise UsageError / DataError / CheckpointError before any write.

    Returns (model on its device, tokenizer, task, encoded splits, truncation counts).
    The model and the data are both tried, so one message can name every missing piece
    (with no network: how to pass --model FOLDER and --data-dir / MINIDEPT_DATA).
    """
    task = _task(run.task)
    device = pick_device(run.device)
    errors, backbone, tokenizer, splits = [], None, None, None
    try:
        backbone, tokenizer = load_backbone(run.model, run.tokenizer)
    except (CheckpointError, ValueError) as error:
        errors.append(str(error))
    try:
        splits = load_data(run, task)
    except (DataError, ValueError) as error:
        errors.append(str(error))
    if errors:
        raise UsageError("\nalso: ".join(errors))
    model_type = model_type_of(backbone)
    try:
        special_ids(tokenizer, model_type)
        model = build_model(run, backbone.to(device), tokenizer)
        data, truncated = {}, {}
        for split, examples in splits.items():
            data[split], truncated[split] = encode_examples(task, examples, tokenizer, model_type, run.max_length)
    except (CheckpointError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not data["train"] or not data["validation"]:
        raise UsageError(f"task {task.name}: the train and validation splits must not be empty")
    return model, tokenizer, task, data, truncated


# --------------------------------------------------------------------------- #
# Learning rate, evaluation
# --------------------------------------------------------------------------- #

def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rates for update number `step` (0-based).

    Linear warmup from 1/warmup to 1 over the first `warmup_steps` updates, then
    linear decay that would reach 0 at `max_steps` (the last update gets 1/(max - warmup)).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


@torch.no_grad()
def predict(model: PromptedModel, rows: list[dict], tokenizer, max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy predictions (stripped strings) for encoded rows, in their order.

    Rows are batched by length (less padding) and the predictions put back in place.
    GPT-2 generates from the source + cue alone (`prompt_ids`), never seeing the answer.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = special_ids(tokenizer, model.model_type)["pad"]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    predictions = [""] * len(rows)
    for start in range(0, len(rows), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate([rows[i] for i in chunk], pad, model.model_type)
        if model.model_type == "t5":
            ids, mask, n_new = batch["input_ids"], batch["attention_mask"], max_new_tokens
        else:  # room left in the s positions of DePT's offset table
            ids, mask = batch["prompt_ids"], batch["prompt_mask"]
            n_new = min(max_new_tokens, model.config.max_length - ids.shape[1])
        generated = model.generate(ids.to(device), mask.to(device), max_new_tokens=n_new)
        for i, text in zip(chunk, decode_predictions(tokenizer, generated, model.model_type)):
            predictions[i] = text
    model.train(was_training)
    return predictions


def evaluate(model: PromptedModel, rows: list[dict], task: Task, tokenizer, batch_size: int = 64) -> dict[str, float]:
    """The task's metrics (percent) of greedy predictions on encoded rows."""
    predictions = predict(model, rows, tokenizer, answer_tokens(task, tokenizer, model.model_type), batch_size)
    return score(task, predictions, [row["target"] for row in rows])


def batch_loss(model: PromptedModel, rows: list[dict], tokenizer) -> float:
    """Mean loss on `rows` in eval mode (no dropout): a fixed yardstick, e.g. for tests."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = collate(rows, special_ids(tokenizer, model.model_type)["pad"], model.model_type)
    with torch.no_grad():
        loss = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                     labels=batch["labels"].to(device))
    model.train(was_training)
    return loss.item()


# --------------------------------------------------------------------------- #
# Training state: safetensors tensors + JSON metadata, never a pickle
# --------------------------------------------------------------------------- #

def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def save_state(path: Path, model: PromptedModel, optimizer: torch.optim.Optimizer, progress: dict,
               rng: dict[str, torch.Tensor]) -> None:
    """One safetensors file, written atomically: parameters, AdamW moments, RNG; `progress` as JSON."""
    tensors = {f"param.{name}": p for name, p in model.adapter_state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():   # AdamW: step, exp_avg, exp_avg_sq, all tensors
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"rng.{name}": t for name, t in rng.items()})
    save_tensors(tensors, path, {"format": STATE_FORMAT, "progress": json.dumps(progress)})


def load_state(path: Path, model: PromptedModel, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore parameters and optimizer from `save_state`'s file; return (progress, rng state)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:
        raise CheckpointError(f"{path} could not be read ({error}); it may be truncated") from error
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a minidept training state (format={metadata.get('format')!r})")
    own = model.adapter_state_dict()
    saved = {name[len("param."):]: t for name, t in tensors.items() if name.startswith("param.")}
    if set(saved) != set(own) or any(saved[n].shape != p.shape for n, p in own.items()):
        raise CheckpointError(f"{path} holds {sorted(saved)} and does not fit this model ({sorted(own)})")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(saved[name])
    moments: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            moments.setdefault(int(index), {})[key] = t
    # The hyper-parameters (param_groups) come from this run's options; only the moments are restored.
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    rng = {name[len("rng."):]: t for name, t in tensors.items() if name.startswith("rng.")}
    return json.loads(metadata["progress"]), rng


def _clean(value):
    """JSON-safe numbers: NaN / inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _better(value: float, best: float | None) -> bool:
    if best is None:
        return True
    return not math.isnan(value) and (math.isnan(best) or value > best)


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #

class NonFiniteLoss(RuntimeError):
    pass


def train(run: Run, model: PromptedModel, tokenizer, task: Task, data: dict[str, list[dict]],
          resume: bool = False, quiet: bool = False, log=print, truncated: dict | None = None) -> dict:
    """Train `model` (its trainable tensors) on `data["train"]`; write the run files in run.output_dir.

    The run's config.json is written here (so `evaluate` and `predict` can open a run
    folder trained from Python too); `truncated` (split -> count) is recorded in it.

    Returns the results dict (also results.json when the run reaches max_steps), with
    "status": "done", "stopped" (--stop-at), "interrupted" (Ctrl-C) or "diverged" (non-finite loss).
    """
    out = Path(run.output_dir)
    run, facts = describe(run, model, data, truncated or {})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, {"run": dataclasses.asdict(run), **facts})
    device = next(model.parameters()).device
    train_rows, metric = data["train"], task.metrics[0]
    lengths = [len(row["input_ids"]) for row in train_rows] if run.group_by_length else None
    pad = special_ids(tokenizer, model.model_type)["pad"]
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(model.param_groups(run.lr_prompt, run.lr_lowrank), betas=BETAS, eps=EPS,
                                  weight_decay=WEIGHT_DECAY)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    names = [group["name"] for group in optimizer.param_groups]

    # Everything besides tensors that a resumed run needs to carry on exactly.
    progress = dict(step=0, evaluated_step=0, best=None, best_step=None, loss_sum=0.0, loss_count=0,
                    train_seconds=0.0, elapsed=0.0)
    if resume and (out / STATE_FILE).is_file():
        progress, rng = load_state(out / STATE_FILE, model, optimizer)
        set_rng_state(rng, device)
        _truncate_log(out / LOG_FILE, progress["step"])
        log(f"resumed from step {progress['step']} (best {metric} {progress['best']} at step {progress['best_step']})")
    else:
        torch.manual_seed(run.seed)   # dropout; the prompt init and the data order have their own seeds
        write_bytes(out / LOG_FILE, b"")
    step = progress["step"]
    stop = run.stop_at or run.max_steps
    started, elapsed_before = time.perf_counter(), progress["elapsed"]
    last_log_time, last_log_step = progress["train_seconds"], step

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def write_record(record: dict) -> None:
        with open(out / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_clean(record)) + "\n")

    def validate() -> None:
        scores = evaluate(model, data["validation"], task, tokenizer, run.eval_batch_size)
        improved = _better(scores[metric], progress["best"])
        if improved:
            model.save_adapter(out / ADAPTER_FILE)
            progress.update(best=scores[metric], best_step=step)
        progress["evaluated_step"] = step
        write_record({"step": step, "split": "validation", **scores, "best": progress["best"],
                      "elapsed": round(elapsed(), 3)})
        message = (f"step {step:>6}  validation {', '.join(f'{k} {v:.2f}' for k, v in scores.items())}"
                   + ("  (best so far, adapter saved)" if improved else ""))
        (log if quiet else bar.write)(message)   # bar.write keeps the progress bar intact

    def save(rng) -> None:
        progress.update(step=step, elapsed=elapsed())
        save_state(out / STATE_FILE, model, optimizer, progress, rng)

    bar = tqdm(total=run.max_steps, initial=step, disable=quiet, desc=f"{run.method} {task.name}", unit="step",
               dynamic_ncols=True, file=sys.stderr)
    model.train()   # dropout on (the backbone's too: T5 trains with dropout 0.1)
    phase, rng = "compute", rng_state(device)
    try:
        eval_due = step % run.eval_every == 0 or step == run.max_steps
        if step > 0 and eval_due and step > progress["evaluated_step"]:
            validate()   # the saved run was interrupted during this evaluation
        while step < stop:
            phase, rng = "compute", rng_state(device)   # a Ctrl-C before the update saves exactly this point
            t0 = time.perf_counter()
            indices = train_batch(len(train_rows), run.batch_size, run.seed, step, lengths)
            batch = collate([train_rows[i] for i in indices], pad, model.model_type)
            factor = lr_factor(step, run.warmup_steps, run.max_steps)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor

            loss = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                         labels=batch["labels"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM).item()
            loss_value = loss.item()
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                raise NonFiniteLoss(f"loss {loss_value}, gradient norm {grad_norm} at step {step + 1}")
            phase = "update"   # parameters and step disagree until the step is counted
            optimizer.step()
            step += 1
            progress["loss_sum"] += loss_value
            progress["loss_count"] += 1
            progress["train_seconds"] += time.perf_counter() - t0
            phase = "after"

            if step % run.log_every == 0 or step == stop:
                mean_loss = progress["loss_sum"] / progress["loss_count"]
                speed = (step - last_log_step) / max(1e-9, progress["train_seconds"] - last_log_time)
                last_log_time, last_log_step = progress["train_seconds"], step
                progress.update(loss_sum=0.0, loss_count=0)
                write_record({"step": step, "loss": mean_loss,
                              **{f"lr_{name}": group["lr"] for name, group in zip(names, optimizer.param_groups)},
                              "grad_norm": grad_norm, "steps_per_s": round(speed, 3),
                              "elapsed": round(elapsed(), 3)})
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
            if step % run.eval_every == 0 or step == run.max_steps:
                validate()
            if step % run.save_every == 0 or step == stop:
                save(rng_state(device))
        bar.close()
        if step < run.max_steps:
            log(f"stopped at step {step} as asked (--stop-at); continue with the same command plus --resume")
            return {"status": "stopped", "step": step}
        return _finish(run, model, tokenizer, task, data, progress, elapsed(), log)
    except KeyboardInterrupt:
        bar.close()
        if phase == "update":
            log(f"interrupted during an update: the last saved state ({out / STATE_FILE}) is kept")
        else:
            save(rng if phase == "compute" else rng_state(device))
            log(f"interrupted: state saved at step {step} in {out / STATE_FILE}; continue with the same "
                "command plus --resume")
        return {"status": "interrupted", "step": step}
    except NonFiniteLoss as error:
        bar.close()
        log(f"stopped: non-finite {error}. Nothing was saved from this step: {out / STATE_FILE} and "
            f"{out / ADAPTER_FILE} hold the last good state. Try lower --lr-prompt / --lr-lowrank "
            "(with --resume to continue from that state)")
        return {"status": "diverged", "step": step}


def _finish(run: Run, model: PromptedModel, tokenizer, task: Task, data: dict, progress: dict,
            elapsed: float, log) -> dict:
    """The end of a run: score the best adapter on the test split; write results.json."""
    out, metric = Path(run.output_dir), task.metrics[0]
    model.load_adapter(out / ADAPTER_FILE)
    test = evaluate(model, data["test"], task, tokenizer, run.eval_batch_size) if data["test"] else {}
    seconds, step = progress["train_seconds"], run.max_steps
    results = {"status": "done", "task": task.name, "method": run.method, "steps": step,
               "best_step": progress["best_step"],
               "validation": _best_validation(out / LOG_FILE, progress["best_step"]), "test": test,
               "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
               "train_seconds": round(seconds, 3), "steps_per_s": round(step / seconds, 3) if seconds else None,
               "elapsed": round(elapsed, 3)}
    write_json(out / RESULTS_FILE, _clean(results))
    with open(out / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_clean({"step": step, "split": "test", **test,
                                        "best_step": progress["best_step"]})) + "\n")
    log(f"best validation {metric} {progress['best']:.2f} at step {progress['best_step']}; test "
        + ", ".join(f"{k} {v:.2f}" for k, v in test.items()))
    return results


def _best_validation(log_file: Path, best_step: int) -> dict | None:
    """All metrics of the validation record at the best step (for results.json)."""
    for line in log_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("split") == "validation" and record["step"] == best_step:
            return {k: v for k, v in record.items() if k not in ("step", "split", "best", "elapsed")}
    return None


def _truncate_log(log_file: Path, step: int) -> None:
    """Drop log records written after the saved state, and the final test record (they come again)."""
    if not log_file.is_file():
        return
    records = [(line, json.loads(line)) for line in log_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line, record in records if record["step"] <= step and record.get("split") != "test"]
    write_bytes(log_file, "".join(line + "\n" for line in kept).encode())


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #

def _read_saved_config(out: Path) -> dict:
    try:
        return json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"--resume: cannot read {out / CONFIG_FILE} ({error})") from None


def _check_output_dir(run: Run, resume: bool, overwrite: bool, saved: dict | None) -> None:
    out = Path(run.output_dir)
    if resume:
        if not (out / STATE_FILE).is_file():
            raise UsageError(f"--resume: no {STATE_FILE} in {out}: nothing to resume (start without --resume)")
        defaults = {f.name: f.default for f in dataclasses.fields(Run)}   # for fields newer than the saved run
        differ = [f"--{k.replace('_', '-')} {saved.get(k, defaults[k])!r} -> {getattr(run, k)!r}"
                  for k in FIXED_ON_RESUME if saved.get(k, defaults[k]) != getattr(run, k)]
        if differ:
            raise UsageError(f"--resume: these settings differ from the saved run in {out}: {'; '.join(differ)}. "
                             "Resume with the same values, or start a new run in another --output-dir")
    elif out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file")
    elif not overwrite and any((out / name).exists() for name in RUN_FILES):
        raise UsageError(f"--output-dir {out} already holds a run: continue it with --resume, start it "
                         "again with --overwrite, or choose another --output-dir")


def describe(run: Run, model: PromptedModel, data: dict, truncated: dict) -> tuple[Run, dict]:
    """(the run with `r` filled in from the model, facts about it) for config.json and the start-up print."""
    run = dataclasses.replace(run, r=model.config.r if run.method != "pt" else None)
    d = model.backbone.get_input_embeddings().weight.shape[1]
    facts = {"model_type": model.model_type, "d_model": d,
             "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
             "budget_l_times_d": run.l * d, "prompt_config": dataclasses.asdict(model.config),
             "examples": {k: len(v) for k, v in data.items()}, "truncated": truncated,
             "device": str(next(model.parameters()).device), "torch": torch.__version__}
    return run, facts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:   # --help, or a bad option (already reported): return, so main() can be called in-process
        return exit.code
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        saved = None
        if args.resume:
            folder = args.output_dir or resolve_run(args).output_dir
            saved = _read_saved_config(Path(folder))
        run = resolve_run(args, saved)
        _check_output_dir(run, args.resume, args.overwrite, saved)
        model, tokenizer, task, data, truncated = prepare(run)
    except (UsageError, DataError, CheckpointError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    run, facts = describe(run, model, data, truncated)
    print("run settings:")
    for key, value in dataclasses.asdict(run).items():
        print(f"  {key:<21} {value}")
    for key in ("model_type", "d_model", "trainable_parameters", "budget_l_times_d", "examples", "device"):
        print(f"  {key:<21} {facts[key]}")
    print(f"  truncated to max_length={run.max_length}: "
          + ", ".join(f"{split} {truncated[split]} of {len(data[split])}" for split in data))
    for key in sorted(RUN_FIELDS - set(FIXED_ON_RESUME) - {"stop_at"}) if saved else ():
        if saved.get(key) != getattr(run, key):
            print(f"  note: --{key.replace('_', '-')} changed on resume: {saved.get(key)!r} -> {getattr(run, key)!r}")
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.overwrite and not args.resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    results = train(run, model, tokenizer, task, data, resume=args.resume, quiet=args.quiet, truncated=truncated)
    return {"done": 0, "stopped": 0, "interrupted": 130, "diverged": 1}[results["status"]]


if __name__ == "__main__":
    sys.exit(main())
