"""Efficiency benchmark: what a shorter prompt saves, and minidept against transformers + peft.

    python -m minidept.bench --json docs/benchmarks.json --plot docs/benchmarks.png   # the methods table, ~40 min
    python -m minidept.bench models --json docs/benchmarks-models.json   # our T5 / GPT-2 vs transformers, ~15 min
    python -m minidept.bench --quick          # a reduced set in under 2 minutes (CI smoke test)
    python -m minidept.bench --backbones t5-base --workloads train --methods pt,dept60 \\
        --json runs/bench.json --merge        # some rows only, merged into an earlier run
    python -m minidept.bench --device cuda --dtype bfloat16 ...   # on a GPU (see docs/benchmarks.md)
    python -m minidept.bench --backbones llama-100m --workloads train --activation-checkpointing ...

What is measured (the setting of the DePT paper, section 4.4 and Figures 3-4):
- Backbones `t5-small`, `t5-base`, `gpt2` and `llama-100m` (a Llama 2-style
  config of about 100M parameters with grouped-query attention), their
  hyper-parameters built in (`BACKBONE_CONFIGS` in workloads.py; `--configs-dir
  DIR` reads `<name>.config.json` files instead), with random weights, float32
  (`--dtype bfloat16`: the backbone in bfloat16, the adapters still float32;
  `--activation-checkpointing`: training recomputes each frozen block), on
  the CPU with `torch.set_num_threads(--threads)` or, with `--device cuda`, on a
  GPU (each step synchronised before the clock is read; memory from the CUDA
  allocator's peak instead of the resident size). No data folder is needed.
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
  and `adept60-folded` (ADePT's offset folded into the embedding table: the
  same computation as PT with 60 tokens). Which rows a plain run measures is
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
Ratios: method / PT and minidept / peer; below the table, the DePT paper's
figures beside the ratios it reports too (docs/benchmarks.md discusses them).
Timings on a shared machine are noisy: look at the load average before trusting
a run.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import torch

from ...run.cli import Parser, UsageError, check_writable, fail
from ..files import try_writing
from .measure import run_worker
from .report import (add_ratios, fmt, format_references, format_table, plot, records_to_keep, regime_label,
                     sort_key)
from .workloads import (BACKBONES, DTYPES, MAX_LENGTH, REGIMES, SHORT_REGIMES, SWEEP, WORKLOADS, Spec,
                        parse_method, peer_supports, read_backbone_configs, write_json, write_random_backbone)

IMPLS = ("minidept", "peer")
DEVICES = ("cpu", "cuda")
BATCH = {"train": 16, "infer": 32}
# The default run (36 minutes on 2 cores in the last record): every method on t5-small, where a step is
# cheap; on t5-base the paper's Figure 3 sweep (training time and memory against m); elsewhere the
# no-prompt floor, PT, DePT m = 20 (the paper's inference figure) and m = 60 (the published DePT),
# and ADePT folded beside PT l = 60, which computes the same. --methods, --peer-methods and
# --dynamic-methods replace these choices.
DEFAULT_PLAN = {
    ("t5-small", "train"): ("none", "pt", *SWEEP, "adept60", "ept60"),
    ("t5-small", "infer"): ("none", "pt", "pt60", *SWEEP, "adept60", "adept60-folded", "ept60"),
    ("t5-base", "train"): ("none", "pt", *SWEEP),
    ("t5-base", "infer"): ("none", "pt", "pt60", "dept20", "dept60", "adept60-folded"),
    ("gpt2", "train"): ("none", "pt", "dept60"),
    ("gpt2", "infer"): ("none", "pt", "pt60", "dept20", "dept60", "adept60-folded"),
    ("llama-100m", "train"): ("none", "pt", "dept60"),
    ("llama-100m", "infer"): ("none", "pt", "dept20", "dept60"),
}
PEER_METHODS = {"train": ("none", "pt", "dept60"), "infer": ("none", "pt")}  # the peer's steps are the slow ones
DYNAMIC_METHODS = {"train": ("pt", "dept60"), "infer": ()}  # the realistic regime: PT and the published DePT


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
                                          args.device, args.dtype, args.activation_checkpointing))
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
    parser = Parser(   # one-line errors, as every command's
        prog="python -m minidept.bench", description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="docs/benchmarks.md explains every figure and holds the last measured tables.")
    parser.add_argument("bench", nargs="?", default="methods", choices=("methods", "models"),
                        help="methods (default): training and inference steps of the prompt methods, minidept "
                             "beside transformers + peft; models: our T5 and GPT-2 against transformers' "
                             "(full forward + backward, forward, generation)")
    parser.add_argument("--backbones", type=_csv(BACKBONES, "backbone"), default=None,
                        help=f"comma-separated, from {','.join(BACKBONES)} (default: all; --quick and models: t5-small,gpt2)")
    parser.add_argument("--workloads", type=_csv(WORKLOADS + ("generate",), "workload"), default=None,
                        help="train,infer (models also: generate)")
    parser.add_argument("--regimes", type=_csv(REGIMES, "regime"), default=list(REGIMES),
                        help="pad256 (all inputs padded to s), dynamic (each batch to its longest row), "
                             "grouped (dynamic, batches of similar length)")
    parser.add_argument("--methods", type=_methods, default=None,
                        help="e.g. none,pt,dept60,adept60,ept60,pt60,adept60-folded (default: every method on "
                             "t5-small; on t5-base the paper's sweep none,pt,dept0..dept80 for training and "
                             "none,pt,pt60,dept20,dept60,adept60-folded for inference; on gpt2 none,pt,dept60 for "
                             "training and the same inference methods as t5-base)")
    parser.add_argument("--impls", type=_csv(IMPLS + ("transformers",), "implementation"), default=None,
                        help="minidept and/or peer (transformers + peft)")
    parser.add_argument("--peer-methods", type=_methods, default=None,
                        help="methods measured on the peer too (default: none,pt,dept60 for train, none,pt for "
                             "infer; with --methods: those; it supports none, ptL and deptM)")
    parser.add_argument("--dynamic-methods", type=_methods, default=None,
                        help="methods measured in the dynamic and grouped regimes (default: pt,dept60 for train; with "
                             "--methods: those)")
    parser.add_argument("--configs-dir", type=Path, default=None,
                        help="folder of <backbone>.config.json files to use instead of the built-in "
                             "hyper-parameters of t5-small, t5-base and gpt2 (t5-base: t5-small's file with "
                             "t5-base's sizes when the folder has no t5-base.config.json)")
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
    parser.add_argument("--seed", type=int, default=0, help="for the weights, inputs and adapters (default 0)")
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
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="training recomputes each frozen block in the backward pass, in both implementations "
                             "(minidept's --activation-checkpointing; transformers' gradient checkpointing)")
    parser.add_argument("--return-memory", action="store_true",
                        help="leave glibc malloc at its defaults, which unmap large freed blocks so that every "
                             "step faults its memory in again (default: the workers keep freed memory for the "
                             "next step, with MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_=2^40)")
    args = parser.parse_args(argv)

    if args.threads is None:
        args.threads = 1 if args.quick else os.cpu_count()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                     "install a CUDA build of torch on a GPU machine, or use --device cpu")
    if args.merge and not args.json_path:
        parser.error("--merge needs --json PATH (the records to merge with)")
    for option, path in (("--json", args.json_path), ("--plot", args.plot_path)):   # written after long measurements
        try:
            if path:
                check_writable(path, option)
                folder = Path(path).absolute().parent   # its nearest existing folder: nothing is made yet
                try_writing(next(p for p in (folder, *folder.parents) if p.exists()), f"{option} {path}",
                            "another file")
        except ValueError as error:
            parser.error(str(error))
    if args.configs_dir is not None and not args.configs_dir.is_dir():
        parser.error(f"--configs-dir {args.configs_dir}: not a folder; pass a folder of <backbone>.config.json "
                     "files, or leave it out to use the built-in configs")
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
    if any(i in ("peer", "transformers") for i in args.impls) and not peer_available():
        print("transformers / peft not installed: measuring minidept only", file=sys.stderr)
        args.impls = ["minidept"]
    return args


def main(argv=None) -> int:
    prog = "python -m minidept.bench"
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:   # the worker was killed with it; --json holds what was measured before
        return fail(prog, KeyboardInterrupt())
    except OSError as error:    # a full disk while writing --json / --plot
        return fail(prog, UsageError(f"cannot write {error.filename or args.json_path or args.plot_path} "
                                     f"({error.strerror}): free some space or choose another file"))
    except ValueError as error:   # a bad --configs-dir file
        return fail(prog, error)


def run(args) -> int:
    """Measure every planned combination, print the table and write --json / --plot."""
    configs = read_backbone_configs(args.configs_dir, args.backbones)
    specs = plan_models(args) if args.bench == "models" else plan_methods(args)
    info = machine_info(args.threads, args.device)
    print(f"# minidept.bench {args.bench}: {len(specs)} measurements, {args.dtype}, on {info['gpu'] or info['cpu']} "
          f"({info['cores']} cores, {args.threads} threads), torch {info['torch']}, transformers "
          f"{info['transformers']}, peft {info['peft']}, load average {info['load_average']}", flush=True)
    kept = []
    if args.merge:
        kept = records_to_keep(args.json_path, {(s.backbone, s.workload, s.regime, s.method, s.impl) for s in specs})
    records = []
    with tempfile.TemporaryDirectory(prefix="minidept-bench-") as tmp:
        folders = {}
        for name in args.backbones:
            try:
                folders[name] = write_random_backbone(configs[name], Path(tmp) / name, args.seed)
            except (KeyError, TypeError, ValueError) as error:   # a config file that does not describe a model
                raise ValueError(f"backbone {name}: its config cannot build a model ({type(error).__name__}: "
                                 f"{error}); fix {args.configs_dir or 'it'}") from None
        gc.collect()
        for i, spec in enumerate(specs, 1):
            spec.folder, spec.model_type = str(folders[spec.backbone]), configs[spec.backbone]["model_type"]
            started = time.perf_counter()
            record = run_worker(spec, args.worker_timeout)
            record.update(machine=info)
            records.append(record)
            summary = record.get("error") or (f"{record['step_s']:.3f} s/step, {record['samples_per_s']:.1f} "
                                              f"samples/s, {fmt(record['memory_mb'], 0)} MB, load "
                                              f"{record['load_average'][0]:.2f}")
            label = regime_label({"regime": spec.regime, "length": spec.length})
            print(f"[{i}/{len(specs)}] {spec.backbone} {spec.workload} {label} {spec.method} {spec.impl}: "
                  f"{summary} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            if args.json_path:  # written as we go: a long run that stops keeps what it measured
                write_json(Path(args.json_path), sorted(kept + records, key=sort_key))
    records = sorted(kept + records, key=sort_key)
    add_ratios(records)
    print(format_table(records))
    references = format_references(records) if args.bench == "methods" else ""
    if references:
        print()
        print(references)
    if args.json_path:
        write_json(Path(args.json_path), records)
    if args.plot_path and args.bench == "methods":
        Path(args.plot_path).parent.mkdir(parents=True, exist_ok=True)
        plot(records, args.plot_path)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
