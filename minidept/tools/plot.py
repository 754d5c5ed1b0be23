"""Plot training runs side by side: `python -m minidept.plot RUN [RUN ...] -o runs.png`.

Four panels from each run's metrics.jsonl, one colour per run (PT against DePT, say):
the training loss, the prompt's learning rate, the learning rate of A and B (ADePT's
offset network, EPT's projections; PT has none), and the validation metric that picks
the best adapter, all against the step. The axes are linear, so warmup and linear
decay look straight. For accuracy a dotted line marks uniform guessing (100 / classes),
drawn over the hollow points so that a run sitting at chance still shows it. A panel
with nothing to draw says so (no evaluation yet; PT only: no A, B). Needs matplotlib:
pip install 'minidept[plot]'.
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ..io.checkpoint import atomic_write, read_config
from ..run.cli import command, UsageError, check_writable, option, parse
from ..data.tasks import get_task
from ..io.checkpoint import CONFIG_FILE
from ..run.folder import LOG_FILE, log_records_until


@dataclass
class PlotConfig:
    runs: list = option(None, "run folders of minidept.train", nargs="+", metavar="RUN")
    output: str = option("runs.png", "the picture to write (default runs.png)", flags=("-o",))


def read_run(folder: str | Path) -> tuple[dict, list[dict], list[dict]]:
    """(the run's settings, its training records, its validation records) from a run folder."""
    folder = Path(folder)
    if not (folder / LOG_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise UsageError(f"{folder} holds no {LOG_FILE} and {CONFIG_FILE}: pass run folders of minidept.train")
    # a run being written (or killed) may end in half a line: log_records_until drops it
    records = [json.loads(line) for line in log_records_until(folder / LOG_FILE, math.inf)]
    run = read_config(folder).get("run", {})
    if "task" not in run:
        raise UsageError(f"{folder / CONFIG_FILE} has no run settings: pass run folders of minidept.train")
    return run, [r for r in records if "loss" in r], [r for r in records if r.get("split") == "validation"]


def plot_runs(folders: list) -> "matplotlib.figure.Figure":  # noqa: F821
    """The figure of `folders` (no window, no global pyplot state): `.savefig(path)` writes it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("plot needs matplotlib: pip install 'minidept[plot]'") from None
    figure = Figure(figsize=(18, 3.8), layout="constrained")
    loss, lr_prompt, lr_lowrank, score = figure.subplots(1, 4)
    chance = set()
    for color, folder in enumerate(folders):
        run, train, validation = read_run(folder)
        label, style = Path(folder).name, dict(color=f"C{color}")
        steps = [r["step"] for r in train]
        loss.plot(steps, [r["loss"] for r in train], label=label, **style)
        lr_prompt.plot(steps, [r["lr_prompt"] for r in train], label=label, **style)
        if run.get("method") != "pt":
            lr_lowrank.plot(steps, [r["lr_lowrank"] for r in train], label=label, **style)
        task = get_task(run["task"])
        metric = task.metrics[0]   # the one that picks the best adapter
        if not validation:
            continue
        score.plot([r["step"] for r in validation], [r.get(metric) for r in validation], marker="o",
                   markerfacecolor="none", label=f"{label} ({metric})", **style)
        if metric == "accuracy":
            chance.add(100 / task.num_classes)
    for level in sorted(chance):   # on top of the runs' points, on the whole percent scale
        score.axhline(level, color="black", linestyle=":", linewidth=1, zorder=3, label=f"uniform guess {level:.0f}")
        score.set_ylim(0, 100)
    for ax, title, empty in ((loss, "training loss (mean over each record)", "no training record yet"),
                             (lr_prompt, "learning rate of the prompt", "no training record yet"),
                             (lr_lowrank, "learning rate of A, B (offset network)", "PT has no A, B"),
                             (score, "validation metric", "no evaluation yet")):
        ax.set(xlabel="step", title=title)
        if ax.lines:
            ax.legend(fontsize=8)
        else:   # nothing to draw: say why, on a bare panel
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="gray")
            ax.set(xticks=[], yticks=[])
    return figure


@command("python -m minidept.plot")
def main(argv: list[str] | None, prog: str) -> int | None:
    args = parse(PlotConfig, argv, prog, __doc__.split("\n\n")[0], positional="runs")
    check_writable(args.output, "-o")
    buffer = io.BytesIO()
    plot_runs(args.runs).savefig(buffer, format=Path(args.output).suffix[1:] or "png", dpi=120)
    try:
        atomic_write(args.output, buffer.getvalue())
    except OSError as error:   # a full disk: the picture is not written, nothing else changed
        raise UsageError(f"-o {args.output}: cannot write it ({error.strerror}); free some space or choose "
                         "another file") from None
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
