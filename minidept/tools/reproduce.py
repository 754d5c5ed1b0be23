"""Reproduce a table of the DePT paper: `python -m minidept.reproduce glue|superglue|table2|fewshot --model t5-base`.

A tool beside the library (nothing in minidept imports it). For every task of the table,
and every seed where the paper averages three, it trains with the task's published
settings through `minidept.train`, one run folder per task and seed under
`--output-root`. A finished run (results.json) is skipped and an interrupted one
(state.safetensors) resumed, so the same command continues after a stop. Then it writes
the table beside the paper's numbers (docs/methods.md section 7), with the difference,
as TABLE.md and TABLE.json, and a bar chart TABLE.png when matplotlib is installed.

`--dry-run` prints every run (task, seed, settings, steps) and needs neither the model
nor the data; when `--model` is a local folder or a demo model it also measures one
training step per setting and estimates the time. `--parallel N` runs N trainings at
once as subprocesses of `python -m minidept.train`, one per GPU, or sharing the CPU;
`--nproc-per-run G` starts each with torchrun over G processes (G GPUs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..run.cli import UsageError, fail, option, parse
from ..methods import METHODS, PromptConfig
from ..io.backbones import DEMO_MODELS, DTYPES, load_backbone
from ..prompted import PromptedModel
from ..data.tasks import TASKS, get_task
from ..run.train import RESULTS_FILE, RUN_FILES, STATE_FILE, TrainConfig, command_line, train

# The paper's numbers (T5-base, test split; docs/methods.md section 7): table -> rows of
# (task, k-shot or None, the metric the paper reports, PT, DePT). MRPC, QQP and CB are test ACCURACY.
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
# Few-shot runs are short (the paper gives no step count; minidept's choice)
FEWSHOT_STEPS, FEWSHOT_EVAL_EVERY = 1000, 100


@dataclass
class ReproduceConfig:
    table: str = option(None, "which table: glue, superglue (Table 1), table2 or fewshot (Table 4)",
                        choices=tuple(PAPER))
    model: str = option("t5-base", "backbone: Hub id, local folder or demo model (default t5-base)")
    method: str = option("dept", "default dept", choices=METHODS)
    tasks: str = option(None, "only these tasks of the table, comma-separated (e.g. sst2,rte)")
    output_root: str = option("runs/reproduce", "run folders and tables go under here (default runs/reproduce)")
    data_dir: str = option(None, "data folder (default: $MINIDEPT_DATA, else the Hub)")
    init_from: str = option(None, "fewshot: the adapter every run starts from (the paper: one trained on MNLI)",
                            metavar="ADAPTER")
    seeds: str = option(None, "comma-separated seeds instead of the paper's (42; 42,43,44 where it averages three)")
    max_steps: int = option(None, "train every run for N steps instead of the published number (quick runs)")
    eval_every: int = option(None, "evaluate every N steps (default: 1,000; few-shot 100)")
    max_eval_examples: int = option(None, "evaluate on at most N examples of each split (quick runs)")
    batch_size: int = option(None, "default: each task's")
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

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)

    def status(self) -> str:
        """done (results.json), resume (a saved state), restart (a run without state), or new."""
        if (self.folder / RESULTS_FILE).is_file():
            return "done"
        if (self.folder / STATE_FILE).is_file():
            return "resume"
        return "restart" if any((self.folder / name).exists() for name in RUN_FILES) else "new"


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
    for name in ("max_steps", "eval_every", "max_eval_examples", "batch_size", "parallel", "nproc_per_run"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be at least 1")
    few = table == "fewshot"
    root = Path(args.output_root) / f"{Path(args.model).name}-{args.method}" / table
    runs = []
    for task, k, *_ in rows:
        for seed in seeds:
            config = TrainConfig(task=task, model=args.model, method=args.method, seed=seed, k_shot=k,
                                 init_from=args.init_from if few else None, data_dir=args.data_dir,
                                 max_steps=args.max_steps or (FEWSHOT_STEPS if few else None),
                                 eval_every=args.eval_every or (FEWSHOT_EVAL_EVERY if few else None),
                                 max_eval_examples=args.max_eval_examples, batch_size=args.batch_size,
                                 device=args.device, dtype=args.dtype,
                                 quiet=args.parallel > 1 or args.nproc_per_run > 1,
                                 output_dir=str(root / f"{task}{f'-k{k}' if k else ''}-seed{seed}"))
            runs.append(Run(task, k, seed, config))
    return table, rows, runs


def settings(run: Run) -> dict:
    """The settings `minidept.train` will resolve for the run (its task's, or the options given)."""
    task, config = get_task(run.task), run.config
    pt = config.method == "pt"
    return {"m": "adapter" if config.init_from else (task.l if pt else task.m), "lr_prompt": task.lr_prompt,
            "lr_lowrank": "-" if pt else task.lr_lowrank, "steps": config.max_steps or task.max_steps,
            "batch": config.batch_size or task.batch_size, "max_length": task.max_length}


def measure_step(model_name: str, runs: list[Run], device: str, dtype: str | None) -> dict[tuple, float]:
    """Seconds of one training step (forward, backward) per distinct setting, inputs padded to the maximum
    length: an upper bound for the batches of real text, which are padded to their own longest input."""
    backbone, _ = load_backbone(model_name, dtype=DTYPES[dtype or "float32"], device=device)
    seconds = {}
    for run in runs:
        s = settings(run)
        key = (run.config.method, s["m"], s["batch"], s["max_length"])
        if key in seconds:
            continue
        m = None if s["m"] == "adapter" or run.config.method == "pt" else s["m"]
        model = PromptedModel(backbone, PromptConfig(method=run.config.method, m=m, max_length=s["max_length"]))
        dev = model.prompt.P.device
        ids = torch.randint(3, min(backbone.config.vocab_size, 1000), (s["batch"], s["max_length"]), device=dev)
        labels = ids[:, :4].clone() if backbone.is_encoder_decoder else ids.masked_fill(
            torch.arange(s["max_length"], device=dev) < s["max_length"] - 4, -100)
        for _ in range(2):   # the first step warms up (allocations, kernels)
            started = time.perf_counter()
            model(ids, torch.ones_like(ids), labels=labels).backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds[key] = time.perf_counter() - started
    return seconds


def print_plan(args: ReproduceConfig, table: str, runs: list[Run]) -> None:
    print(f"{TITLES[table]}: {len(runs)} runs of {args.method} on {args.model}, under {runs[0].folder.parent}")
    if table == "fewshot" and not args.init_from:
        print("  note: no --init-from, so every run starts from a fresh prompt; the paper starts from an adapter "
              "trained on MNLI")
    estimate = {}
    if args.model in DEMO_MODELS or Path(args.model).is_dir():
        estimate = measure_step(args.model, runs, args.device, args.dtype)
    lines = [["task", "k", "seed", "m", "lr_prompt", "lr_lowrank", "steps", "batch", "max_length", "status"]
             + (["hours"] if estimate else [])]
    total = 0.0
    for run in runs:
        s = settings(run)
        line = [run.task, run.k or "-", run.seed, *s.values(), run.status()]
        if estimate:
            hours = estimate[(run.config.method, s["m"], s["batch"], s["max_length"])] * s["steps"] / 3600
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
    train.log in each run folder. Returns the failures."""
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // (n * nproc))
    # torchrun takes the script's options after "--" (else it reads --m as an abbreviation of its own)
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                                    "-m", "minidept.train", "--"] if nproc > 1 else ["-m", "minidept.train"])
    running: dict[int, tuple[subprocess.Popen, Run]] = {}   # slot -> (process, run)
    failed, queue = [], list(pending)
    try:
        while queue or running:
            for slot in [s for s in range(n) if s not in running][:len(queue)]:
                run = queue.pop(0)
                devices = ",".join(str((slot * nproc + i) % gpus) for i in range(nproc)) if gpus else ""
                env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": devices} if gpus else {})}
                argv = command_line(dataclasses.asdict(_prepare(run))) + ([] if gpus else ["--threads", str(threads)])
                run.folder.mkdir(parents=True, exist_ok=True)
                with open(run.folder / "train.log", "a", encoding="utf-8") as log:
                    process = subprocess.Popen([*launcher, *argv], env=env,
                                               stdout=log, stderr=subprocess.STDOUT)
                running[slot] = (process, run)
                print(f"started {run.folder.name}" + (f" on GPU {devices}" if gpus else ""), flush=True)
            time.sleep(0.2)
            for slot, (process, run) in list(running.items()):
                if process.poll() is not None:
                    del running[slot]
                    print(f"{'finished' if process.returncode == 0 else 'failed'} {run.folder.name}"
                          + ("" if process.returncode == 0 else f" (exit {process.returncode}, see train.log)"),
                          flush=True)
                    failed += [] if process.returncode == 0 else [run.folder.name]
    finally:   # an interruption: every training saves its state at the next step boundary
        for process, _ in running.values():
            process.send_signal(signal.SIGINT)
        for process, _ in running.values():
            process.wait()
    return failed


def collect(table: str, rows: list[tuple], runs: list[Run], method: str) -> dict:
    """The table: per row of the paper our mean over the finished seeds, the paper's number, the difference."""
    column = {"pt": 0, "dept": 1}.get(method)   # the paper's PT and DePT numbers, in this order in each row
    lines = []
    for task, k, metric, *paper in rows:
        done = [run for run in runs if run.task == task and run.k == k and run.status() == "done"]
        values = [json.loads((run.folder / RESULTS_FILE).read_text())["test"].get(metric) for run in done]
        values = [v for v in values if v is not None]
        ours = sum(values) / len(values) if values else None
        published = paper[column] if column is not None else None
        lines.append({"task": task, "k": k, "metric": metric, "seeds": [run.seed for run in done],
                      "values": values, "ours": ours, "paper": published,
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
    md = [f"# {result['table']}: {result['method']} ({result['model']})", "",
          "Test split of docs/methods.md section 6; ours: the mean over the finished seeds; the paper's: "
          "docs/methods.md section 7 (MRPC, QQP and CB in Table 1 are test accuracy)."
          + ("" if result["init_from"] else " No --init-from: the prompts started fresh (the paper transfers "
             "from an adapter trained on MNLI).") * (result["table"] == TITLES["fewshot"]), "",
          "| task | k | metric | seeds | ours | paper | ours - paper |", "|---|---|---|---|---|---|---|"]
    for line in result["rows"]:
        md.append(f"| {line['task']} | {line['k'] or '-'} | {line['metric']} | {len(line['seeds'])} | "
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
    figure.savefig(stem.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    prog = "python -m minidept.reproduce"
    try:
        args = parse(ReproduceConfig, argv, prog, __doc__.split("\n\n")[0], positional="table")
        table, rows, runs = plan(args)
        if args.dry_run:
            print_plan(args, table, runs)
            return 0
        pending = [run for run in runs if run.status() != "done"]
        print(f"{TITLES[table]}: {len(runs)} runs under {runs[0].folder.parent}, {len(runs) - len(pending)} "
              f"already finished (skipped)", flush=True)
        failed = (run_in_subprocesses(pending, args.parallel, args.nproc_per_run)
                  if args.parallel > 1 or args.nproc_per_run > 1 else run_in_process(pending))
        result = {**collect(table, rows, runs, args.method), "model": args.model, "init_from": args.init_from}
        stem = runs[0].folder.parent.parent / table
        write_table(result, stem)
        print((stem.with_suffix(".md")).read_text(), end="")
        if failed:
            print(f"{len(failed)} run(s) did not finish: {', '.join(failed)}")
            return 1
    except KeyboardInterrupt:
        print("interrupted: every started run saved its state; run the same command again to continue")
        return 130
    except SystemExit as exit:   # --help, or a bad option already reported
        return exit.code
    except ValueError as error:  # a user's mistake: one line
        return fail(prog, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
