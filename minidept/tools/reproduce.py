"""Reproduce a table of the DePT paper: `python -m minidept.reproduce glue|superglue|table2|fewshot --model t5-base`.

A tool beside the library (nothing in minidept imports it). For every task of the table,
and every seed where the paper averages three, it trains with the task's settings (the
released runs' where there are some, minidept's choices elsewhere: docs/methods.md
section 5) through `minidept.train`, one run folder per task and seed under
`--output-root`. `--grid` runs the paper's search grid instead for the Table 2 tasks
without released runs and keeps, per task, the point best on validation;
`fewshot --source-task T` first trains T and starts every few-shot run from it. A
finished run (results.json and the test record in metrics.jsonl) is skipped and an
interrupted one (state.safetensors) resumed, so the same command continues after a stop.
A finished or interrupted run whose config.json holds other settings than the command
asks for (--max-steps, --eval-every, --max-eval-examples, --batch-size, --dtype,
--init-from, ...) is refused before anything starts, naming what differs: give the
settings it was trained with, or another --output-root. Then it writes the table beside
the paper's numbers (docs/methods.md section 7), with the difference, as TABLE.md and
TABLE.json, and a bar chart TABLE.png when matplotlib is installed.

`--dry-run` prints every run (task, seed, settings, steps) and needs neither the model
nor the data; when `--model` is a local folder or a demo model it also measures one
training step per setting and estimates the time. `--parallel N` runs N trainings at
once as subprocesses of `python -m minidept.train`, one per GPU, or sharing the CPU;
`--nproc-per-run G` starts each with torchrun over G processes (G GPUs). Ctrl-C or SIGTERM
stops every training at its next step boundary, where it saves its state (whatever still
runs STOP_SECONDS later is killed); on Linux the trainings also stop when reproduce itself
is killed, and the workers of a torchrun killed on its own are ended too.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.checkpoint import atomic_write
from ..run.cli import command, UsageError, option, parse
from ..methods import METHODS, PromptConfig
from ..io.backbones import BUILT_IN_MODELS, DTYPES, load_backbone
from ..prompted import PromptedModel
from ..data.tasks import TASKS, get_task
from ..io.checkpoint import CONFIG_FILE
from .files import try_writing
from ..run.config import BUILT_IN_EVAL_EVERY, BUILT_IN_STEPS, DEFAULTS
from ..run.config import TrainConfig, command_line
from ..run.folder import LOG_FILE, RESULTS_FILE, RUN_FILES, STATE_FILE
from ..run.train import train

# The paper's numbers (T5-base, test split; docs/methods.md section 7): table -> rows of
# (task, k-shot or None, the metric the paper reports, PT, DePT). MRPC, QQP and CB are test ACCURACY.
# The paper's PT column is quoted from Wang et al. (2023b), not run by the DePT authors. Table 4's
# PT numbers are printed in the paper but not transcribed here (None): they could not be checked.
PAPER = {
    "glue": [("mnli", None, "accuracy", 83.4, 85.0), ("qqp", None, "accuracy", 90.2, 90.4),
             ("qnli", None, "accuracy", 93.1, 93.2), ("sst2", None, "accuracy", 91.9, 94.2),
             ("stsb", None, "pearson", 90.2, 90.8), ("mrpc", None, "accuracy", 90.1, 90.7),
             ("rte", None, "accuracy", 78.8, 79.1), ("cola", None, "matthews", 60.7, 63.8)],
    "superglue": [("multirc", None, "multirc_f1", 65.7, 74.3), ("boolq", None, "accuracy", 63.7, 79.3),
                  ("wic", None, "accuracy", 50.8, 68.7), ("wsc", None, "accuracy", 51.9, 67.3),
                  ("cb", None, "accuracy", 67.9, 92.9)],
    "table2": [("nq", None, "squad_f1", 67.9, 73.2), ("hotpotqa", None, "squad_f1", 72.9, 76.8),
               ("searchqa", None, "squad_f1", 75.7, 77.6), ("newsqa", None, "squad_f1", 61.1, 64.4),
               ("winogrande", None, "accuracy", 49.6, 59.0), ("yelp", None, "accuracy", 95.1, 96.8),
               ("scitail", None, "accuracy", 87.9, 95.6), ("paws", None, "accuracy", 55.8, 93.7)],
    "fewshot": [(task, k, "accuracy", None, value) for task, values in
                (("boolq", (62.7, 66.9, 67.2)), ("cb", (75.0, 78.6, 82.1)), ("scitail", (78.1, 78.5, 85.4)))
                for k, value in zip((4, 16, 32), values)],
}
# The paper's averages: table -> (label, benchmark of the tasks averaged, PT, DePT)
MEANS = {"glue": [("GLUE", "glue", 84.8, 85.9)], "superglue": [("SuperGLUE", "superglue", 60.0, 76.5)],
         "table2": [("MRQA mean", "mrqa", 69.4, 73.0), ("others mean", "other", 72.1, 86.3)], "fewshot": []}
TITLES = {"glue": "Table 1, GLUE", "superglue": "Table 1, SuperGLUE", "table2": "Table 2",
          "fewshot": "Table 4, few-shot with PETL"}
# Table 2 and the few-shot table average three seeds (the paper does not name them; 42 is the official default)
SEEDS = {"glue": (42,), "superglue": (42,), "table2": (42, 43, 44), "fewshot": (42, 43, 44)}
# What the paper says of its PT column, per table, and what minidept does instead
_PT_RUNS = "these runs take DePT's learning rate and steps per task with l = 100 (minidept's choice)"
PT_NOTE = {"glue": f"the paper publishes no settings for its PT runs: {_PT_RUNS}",
           "superglue": f"the paper publishes no settings for its PT runs: {_PT_RUNS}",
           "table2": f"the paper quotes its PT numbers from Wang et al. (2023b): {_PT_RUNS}",
           "fewshot": "the paper quotes its PT numbers from Wang et al. (2023b), not transcribed here: these runs "
                      "take DePT's learning rates per task with l = 100 (minidept's choice)"}
# Few-shot runs are short (the paper gives no step count, learning rates or warmup; minidept's choice)
FEWSHOT_STEPS, FEWSHOT_EVAL_EVERY = 1000, 100
# The paper's source tasks for transfer (section 3.1, p. 4): MNLI, QQP, SST-2, SQuAD and ReCoRD; it does not
# say which one Table 4's prompts came from. minidept has no SQuAD task.
SOURCE_TASKS = ("mnli", "qqp", "sst2", "record")
# The paper's search grid (App. D, Table 10). No runs were released for these Table 2 tasks, so `--grid`
# trains every point and keeps, per task, the one with the best mean validation score (the paper selects on
# validation); without it they run minidept's one default point.
GRID = {"m": (20, 40, 60, 80), "lr_prompt": (0.3, 0.4, 0.5), "lr_lowrank": (1e-4, 5e-4, 1e-3, 5e-3)}
GRID_TASKS = ("winogrande", "yelp", "scitail", "paws")
# The settings that decide a run's result, compared with the run's config.json before it is skipped or resumed
COMPARED = ("model", "method", "seed", "k_shot", "init_from", "max_steps", "eval_every", "max_eval_examples",
            "batch_size", "dtype")
STOP_SECONDS = 20   # after Ctrl-C / SIGTERM, how long the trainings get to save their state before they are killed


@dataclass
class ReproduceConfig:
    table: str = option(None, "which table: glue, superglue (Table 1), table2 or fewshot (Table 4)",
                        choices=tuple(PAPER))
    model: str = option("t5-base", "backbone: Hub id, local folder or demo model (default t5-base)")
    method: str = option("dept", "default dept", choices=METHODS)
    tasks: str = option(None, "only these tasks of the table, comma-separated (e.g. sst2,rte)")
    output_root: str = option("runs/reproduce", "run folders and tables go under here (default runs/reproduce)")
    data_dir: str = option(None, "data folder (default: $MINIDEPT_DATA, else the Hub)")
    init_from: str = option(None, "fewshot: the adapter every run starts from (the paper transfers from one of "
                                  "MNLI, QQP, SST-2, SQuAD, ReCoRD, not saying which)", metavar="ADAPTER")
    source_task: str = option(None, "fewshot: first train this source task (its own settings, seed 42), then start "
                                    "every run from it", choices=SOURCE_TASKS)
    grid: bool = option(False, "table2: train the paper's grid (Table 10) for WinoGrande, Yelp-2, SciTail and PAWS "
                               "and keep the point best on validation")
    seeds: str = option(None, "comma-separated seeds instead of the paper's (42; 42,43,44 where it averages three)")
    max_steps: int = option(None, "train every run for N steps instead of its task's number (quick runs)")
    eval_every: int = option(None, "evaluate every N steps (default: 1,000; few-shot 100)")
    max_eval_examples: int = option(None, "evaluate on at most N examples of each split (quick runs)")
    batch_size: int = option(None, "examples per optimizer step (default: each task's, 32)")
    grad_accum: int = option(None, "micro-batches per step (default: each task's: MRQA and ReCoRD 2 x 16, as the "
                                   "released MRQA runs; 1 elsewhere)", metavar="K")
    parallel: int = option(1, "trainings at once, as subprocesses: one per GPU, or sharing the CPU (default 1)")
    nproc_per_run: int = option(1, "processes per training, started by torchrun: each takes 1/N of every batch, "
                                   "on a GPU of its own or the CPU (default 1)")
    device: str = option("auto", "default auto", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option(None, "the frozen backbone's dtype in every run (default float32, as the paper)",
                        choices=tuple(DTYPES))
    dry_run: bool = option(False, "print every run and its settings, train nothing")


@dataclass
class Run:
    task: str
    k: int | None
    seed: int
    config: TrainConfig
    point: tuple | None = None      # --grid: (m, lr_prompt, lr_lowrank), or (lr_prompt,) for PT
    source: bool = False            # --source-task: the run every few-shot run starts from

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)

    def status(self) -> str:
        """done (results.json and the test record), resume (a saved state), differs (either of those, trained
        with other settings: `differences`), restart (a run without state), or new."""
        if self.finished() or (self.folder / STATE_FILE).is_file():
            return "differs" if self.differences() else "done" if self.finished() else "resume"
        return "restart" if any((self.folder / name).exists() for name in RUN_FILES) else "new"

    def finished(self) -> bool:
        """results.json, and metrics.jsonl ending in the test record (a kill between the two writes leaves
        one without the other: the run is resumed at its last step, which scores the test split again)."""
        if not (self.folder / RESULTS_FILE).is_file() or not (self.folder / LOG_FILE).is_file():
            return False
        lines = (self.folder / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            return json.loads(lines[-1]).get("split") == "test"
        except (IndexError, ValueError, AttributeError):
            return False

    def differences(self) -> list[str]:
        """What the saved run's config.json says beside what this command plans, for each of COMPARED
        that differs (local paths compared as absolute paths); none when config.json cannot be read."""
        try:
            saved = json.loads((self.folder / CONFIG_FILE).read_text(encoding="utf-8"))["run"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        task, config = get_task(self.task), self.config
        built_in = config.model in BUILT_IN_MODELS and not Path(config.model).is_dir()
        planned = {**{name: getattr(config, name) for name in COMPARED},   # as minidept.train resolves them
                   "max_steps": config.max_steps or (BUILT_IN_STEPS if built_in else task.max_steps),
                   "eval_every": config.eval_every or (BUILT_IN_EVAL_EVERY if built_in else 1000),
                   "batch_size": config.batch_size or task.batch_size, "dtype": config.dtype or DEFAULTS["dtype"],
                   "method": config.method or DEFAULTS["method"]}
        same = lambda value: (str(Path(value).expanduser().resolve())   # noqa: E731
                              if isinstance(value, str) and Path(value).expanduser().exists() else value)
        return [f"--{name.replace('_', '-')} {saved.get(name)} (this command: {planned[name]})"
                for name in COMPARED if same(saved.get(name)) != same(planned[name])]


def plan(args: ReproduceConfig) -> tuple[str, list[tuple], list[Run]]:
    """(table name, the paper's rows kept, every run) for the command's options."""
    table = args.table
    if table not in PAPER:
        raise UsageError(f"table {table!r}: choose one of {', '.join(PAPER)}")
    rows = PAPER[table]
    if args.tasks:
        wanted = [get_task(name).name for name in args.tasks.split(",") if name.strip()]
        if unknown := [name for name in wanted if name not in {row[0] for row in rows}]:
            raise UsageError(f"--tasks {','.join(unknown)}: not in {table} "
                             f"({', '.join(dict.fromkeys(row[0] for row in rows))})")
        rows = [row for row in rows if row[0] in wanted]
    try:
        seeds = tuple(int(seed) for seed in args.seeds.split(",")) if args.seeds else SEEDS[table]
    except ValueError:
        raise UsageError(f"--seeds {args.seeds}: comma-separated integers, e.g. 42,43,44") from None
    for name in ("max_steps", "eval_every", "max_eval_examples", "batch_size", "grad_accum", "parallel",
                 "nproc_per_run"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be at least 1")
    few = table == "fewshot"
    if args.source_task and (not few or args.init_from):
        raise UsageError("--source-task: only for the fewshot table, and not with --init-from (choose one)")
    if args.grid and table != "table2":
        raise UsageError(f"--grid: only for table2 (the paper's grid for {', '.join(GRID_TASKS)})")
    root = Path(args.output_root) / f"{Path(args.model).name}-{args.method}" / table

    def run(task: str, k: int | None, seed: int, name: str, point: tuple = (), source: bool = False, **given) -> Run:
        config = TrainConfig(task=task, model=args.model, method=args.method, seed=seed, k_shot=k,
                             data_dir=args.data_dir, max_eval_examples=args.max_eval_examples,
                             batch_size=args.batch_size, grad_accum=args.grad_accum or get_task(task).grad_accum,
                             device=args.device, dtype=args.dtype, quiet=args.parallel > 1 or args.nproc_per_run > 1,
                             output_dir=str(root / name), **given)
        return Run(task, k, seed, config, point or None, source)

    runs, init_from = [], args.init_from
    if args.source_task:    # trained first, with its own settings; every few-shot run starts from its folder
        runs.append(run(args.source_task, None, 42, f"source-{args.source_task}-seed42", source=True,
                        max_steps=args.max_steps, eval_every=args.eval_every))
        init_from = runs[0].config.output_dir
    for task, k, *_ in rows:
        for point in grid_points(args.method) if args.grid and task in GRID_TASKS else [()]:
            for seed in seeds:
                tag = "".join(f"-{SHORT[key]}{value:g}" for key, value in zip(GRID_KEYS[args.method], point))
                runs.append(run(task, k, seed, f"{task}{f'-k{k}' if k else ''}{tag}-seed{seed}", point,
                                init_from=init_from if few else None, **dict(zip(GRID_KEYS[args.method], point)),
                                max_steps=args.max_steps or (FEWSHOT_STEPS if few else None),
                                eval_every=args.eval_every or (FEWSHOT_EVAL_EVERY if few else None)))
    return table, rows, runs


# the grid's axes each method has (PT has no short prompt and no second learning rate), and their folder tags
GRID_KEYS = {method: ("lr_prompt",) if method == "pt" else ("m", "lr_prompt", "lr_lowrank") for method in METHODS}
SHORT = {"m": "m", "lr_prompt": "lp", "lr_lowrank": "ll"}


def grid_points(method: str) -> list[tuple]:
    """The points of the paper's grid (`GRID`) along the axes `method` has."""
    return list(itertools.product(*(GRID[key] for key in GRID_KEYS[method])))


def settings(run: Run) -> dict:
    """The settings `minidept.train` will resolve for the run (its task's, or the options given)."""
    task, config = get_task(run.task), run.config
    pt = config.method == "pt"
    return {"m": "adapter" if config.init_from else (task.l if pt else config.m or task.m),
            "lr_prompt": config.lr_prompt or task.lr_prompt,
            "lr_lowrank": "-" if pt else config.lr_lowrank or task.lr_lowrank,
            "steps": config.max_steps or task.max_steps, "batch": config.batch_size or task.batch_size,
            "accum": config.grad_accum, "max_length": task.max_length}


def measure_step(model_name: str, runs: list[Run], device: str, dtype: str | None) -> dict[tuple, float]:
    """Seconds of one training step (forward, backward of each micro-batch) per distinct setting, inputs
    padded to the maximum length: an upper bound for the batches of real text, which are padded to their
    own longest input."""
    backbone, _ = load_backbone(model_name, dtype=DTYPES[dtype or "float32"], device=device)
    seconds = {}
    for run in runs:
        s = settings(run)
        key = (run.config.method, s["m"], s["batch"], s["accum"], s["max_length"])
        if key in seconds:
            continue
        m = None if s["m"] == "adapter" or run.config.method == "pt" else s["m"]
        model = PromptedModel(backbone, PromptConfig(method=run.config.method, m=m, max_length=s["max_length"]))
        dev = model.prompt.P.device
        micro = -(-s["batch"] // s["accum"])
        ids = torch.randint(3, min(backbone.config.vocab_size, 1000), (micro, s["max_length"]), device=dev)
        labels = ids[:, :4].clone() if backbone.is_encoder_decoder else ids.masked_fill(
            torch.arange(s["max_length"], device=dev) < s["max_length"] - 4, -100)
        for _ in range(2):   # the first step warms up (allocations, kernels)
            started = time.perf_counter()
            model(ids, torch.ones_like(ids), labels=labels).backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds[key] = (time.perf_counter() - started) * s["accum"]
    return seconds


def notes(args: ReproduceConfig, table: str) -> list[str]:
    """What the plan takes from the paper or the released runs, and what is minidept's choice."""
    show = lambda v: f"{v:.0e}".replace("e-0", "e-") if v < 0.01 else f"{v:g}"  # noqa: E731  (1e-4, 0.3, 20)
    grid = ", ".join(f"{key} in {{{', '.join(map(show, GRID[key]))}}}" for key in GRID_KEYS[args.method])
    lines = ["batch = examples per optimizer step, accum = micro-batches it is split into (the released MRQA "
             "runs: 16 per device, gradient accumulation 2)"] if table == "table2" else []
    if args.method == "pt":
        lines.append(PT_NOTE[table])
    if table == "table2":
        lines.append(f"{', '.join(GRID_TASKS)}: no released runs; the paper grid-searched {grid} (App. D, "
                     "Table 10) and selected on validation; "
                     + ("every point is planned below, and the table reports each task's point with the best mean "
                        "validation score" if args.grid else "these runs use minidept's default point; --grid "
                        f"trains all {len(grid_points(args.method))} and keeps the best on validation"))
    if table == "fewshot":
        lines.append("steps, learning rates and warmup of the few-shot runs are not published: 1,000 steps, "
                     "evaluation every 100, the target task's learning rates (minidept's choice)")
        if args.source_task:
            lines.append(f"every run starts from {args.source_task} (the source run first); the paper names five "
                         "source tasks (MNLI, QQP, SST-2, SQuAD, ReCoRD) and not the one Table 4 used")
        elif not args.init_from:
            lines.append("no --init-from or --source-task, so every run starts from a fresh prompt; the paper "
                         "transfers from one of its source tasks (MNLI, QQP, SST-2, SQuAD, ReCoRD), not saying which")
    return lines


def print_plan(args: ReproduceConfig, table: str, runs: list[Run]) -> None:
    print(f"{TITLES[table]}: {len(runs)} runs of {args.method} on {args.model}, under {runs[0].folder.parent}")
    for note in notes(args, table):
        print(f"  note: {note}")
    estimate = {}
    if args.model in BUILT_IN_MODELS or Path(args.model).is_dir():
        estimate = measure_step(args.model, runs, args.device, args.dtype)
    lines = [["task", "k", "seed", "m", "lr_prompt", "lr_lowrank", "steps", "batch", "accum", "max_length", "status"]
             + (["hours"] if estimate else [])]
    total = 0.0
    for run in runs:
        s = settings(run)
        line = [run.task, run.k or "-", run.seed, *s.values(), run.status()]
        if estimate:
            key = (run.config.method, s["m"], s["batch"], s["accum"], s["max_length"])
            hours = estimate[key] * s["steps"] / 3600
            total += hours if run.status() != "done" else 0.0
            line.append(f"{hours:.2f}")
        lines.append([f"{v:,}" if isinstance(v, int) and v >= 10_000 else str(v) for v in line])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print(("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths))).rstrip())
    if estimate:
        workers = args.parallel * args.nproc_per_run
        shared = f" ({total / workers:.2f} on {workers} devices, if they share the work evenly)" if workers > 1 else ""
        print(f"  estimate: {total:.2f} hours of training left{shared}, from one measured step per setting with "
              "inputs padded to the maximum length; evaluation not counted")
    else:
        print("  (for a time estimate, pass --model as a local folder or a demo model: one step is measured)")
    for run in runs:
        if run.status() == "differs":
            print(f"  {run.folder.name} differs: trained with {'; '.join(run.differences())}")


def _prepare(run: Run) -> TrainConfig:
    """The run's config, set to resume a saved state or to start again over a run that saved none."""
    status = run.status()
    return dataclasses.replace(run.config, resume=status == "resume" or None, overwrite=status == "restart" or None)


def run_in_process(pending: list[Run]) -> list[str]:
    """Train the runs one after another in this process; stop at an interruption. Returns the failures."""
    failed = []
    for i, run in enumerate(pending, start=1):
        config = _prepare(run)
        print(f"[{i}/{len(pending)}] {run.folder.name}: {'resuming' if config.resume else 'training'}", flush=True)
        run.folder.mkdir(parents=True, exist_ok=True)
        with open(run.folder / "train.log", "a", encoding="utf-8") as log:
            try:
                results = train(config, log=lambda *line: print(*line, file=log, flush=True))
            except ValueError as error:     # a user's mistake (no data, bad adapter): one line, go on
                print(f"  failed: {error}", flush=True)
                failed.append(run.folder.name)
                continue
        if results["status"] == "interrupted":
            raise KeyboardInterrupt
        if results["status"] != "done":
            failed.append(run.folder.name)
        print(f"  {results['status']}: " + ", ".join(f"{k} {v:.2f}" for k, v in results.get("test", {}).items()
                                                     if isinstance(v, float)), flush=True)
    return failed


def run_in_subprocesses(pending: list[Run], n: int, nproc: int = 1) -> list[str]:
    """Train up to n runs at once as `python -m minidept.train` subprocesses, each on its own GPU (or
    `torchrun` with nproc processes and GPUs), or sharing the CPU's threads; their output goes to
    train.log in each run folder. Returns the failures.

    Each training runs in a process group of its own; torchrun's workers in sessions of their own, so
    they are found under this process (Linux: /proc, and this process adopts the workers of a torchrun
    that dies). An interruption or an error here ends them all: `end_processes`."""
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // (n * nproc))
    # torchrun takes the script's options after "--" (else it reads --m as an abbreviation of its own)
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                                    "-m", "minidept.train", "--"] if nproc > 1 else ["-m", "minidept.train"])
    running: dict[int, tuple[subprocess.Popen, Run]] = {}   # slot -> (process, run)
    failed, queue = [], list(pending)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)   # a killed torchrun's workers become ours, not PID 1's
    try:
        while queue or running:
            for slot in [s for s in range(n) if s not in running][:len(queue)]:
                run = queue.pop(0)
                devices = ",".join(str((slot * nproc + i) % gpus) for i in range(nproc)) if gpus else ""
                env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": devices} if gpus else {})}
                argv = command_line(dataclasses.asdict(_prepare(run))) + ([] if gpus else ["--threads", str(threads)])
                run.folder.mkdir(parents=True, exist_ok=True)
                with open(run.folder / "train.log", "a", encoding="utf-8") as log:
                    process = subprocess.Popen([*launcher, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, preexec_fn=_end_with_parent)
                running[slot] = (process, run)
                print(f"started {run.folder.name}" + (f" on GPU {devices}" if gpus else ""), flush=True)
            time.sleep(0.2)
            for slot, (process, run) in list(running.items()):
                if process.poll() is not None:
                    del running[slot]
                    end_processes(_orphans({p.pid for p, _ in running.values()}))   # a killed torchrun's workers
                    print(f"{'finished' if process.returncode == 0 else 'failed'} {run.folder.name}"
                          + ("" if process.returncode == 0 else f" (exit {process.returncode}, see train.log)"),
                          flush=True)
                    failed += [] if process.returncode == 0 else [run.folder.name]
    finally:   # an interruption: every training saves its state at the next step boundary
        if running:
            end_processes([pid for process, _ in running.values() for pid in (process.pid, *_descendants(process.pid))]
                          + _orphans({process.pid for process, _ in running.values()}))
            for process, _ in running.values():
                process.wait()
        _prctl(PR_SET_CHILD_SUBREAPER, 0)
    return failed


# Linux process control (prctl), so that no training outlives the command that started it
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _prctl(option: int, value: int) -> None:
    if _LIBC is not None:
        _LIBC.prctl(option, value, 0, 0, 0)


def _end_with_parent() -> None:
    """In a training's process before it starts: SIGTERM when reproduce dies, even by SIGKILL (Linux)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _children() -> dict[int, list[int]]:
    """Each process's children, from /proc (Linux; elsewhere none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):   # a process that ended meanwhile
            continue
    return children


def _descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """The processes below `pid`."""
    children = _children() if children is None else children
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _orphans(started: set[int]) -> list[int]:
    """Trainings this process adopted (the workers of a torchrun that died), not the ones it `started`,
    with whatever runs below them."""
    children, adopted = _children(), []
    for pid in children.get(os.getpid(), ()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid not in started and b"minidept.train" in command:
            adopted += [pid, *_descendants(pid, children)]
    return adopted


def end_processes(pids: list[int], seconds: float = STOP_SECONDS) -> None:
    """SIGTERM to each process (a training saves its state at the next step boundary and ends; torchrun
    passes it on), then SIGKILL to those still there after `seconds`. Ctrl-C and SIGTERM wait meanwhile."""
    if not pids:
        return
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + seconds
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if _running(pid):
                _signal(pid, signal.SIGKILL)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie, dead but not yet reaped, is not). A child of ours is reaped here."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    except ChildProcessError:   # not our child: ask /proc (elsewhere: whether a signal reaches it)
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return sys.platform != "linux"
        except OSError:
            return False


def best_point(task: str, done: list[Run], results: dict[str, dict]) -> tuple | None:
    """Of a grid's finished runs, the point with the best mean validation score on the task's first metric
    (the one that selects checkpoints), as the paper selects its grid on validation; None without scores."""
    metric, scores = get_task(task).metrics[0], {}
    for run in done:
        value = (results[run.folder.name].get("validation") or {}).get(metric)
        if value is not None:
            scores.setdefault(run.point, []).append(value)
    return max(scores, key=lambda point: sum(scores[point]) / len(scores[point])) if scores else None


def collect(table: str, rows: list[tuple], runs: list[Run], method: str) -> dict:
    """The table: per row of the paper our mean over the finished seeds, the paper's number, the difference.
    A task trained on the grid reports the seeds of its point best on validation (`best_point`)."""
    column = {"pt": 0, "dept": 1}.get(method)   # the paper's PT and DePT numbers, in this order in each row
    lines = []
    for task, k, metric, *paper in rows:
        done = [run for run in runs if run.task == task and run.k == k and not run.source and run.status() == "done"]
        results = {run.folder.name: json.loads((run.folder / RESULTS_FILE).read_text()) for run in done}
        point = best_point(task, done, results) if any(run.point for run in done) else None
        if point is not None:
            done = [run for run in done if run.point == point]
        values = [results[run.folder.name]["test"].get(metric) for run in done]
        values = [v for v in values if v is not None]
        ours = sum(values) / len(values) if values else None
        published = paper[column] if column is not None else None
        lines.append({"task": task, "k": k, "metric": metric, "seeds": [run.seed for run in done],
                      "values": values, "ours": ours, "paper": published,
                      "point": dict(zip(GRID_KEYS[method], point)) if point else None,
                      "difference": None if ours is None or published is None else ours - published})
    means, ours_of = [], {line["task"]: line["ours"] for line in lines if line["k"] is None}
    for label, benchmark, *paper in MEANS[table]:   # only over the whole group, as the paper
        group = [row[0] for row in PAPER[table] if TASKS[row[0]].benchmark == benchmark]
        ours = sum(ours_of[t] for t in group) / len(group) if all(ours_of.get(t) is not None for t in group) else None
        published = paper[column] if column is not None else None
        means.append({"task": label, "ours": ours, "paper": published,
                      "difference": None if ours is None or published is None else ours - published})
    return {"table": TITLES[table], "method": method, "rows": lines, "means": means}


def write_table(result: dict, stem: Path) -> None:
    """stem.md, stem.json and (with matplotlib) stem.png."""
    show = lambda v, sign="": "-" if v is None else f"{v:{sign}.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    notes = ["Test split of docs/methods.md section 6; ours: the mean over the finished seeds; the paper's: "
             "docs/methods.md section 7 (MRPC, QQP and CB in Table 1 are test accuracy)."]
    if result["method"] == "pt":
        notes.append(PT_NOTE[next(name for name, title in TITLES.items() if title == result["table"])] + ".")
    if result["table"] == TITLES["fewshot"]:
        notes.append(f"Every run started from a prompt trained here on {result['source_task']}."
                     if result.get("source_task") else f"Every run started from {result['init_from']}."
                     if result.get("init_from") else "No --init-from or --source-task: the prompts started fresh "
                     "(the paper transfers from one of MNLI, QQP, SST-2, SQuAD and ReCoRD, not saying which).")
    if any(line.get("point") for line in result["rows"]):
        notes.append("A task with settings in brackets was trained on the paper's grid (App. D, Table 10): the "
                     "point with the best mean validation score.")
    md = [f"# {result['table']}: {result['method']} ({result['model']})", "", " ".join(notes), "",
          "| task | k | metric | seeds | ours | paper | ours - paper |", "|---|---|---|---|---|---|---|"]
    for line in result["rows"]:
        point = ", ".join(f"{key} {value:g}" for key, value in (line.get("point") or {}).items())
        md.append(f"| {line['task']}{f' ({point})' if point else ''} | {line['k'] or '-'} | {line['metric']} | "
                  f"{len(line['seeds'])} | "
                  f"{show(line['ours'])} | {show(line['paper'])} | {show(line['difference'], '+')} |")
    for line in result["means"]:
        md.append(f"| {line['task']} | | | | {show(line['ours'])} | {show(line['paper'])} | "
                  f"{show(line['difference'], '+')} |")
    atomic_write(stem.with_suffix(".md"), ("\n".join(md) + "\n").encode())
    atomic_write(stem.with_suffix(".json"), json.dumps(result, indent=2).encode())
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("bar chart skipped: it needs matplotlib (pip install 'minidept[plot]')")
        return
    lines = result["rows"] + result["means"]
    names = [line["task"] + (f" k={line['k']}" if line.get("k") else "") for line in lines]
    figure = Figure(figsize=(max(6.0, 0.7 * len(names)), 3.6), layout="constrained")
    axes = figure.subplots()
    for offset, key in ((-0.2, "ours"), (0.2, "paper")):   # a missing value is drawn as 0
        axes.bar([i + offset for i in range(len(lines))], [line[key] or 0 for line in lines], width=0.4, label=key)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_title(f"{result['table']}: {result['method']} ({result['model']})")
    axes.legend()
    picture = io.BytesIO()
    figure.savefig(picture, format="png")
    atomic_write(stem.with_suffix(".png"), picture.getvalue())


def check_writable_folder(folder: Path) -> None:
    """A UsageError unless the output root takes a real write (made if missing), tried before any training."""
    try_writing(folder, "--output-root", "another --output-root")


def _interrupt(*_):
    raise KeyboardInterrupt


@command("python -m minidept.reproduce", "free some space or choose another --output-root; then run the same "
         "command again to continue")
def main(argv: list[str] | None, prog: str) -> int | None:
    handler = None
    try:
        args = parse(ReproduceConfig, argv, prog, __doc__.split("\n\n")[0], positional="table")
        table, rows, runs = plan(args)
        if args.dry_run:
            print_plan(args, table, runs)
            return 0
        if differ := [run for run in runs if run.status() == "differs"]:
            raise UsageError(f"{differ[0].folder} holds a run trained with other settings: "
                             f"{'; '.join(differ[0].differences())}"
                             + (f" (and {len(differ) - 1} more run(s): see --dry-run)" if len(differ) > 1 else "")
                             + ". Give the settings it was trained with, or another --output-root for these")
        check_writable_folder(runs[0].folder.parent.parent)
        if threading.current_thread() is threading.main_thread():   # SIGTERM as Ctrl-C: the trainings save and stop
            handler = signal.signal(signal.SIGTERM, _interrupt)
        pending = [run for run in runs if run.status() != "done"]
        print(f"{TITLES[table]}: {len(runs)} runs under {runs[0].folder.parent}, {len(runs) - len(pending)} "
              f"already finished (skipped)", flush=True)
        failed = []   # the --source-task run first: every few-shot run starts from it (none after it fails)
        for wave in ([run for run in pending if run.source], [run for run in pending if not run.source]):
            if wave and not failed:
                failed += (run_in_subprocesses(wave, args.parallel, args.nproc_per_run)
                           if args.parallel > 1 or args.nproc_per_run > 1 else run_in_process(wave))
        result = {**collect(table, rows, runs, args.method), "model": args.model, "init_from": args.init_from,
                  "source_task": args.source_task}
        stem = runs[0].folder.parent.parent / table
        write_table(result, stem)
        print((stem.with_suffix(".md")).read_text(), end="")
        if failed:
            print(f"{len(failed)} run(s) did not finish: {', '.join(failed)}")
            return 1
    except KeyboardInterrupt:
        print("interrupted: every started run saved its state; run the same command again to continue")
        return 130
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)

if __name__ == "__main__":
    sys.exit(main())
