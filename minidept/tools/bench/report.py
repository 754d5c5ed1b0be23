"""What the benchmark prints and writes: ratios, the table, the plot, records merged with an earlier run."""

from __future__ import annotations

import json
from pathlib import Path

from .workloads import BACKBONES, MAX_LENGTH, REGIMES, SHORT_REGIMES, SWEEP, WORKLOADS, parse_method


# --------------------------------------------------------------------------- #
# Ratios and the table
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


def regime_label(r: dict) -> str:
    """The regime as the table shows it: `pad256` is every input padded to s, named with the s it had
    (--length; --quick pads to 64). Records written before the length was recorded had 256."""
    return f"pad{r.get('length', MAX_LENGTH)}" if r["regime"] == "pad256" else r["regime"]


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(records: list[dict]) -> str:
    """One line per record: a Markdown table, readable on stdout and pasteable into docs."""
    head = ["backbone", "workload", "regime", "method", "impl", "tokens", "s/step", "spread", "samples/s", "memory MB",
            "time/PT", "mem/PT", "time/peer", "mem/peer", "dyn/padded"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if "error" in r:
            cells = [r["backbone"], r["workload"], regime_label(r), r["method"], r["impl"], "error: " + r["error"]]
            cells += [""] * (len(head) - len(cells))
        else:
            tokens = r.get("input_tokens", 0) + r.get("prompt_tokens", 0)
            cells = [r["backbone"], r["workload"], regime_label(r), r["method"], r["impl"], f"{tokens:.0f}",
                     fmt(r["step_s"], 3), f"{r['step_spread']:.0%}" if "step_spread" in r else "-",
                     fmt(r["samples_per_s"], 1), fmt(r["memory_mb"], 0),
                     fmt(r.get("time_vs_pt")), fmt(r.get("memory_vs_pt")), fmt(r.get("time_vs_peer")),
                     fmt(r.get("memory_vs_peer")), fmt(r.get("speed_vs_pad256"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Reference figures: the paper's ratios beside ours
# --------------------------------------------------------------------------- #

# The DePT paper's efficiency figures (section 4.4, Figures 3 and 4: T5 on a GPU with the official
# code, batch 16, inputs padded to 256), printed beside the same ratios measured here.
PAPER_TRAIN = "about 0.75 (m > 20)"   # DePT / PT l = 100, training time and memory
PAPER_INFER = {"t5-small": "1.07 (178.3 / 167.3)", "t5-base": "1.13"}   # samples/s, DePT m = 20 / PT


def paper_rows(records: list[dict]) -> list[tuple[str, str, float | None, float | None]]:
    """(ratio, the paper's figure, minidept, peer) for each ratio here that the paper reports too: inputs
    padded to s = 256, as the paper's (shorter padding, such as --quick's 64, has no figure to stand beside)."""
    key = {record_key(r): r for r in records if "error" not in r and r.get("length", MAX_LENGTH) == MAX_LENGTH}

    def ratio(backbone, workload, method, impl, field):
        record = key.get((backbone, workload, "pad256", method, impl))
        return None if record is None else record.get(field)

    rows = []
    for backbone in ("t5-small", "t5-base"):
        trained = {parse_method(r["method"]) for r in key.values()
                   if (r["backbone"], r["workload"], r["regime"]) == (backbone, "train", "pad256")}
        for method in sorted((m for m in trained if m.kind == "dept" and m.length > 20), key=lambda m: m.length):
            for field, what in (("time_vs_pt", "time"), ("memory_vs_pt", "memory")):
                ours, theirs = (ratio(backbone, "train", method.name, impl, field) for impl in ("minidept", "peer"))
                if ours is not None or theirs is not None:
                    rows.append((f"{backbone} train {what}, {method.name} / pt", PAPER_TRAIN, ours, theirs))
        if backbone in PAPER_INFER:  # samples/s is batch / step time: the inverse of the time ratio
            ours, theirs = (_ratio(1.0, ratio(backbone, "infer", "dept20", impl, "time_vs_pt"))
                            for impl in ("minidept", "peer"))
            if ours is not None or theirs is not None:
                rows.append((f"{backbone} infer samples/s, dept20 / pt", PAPER_INFER[backbone], ours, theirs))
    return rows


def format_references(records: list[dict]) -> str:
    """The paper's figures beside the ratios measured here (an empty string when none applies)."""
    rows = paper_rows(records)
    if not rows:
        return ""
    lines = ["Reference figures: the DePT paper (section 4.4, Figures 3-4; T5 on a GPU, batch 16, inputs padded "
             "to 256)", "", "| ratio | paper | minidept | peer |", "|---|---|---|---|"]
    lines += [f"| {name} | {paper} | {fmt(ours)} | {fmt(theirs)} |" for name, paper, ours, theirs in rows]
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


def records_to_keep(path: str, planned: set[tuple]) -> list[dict]:
    """--merge: the records already in `path` for the combinations (`record_key`) this run does not measure."""
    if not Path(path).is_file():
        return []
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
        return [r for r in records if record_key(r) not in planned]
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"--merge: {path} is not a list of benchmark records ({type(error).__name__}: {error}); "
                         "fix it, or write to another --json file") from None
