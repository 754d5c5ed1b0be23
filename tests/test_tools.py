"""Runs people can plot and watch: `minidept.plot`, `--report-to tensorboard|wandb` (the packages stubbed),
and the console scripts declared in pyproject.toml."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest

from minidept.tools import plot
from minidept.run import train as T

REPO = Path(__file__).resolve().parents[1]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / T.LOG_FILE).read_text().splitlines()]


# --------------------------------------------------------------------------- #
# python -m minidept.plot
# --------------------------------------------------------------------------- #

def test_plot_draws_each_run_from_its_log(demo_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [demo_runs["pt"], demo_runs["dept"]]
    assert plot.main([str(runs[0]), str(runs[1]), "-o", str(tmp_path / "runs.png")]) == 0
    assert f"wrote {tmp_path / 'runs.png'}" in capsys.readouterr().out
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss, lr_prompt, lr_lowrank, score = plot.plot_runs(runs).axes
    for i, run in enumerate(runs):
        train = [r for r in records(run) if "loss" in r]
        validation = [r for r in records(run) if r.get("split") == "validation"]
        assert list(loss.lines[i].get_xdata()) == [r["step"] for r in train] == [2, 4, 6]
        assert list(loss.lines[i].get_ydata()) == [r["loss"] for r in train]
        assert list(lr_prompt.lines[i].get_ydata()) == [r["lr_prompt"] for r in train]
        assert list(score.lines[i].get_xdata()) == [r["step"] for r in validation] == [3, 6]
        assert list(score.lines[i].get_ydata()) == [r["accuracy"] for r in validation]
        assert score.lines[i].get_markerfacecolor() == "none"        # hollow: the chance line shows through
    assert [line.get_label() for line in lr_lowrank.lines] == ["dept"]   # PT has no A and B
    assert list(lr_lowrank.lines[0].get_ydata()) == [r["lr_lowrank"] for r in records(runs[1]) if "loss" in r]
    chance = score.lines[-1]
    assert list(chance.get_ydata()) == [50, 50] and chance.get_zorder() > score.lines[0].get_zorder()
    assert score.get_ylim() == (0, 100)
    assert all(ax.get_yscale() == "linear" for ax in (loss, lr_prompt, lr_lowrank, score))   # decay looks straight


def test_plot_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert plot.main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)      # as if matplotlib were not installed
    assert plot.main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == ("python -m minidept.plot: error: plot needs matplotlib: "
                                       "pip install 'minidept[plot]'\n")


def test_a_pt_run_not_evaluated_yet_plots_without_warnings_and_says_so(demo_runs, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "pt"
    shutil.copytree(demo_runs["pt"], run)
    (run / T.LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in records(demo_runs["pt"]) if "loss" in r))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # matplotlib's "No artists with labels found to put in legend" among them
        loss, lr_prompt, lr_lowrank, score = plot.plot_runs([run]).axes
        assert plot.main([str(run), "-o", str(tmp_path / "pt.png")]) == 0
    assert [text.get_text() for text in score.texts] == ["no evaluation yet"] and not score.lines
    assert list(score.get_yticks()) == [] and score.get_legend() is None
    assert [text.get_text() for text in lr_lowrank.texts] == ["PT has no A, B"] and lr_lowrank.get_legend() is None
    assert not loss.texts and loss.get_legend() is not None


def test_plot_to_a_read_only_folder_or_a_full_disk_is_one_line_and_writes_nothing(
        demo_runs, full_disk, read_only, capsys):
    pytest.importorskip("matplotlib")
    before = {path.name: path.stat().st_size for path in full_disk.iterdir()}
    for out in (read_only / "runs.png", full_disk / "runs.png"):
        assert plot.main([str(demo_runs["pt"]), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"python -m minidept.plot: error: -o {out}") and err.count("\n") == 1, err
    assert list(read_only.iterdir()) == [] and {path.name: path.stat().st_size for path in full_disk.iterdir()} == before


# --------------------------------------------------------------------------- #
# --report-to: the records of metrics.jsonl, sent on (the packages stubbed)
# --------------------------------------------------------------------------- #

@pytest.fixture
def fake_reporters(monkeypatch):
    """Stand-ins for torch.utils.tensorboard and wandb that remember what they were sent."""
    sent = {"tensorboard": [], "wandb": [], "closed": []}

    class SummaryWriter:
        def __init__(self, log_dir):
            sent["log_dir"] = log_dir

        def add_scalar(self, tag, value, step):
            sent["tensorboard"].append((step, tag, value))

        def flush(self):
            pass

        def close(self):
            sent["closed"].append("tensorboard")

    class Run:
        def log(self, scalars, step):
            sent["wandb"].extend((step, tag, value) for tag, value in scalars.items())

        def finish(self):
            sent["closed"].append("wandb")

    def init(**kwargs):
        sent.setdefault("wandb_init", []).append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return sent


@pytest.mark.parametrize("to", ["tensorboard", "wandb"])
def test_report_to_sends_the_records_of_metrics_jsonl(to, fake_reporters, tmp_path):
    out = tmp_path / "run"
    assert T.main(["--task", "demo", "--model", "demo", "--max-steps", "4", "--eval-every", "2", "--log-every", "2",
                   "--max-eval-examples", "8", "--threads", "1", "--output-dir", str(out), "--quiet",
                   "--report-to", to]) == 0
    expected = [(r["step"], f"{r.get('split', 'train')}/{key}", value) for r in records(out)
                for key, value in r.items() if key not in ("step", "split", "best", "best_step", "elapsed", "examples")]
    assert fake_reporters[to] == expected and len(expected) > 10
    assert {"train/loss", "train/lr_prompt", "validation/accuracy", "test/accuracy"} <= {tag for _, tag, _ in expected}
    assert fake_reporters["closed"] == [to, to]                      # the training records, then the test record
    if to == "tensorboard":
        assert fake_reporters["log_dir"] == str(out / "tensorboard")
    else:
        first, second = fake_reporters["wandb_init"]
        assert first["id"] == second["id"] and first["resume"] == "allow" and first["config"]["task"] == "demo"
    assert "report_to" not in json.loads((out / T.CONFIG_FILE).read_text())["run"]   # how to run, not what


@pytest.mark.parametrize("to", ["tensorboard", "wandb"])
def test_report_to_without_the_package_names_the_extra(to, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}[to], None)
    assert T.main(["--task", "demo", "--model", "demo", "--output-dir", str(tmp_path / "run"),
                   "--report-to", to]) == 2
    assert capsys.readouterr().err == (f"python -m minidept.train: error: --report-to {to} needs the {to} package: "
                                       f"pip install 'minidept[{to}]'\n")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- #
# Console scripts
# --------------------------------------------------------------------------- #

def test_console_scripts_resolve_to_the_commands():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    assert {"minidept-train", "minidept-evaluate", "minidept-predict", "minidept-bench", "minidept-demo",
            "minidept-export", "minidept-push", "minidept-plot", "minidept-reproduce", "minidept-pretrain"} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        assert callable(main), name
        assert module.replace(".__main__", "").rsplit(".", 1)[-1] == name.removeprefix("minidept-")
    assert {"plot", "tensorboard", "wandb"} <= set(project["optional-dependencies"])
    assert "scipy" in project["optional-dependencies"]["dev"]         # tests/test_metrics.py compares with it


def test_the_library_imports_no_reference_implementation_and_optional_packages_only_when_used():
    """docs/usage.md: nothing under minidept/ (the benchmark aside) imports transformers or peft; matplotlib,
    tensorboard and wandb are imported inside the function that needs them, never at the top of a module."""
    import ast

    for file in sorted((REPO / "minidept").glob("*.py")):
        tree = ast.parse(file.read_text())
        imported = [(node, alias.name if isinstance(node, ast.Import) else node.module or "")
                    for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [None])]
        for node, name in imported:
            assert name.split(".")[0] not in ("transformers", "peft"), f"{file.name} imports {name}"
            if name.split(".")[0] in ("matplotlib", "wandb") or name.startswith("torch.utils.tensorboard"):
                assert node not in tree.body, f"{file.name} imports {name} at the top"


def test_an_editable_install_puts_the_clone_first():
    """pyproject's package-dir makes setuptools' editable install a path entry (not a finder), so a folder
    named minidept in the current directory (the clone, seen from its parent) cannot shadow the package."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"": "."} and not (REPO / "__init__.py").exists()
