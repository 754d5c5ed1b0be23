"""The embedded demo: the synthetic task and the demo run (the demo models are tested in test_models.py)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from minidept.tools import demo
from minidept.data.load import encode_examples, load_splits
from minidept.io.backbones import EOS_ID, byte_tokenizer
from minidept.data.tasks import NEGATIVE, POSITIVE, format_example, get_task, synthetic_sentiment


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_synthetic_task_is_fixed_balanced_and_consistent():
    splits, again = synthetic_sentiment(), synthetic_sentiment()
    assert splits == again
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 200, "test": 200}
    for examples in splits.values():
        assert sum(e["label"] for e in examples) == len(examples) // 2
        for e in examples:
            words = set(e["sentence"].split())
            assert words & set(POSITIVE if e["label"] else NEGATIVE)
            assert not words & set(NEGATIVE if e["label"] else POSITIVE)
    task = get_task("demo")
    assert format_example(task, {"sentence": "it was fun", "label": 1}) == ("sentence: it was fun", "1")
    rows, truncated = encode_examples(task, splits["train"], byte_tokenizer(), task.max_length, False, EOS_ID)
    assert truncated == 0 and rows[0]["labels"] == [ord(rows[0]["target"]) + 3, EOS_ID]


def test_demo_task_settings_and_splits():
    # the examples of the demo before it moved to minidept.tasks, bit for bit (hash of their JSON)
    digest = lambda x: hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()[:16]  # noqa: E731
    assert digest(synthetic_sentiment()) == "86ccb968706975ab"
    assert digest(synthetic_sentiment(sizes=(("train", 10, 7),))["train"]) == "3224c57b45b5485a"
    task = get_task("demo")
    assert (task.l, task.m, task.max_length, task.max_steps) == (20, 4, 64, 200)
    assert load_splits(task) == synthetic_sentiment() == task.make_splits()
    # one split alone (what make_examples(n, seed) gave): each split depends on its own (size, seed) only
    assert synthetic_sentiment(sizes=(("train", 2000, 1),))["train"] == synthetic_sentiment()["train"]
    assert synthetic_sentiment(sizes=(("test", 200, 3),))["test"] == synthetic_sentiment()["test"]
    assert synthetic_sentiment(sizes=(("train", 10, 5),))["train"] != synthetic_sentiment(sizes=(("train", 10, 6),))["train"]


def test_demo_learns_on_the_frozen_pocket_model(capsys, tmp_path):
    assert demo.main(["--steps", "40", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "frozen pocket-t5" in out and "nothing downloaded" in out
    assert out.count("identical predictions") == 2
    assert "PT (vanilla prompt tuning): l=20" in out and "DePT: m=4, r=12" in out   # r = (20 - 4) * 256 / (64 + 256)
    for method in ("pt", "dept"):
        assert (tmp_path / method / "adapter.safetensors").is_file()
        assert (tmp_path / method / "results.json").is_file()
    # the loss printed for each method goes down from its first to its last record
    for line in (line for line in out.splitlines() if line.strip().startswith("loss")):
        losses = [float(item.split(": ")[1]) for item in line.split("  ")[1:] if ": " in item]
        assert losses[-1] < losses[0], line
    # each method learns the task: far above chance and above the untrained prompt (measured at 40 steps:
    # PT 54.5 -> 100, DePT 69.5 -> 100), every score with its example count
    scores = re.findall(r"test accuracy ([\d.]+) before training -> ([\d.]+) after .* on 200 examples", out)
    assert len(scores) == 2, out
    for before, after in scores:
        assert float(after) >= 90 and float(after) > float(before) + 20, (before, after)
    from minidept.run.evaluate import load_for_inference
    from minidept.run.predict import label_texts
    for method in ("pt", "dept"):
        model, tokenizer, _ = load_for_inference(tmp_path / method)
        assert model.backbone.name_or_path == "pocket-t5"          # the adapter records the shipped name
        labels = label_texts(model, tokenizer, get_task("demo"), [["the film was superb"], ["it was awful"]])
        assert labels == ["1", "0"]


def test_demo_runs_on_the_pocket_gpt2(capsys):
    # the demo describes any backbone, and names the shipped model it ran on in its closing hint
    assert demo.main(["--model", "pocket-gpt2", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "backbone  GPT-2, d_model 256, 2 layers" in out and out.count("identical predictions") == 2
    assert "--task sst2 --model pocket-gpt2 --data-dir DATA" in out


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads 0: use 1 to"),
    (["--steps", "1"], "--steps must be at least 2"),
])
def test_demo_mistakes_are_one_line(argv, message, capsys):
    from minidept.tools import demo
    assert demo.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_demo_refuses_a_folder_that_holds_its_runs_and_a_file_as_folder(tmp_path, capsys):
    from minidept.tools import demo
    (tmp_path / "runs" / "pt").mkdir(parents=True)
    assert demo.main(["--output-dir", str(tmp_path / "runs")]) == 2
    assert "already holds the demo's runs" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert demo.main(["--output-dir", str(tmp_path / "file" / "x")]) == 2
    assert "cannot write there" in capsys.readouterr().err
