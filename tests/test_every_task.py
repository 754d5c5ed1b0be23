"""Every task end to end: the Hub path (a stubbed `datasets.load_dataset`) and local files in the original
release layouts (written by tests/task_files.py) give the same examples, and `python -m minidept.train
--task X` runs on both for each of the 23 task names (two steps on the demo model)."""

from __future__ import annotations

import json

import pytest

from minidept.data import load as data

from minidept.run import predict
from minidept.run import train as T
from minidept.data.load import load_official_splits, load_splits
from minidept.data.tasks import TASKS, format_example
from task_files import HUB, hub_splits, write_layout

NAMES = [name for name in TASKS if name != "demo"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_root(tmp_path_factory):
    """One data folder holding every task's files in its original layout."""
    root = tmp_path_factory.mktemp("data")
    for name in NAMES:
        write_layout(root, name, hub_splits(name))
    return root


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` answering with hub_splits (as `datasets` objects); records what was asked."""
    datasets = pytest.importorskip("datasets")
    asked = []

    def load_dataset(repo, config=None, **kwargs):
        name = next(name for name, ident in HUB.items() if ident == (repo, config))
        asked.append((repo, config))
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)
                                     for split, rows in hub_splits(name).items()})

    monkeypatch.delenv("MINIDEPT_DATA", raising=False)
    monkeypatch.setattr(data, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def test_twenty_three_tasks():
    assert len(NAMES) == 23


@pytest.mark.parametrize("name", NAMES)
def test_hub_and_local_files_give_the_same_examples(name, hub, local_root):
    task = TASKS[name]
    from_hub, local = load_official_splits(name), load_official_splits(name, local_root)
    assert hub == [HUB[name]]
    assert set(from_hub) == set(local)
    for split in local:
        assert [format_example(task, e) for e in from_hub[split]] == [format_example(task, e) for e in local[split]]
        if task.answers:
            assert [task.answers(e) for e in from_hub[split]] == [task.answers(e) for e in local[split]]
        else:
            assert [e["label"] for e in from_hub[split]] == [e["label"] for e in local[split]]
    cast = lambda splits: {k: [format_example(task, e) for e in v] for k, v in splits.items()}  # noqa: E731
    assert cast(load_splits(name)) == cast(load_splits(name, local_root))


def _train(name, out, *extra):
    argv = ["--task", name, "--model", "demo", "--max-steps", "2", "--eval-every", "2", "--max-eval-examples", "3",
            "--eval-batch-size", "8", "--output-dir", str(out), "--quiet", *extra]
    assert T.main(argv) == 0
    results = json.loads((out / T.RESULTS_FILE).read_text())
    assert results["status"] == "done" and results["steps"] == 2
    assert set(results["test"]) == set(TASKS[name].metrics) == set(results["validation"])
    return results


@pytest.mark.parametrize("name", NAMES)
def test_train_from_the_hub(name, hub, tmp_path):
    _train(name, tmp_path / "run")
    config = json.loads((tmp_path / "run" / T.CONFIG_FILE).read_text())
    assert config["run"]["batch_size"] == TASKS[name].batch_size
    assert config["run"]["max_length"] == TASKS[name].max_length


@pytest.mark.parametrize("name", NAMES)
def test_train_from_local_files(name, local_root, tmp_path):
    _train(name, tmp_path / "run", "--data-dir", str(local_root))


@pytest.mark.parametrize("name, model", [("nq", "demo-gpt2"), ("record", "demo-llama")])
def test_extractive_tasks_train_on_decoder_only_models(name, model, hub, tmp_path, capsys):
    """Multi-token answers after the cue; the demo models' 256 positions hold the prompt and 180 tokens.
    `predict` prints an extractive task's answer as it is (there are no labels to name)."""
    _train(name, tmp_path / "run", "--model", model, "--max-length", "180")
    capsys.readouterr()
    texts = {"nq": ["Who won?", "Ann won."], "record": ["@placeholder won", "Ann, Bo", "Ann won."]}[name]
    assert predict.main(["--adapter", str(tmp_path / "run"), *texts]) == 0
    assert "not a label" not in capsys.readouterr().out
