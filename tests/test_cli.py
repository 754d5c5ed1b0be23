"""The command lines: options built from dataclasses (minidept.cli), bad input fails fast and writes
nothing; evaluate, predict, resume rules, transfer."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from minidept.run import evaluate as E
from minidept.run import predict as P
from minidept.run import train as T
from minidept.io.adapters import read_adapter
from minidept.run.cli import UsageError, fail, option, parse
from minidept.data.tasks import get_task, synthetic_sentiment
from test_train import config_of, write_tiny_t5

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_t5(data_dir, tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("backbone") / "t5", data_dir)


@pytest.fixture(scope="module")
def sst2_run(tiny_t5, data_dir, tmp_path_factory):
    """A finished 4-step SST-2 run on the tiny T5 (DePT)."""
    out = tmp_path_factory.mktemp("runs") / "sst2"
    assert T.main(["--task", "sst2", "--model", str(tiny_t5), "--data-dir", str(data_dir), "--l", "20",
                   "--m", "4", "--k-shot", "8", "--batch-size", "8", "--max-length", "64", "--max-steps", "4",
                   "--eval-every", "2", "--max-eval-examples", "16", "--output-dir", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert T.main(["--task", "demo", "--model", "demo", "--max-steps", "6", "--eval-every", "3",
                   "--max-eval-examples", "20", "--output-dir", str(out), "--quiet"]) == 0
    return out


# --------------------------------------------------------------------------- #
# minidept.cli: options declared once, as dataclass fields
# --------------------------------------------------------------------------- #

@dataclasses.dataclass
class Options:
    name: str | None = option(None, "a name")
    count: int | None = option(3, "how many")
    rate: float = option(0.5, "a rate")
    fast: bool | None = option(None, "go fast")
    mode: str = option("a", "the mode", choices=("a", "b"))
    words: list = option(None, "bare words")


def test_parse_builds_options_from_the_dataclass():
    assert parse(Options, [], "prog", "d") == Options()                       # nothing given: the defaults
    got = parse(Options, ["--name", "x", "--count", "7", "--rate", "1e-3", "--fast", "--mode", "b"], "prog", "d")
    assert got == Options(name="x", count=7, rate=1e-3, fast=True, mode="b")
    assert type(got.count) is int and type(got.rate) is float                  # types from the annotations
    assert parse(Options, ["one", "two", "--count", "2"], "prog", "d", positional="words") == \
        Options(count=2, words=["one", "two"])
    assert parse(T.TrainConfig, ["--task", "demo", "--max-steps", "20", "--lr-prompt", "0.1", "--group-by-length"],
                 "prog", "d") == T.TrainConfig(task="demo", max_steps=20, lr_prompt=0.1, group_by_length=True)


def test_parse_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit:
        parse(Options, ["--help"], "prog", "What it does.")
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prog") and "What it does." in out
    for flag, text in (("--name", "a name"), ("--count", "how many"), ("--rate", "a rate"), ("--fast", "go fast"),
                       ("--mode", "the mode")):
        assert flag in out and text in out


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--count", "many"], "argument --count: invalid int value: 'many'"),
    (["--rate", "fast"], "argument --rate: invalid float value: 'fast'"),
    (["--mode", "c"], "argument --mode: invalid choice: 'c' (choose from"),
    (["--fast", "yes"], "unrecognized arguments: yes"),                      # a flag takes no value
])
def test_parse_rejects_bad_options_in_one_line_with_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        parse(Options, argv, "prog", "d")
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: ") and err.endswith(" (see --help)\n"), err
    assert message in err
    if "choice" in message:
        assert err.replace("'", "").endswith("(choose from a, b) (see --help)\n"), err


def test_parse_refuses_abbreviated_options(capsys):
    """`--max-step` is not taken for `--max-steps` silently: a typo is an error, whatever it abbreviates."""
    with pytest.raises(SystemExit) as exit:
        parse(Options, ["--cou", "2"], "prog", "d")
    assert exit.value.code == 2 and "unrecognized arguments: --cou 2" in capsys.readouterr().err
    assert T.main(["--task", "demo", "--max-step", "2"]) == 2
    assert "unrecognized arguments: --max-step 2" in capsys.readouterr().err


def test_a_console_script_is_named_as_the_user_ran_it(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/minidept-evaluate", "--help"])
    assert E.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: minidept-evaluate ")
    assert E.main(["--no-such-option"]) == 2
    assert capsys.readouterr().err.startswith("minidept-evaluate: error: ")
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/site-packages/minidept/run/predict.py"])
    assert P.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m minidept.predict ")
    from minidept.tools import demo, plot
    for main, name in ((demo.main, "demo"), (plot.main, "plot")):
        monkeypatch.setattr(sys, "argv", [f"/usr/local/bin/minidept-{name}"])
        assert main(["--help"]) == 0   # every command through cli.command: --help is exit code 0, no SystemExit
        assert capsys.readouterr().out.startswith(f"usage: minidept-{name} ")


def test_parse_reads_real_type_annotations_too():
    plain = dataclasses.make_dataclass("Plain", [("count", int, option(3, "how many")),
                                                 ("rate", float, option(0.5, "a rate")),
                                                 ("fast", bool, option(False, "go fast"))])
    assert parse(plain, ["--count", "7", "--rate", "0.25", "--fast"], "prog", "d") == plain(7, 0.25, True)


def test_a_command_writes_its_warnings_in_one_line_and_leaves_a_python_callers_format(monkeypatch):
    before = warnings.formatwarning
    parse(Options, ["--count", "2"], "prog", "d")                      # main([...]) from Python
    assert warnings.formatwarning is before
    monkeypatch.setattr(warnings, "formatwarning", before)              # undone after the test
    monkeypatch.setattr(sys, "argv", ["prog", "--count", "2"])
    parse(Options, None, "prog", "d")                                   # python -m minidept.COMMAND
    assert warnings.formatwarning("the adapter was trained elsewhere", UserWarning, "x.py", 3) == \
        "prog: warning: the adapter was trained elsewhere\n"


def test_fail_prints_one_line_and_returns_2(capsys):
    assert fail("python -m minidept.x", UsageError("--k=0: must be at least 1")) == 2
    assert capsys.readouterr().err == "python -m minidept.x: error: --k=0: must be at least 1\n"
    assert issubclass(UsageError, ValueError)


def test_help_shows_what_is_required_and_the_defaults(capsys):
    for main in (E.main, P.main):
        assert main(["--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--adapter ADAPTER" in out and "[--adapter ADAPTER]" not in out and "[--task TASK]" in out
        assert "PEFT prompt-tuning folder or Hub repository owner/name" in out
    assert E.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "split to score (default test)" in out and "(the test split by default)" in out
    assert T.main(["--help"]) == 0
    assert "test split too" in " ".join(capsys.readouterr().out.split())   # --max-eval-examples caps both


def test_printed_settings_say_what_each_means_and_scores_their_example_counts(tmp_path):
    printed = []
    config = T.TrainConfig(task="demo", model="demo", max_steps=4, eval_every=4, log_every=2, max_eval_examples=8,
                           stop_at=2, output_dir=str(tmp_path / "run"), quiet=True)
    assert T.train(config, log=printed.append)["status"] == "stopped"
    settings = dict(line.split(None, 1) for line in printed if line.startswith("  "))
    assert "None" not in "\n".join(printed)
    assert (settings["tokenizer"], settings["data_dir"], settings["device"]) == ("the model's", "built in", "cpu")
    printed.clear()
    T.train(dataclasses.replace(config, stop_at=None, resume=True), log=printed.append)
    assert "resumed from step 2 (not evaluated yet)" in printed
    assert printed[-1].endswith("on 8 examples") and " on 8 examples; test accuracy " in printed[-1]
    records = [json.loads(line) for line in (tmp_path / "run" / T.LOG_FILE).read_text().splitlines()]
    assert [(r["split"], r["examples"]) for r in records if "split" in r] == [("validation", 8), ("test", 8)]
    assert json.loads((tmp_path / "run" / T.RESULTS_FILE).read_text())["examples"] == {"validation": 8, "test": 8}


def test_main_of_each_command_exits_2_on_an_unknown_option(capsys):
    from minidept.tools import export, plot, push, reproduce

    for main, prog in ((T.main, "train"), (E.main, "evaluate"), (P.main, "predict"), (export.main, "export"),
                       (push.main, "push"), (plot.main, "plot"), (reproduce.main, "reproduce")):
        required = {"evaluate": ["--adapter", "x"], "predict": ["--adapter", "x"], "export": ["x", "y"],
                    "push": ["x", "a/b"], "plot": ["x"], "reproduce": ["glue"]}.get(prog, [])
        assert main(["--no-such-option"] + required) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"python -m minidept.{prog}: error: unrecognized arguments: --no-such-option")
        assert err.count("\n") == 1


# --------------------------------------------------------------------------- #
# Bad input: a clear message on stderr, exit code 2, nothing written
# --------------------------------------------------------------------------- #

def no_weights(tmp_path, data_dir, model):
    """A real model folder with its weights missing: config.json and tokenizer only."""
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((model / name).read_bytes())
    return ["--task", "sst2", "--model", str(folder), "--data-dir", str(data_dir)]


BAD_INPUT = {
    "unknown task": (lambda tmp, data, model: ["--task", "sst3"], "unknown task 'sst3'"),
    "unknown method": (lambda tmp, data, model: ["--task", "sst2", "--method", "lora"], "invalid choice: 'lora'"),
    "missing data files": (lambda tmp, data, model: ["--task", "cola", "--model", str(model), "--data-dir",
                                                     str(tmp)], "no data files for task 'cola'"),
    "m larger than l": (lambda tmp, data, model: ["--task", "sst2", "--m", "120"], "--m=120 is longer than --l=100"),
    "model folder without weights": (no_weights, "no weights in"),
    "negative steps": (lambda tmp, data, model: ["--task", "sst2", "--max-steps", "0"], "--max-steps=0"),
    "text init with an empty text": (lambda tmp, data, model: ["--task", "sst2", "--init-text", ""],
                                     "needs a non-empty --init-text"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, tmp_path, data_dir, tiny_t5, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_argv, expected = BAD_INPUT[case]
    out = tmp_path / "out"
    code = T.main([*make_argv(tmp_path, data_dir, tiny_t5), "--output-dir", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    first_line = captured.err.strip().splitlines()[0]
    assert first_line.startswith("python -m minidept.train: error:")
    assert expected in captured.err, captured.err
    assert captured.out == ""
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_offline_without_a_local_model_says_how_to_pass_model_and_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("MINIDEPT_DATA", raising=False)
    assert T.main(["--task", "sst2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "--data-dir" in err and "MINIDEPT_DATA" in err
    assert list(tmp_path.iterdir()) == []


def test_existing_run_is_never_overwritten_by_accident(sst2_run, tiny_t5, data_dir, capsys):
    before = {p.name: p.read_bytes() for p in sst2_run.iterdir()}
    argv = ["--task", "sst2", "--model", str(tiny_t5), "--data-dir", str(data_dir), "--output-dir", str(sst2_run)]
    assert T.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resuming with a setting that changes the trajectory is refused, naming it
    assert T.main([*argv, "--resume", "--batch-size", "4"]) == 2
    assert "--batch-size 8 -> 4" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in sst2_run.iterdir()} == before


def test_resume_with_nothing_saved_starts_from_step_0_and_a_plain_start_says_so(tmp_path, capsys):
    """A run killed before its first save (or before it wrote anything) continues with the same command plus
    --resume: from step 0. A plain start in such a folder says exactly that."""
    argv = ["--task", "demo", "--model", "demo", "--max-steps", "2", "--max-eval-examples", "4", "--quiet",
            "--output-dir", str(tmp_path / "run")]
    assert T.main([*argv, "--resume"]) == 0                      # nothing there at all
    assert "no state saved" in capsys.readouterr().out
    (tmp_path / "run" / T.STATE_FILE).unlink()                   # as if killed before the first save
    assert T.main(argv) == 2
    assert "saved no state yet, the same command plus --resume starts it again from step 0" in capsys.readouterr().err
    assert T.main([*argv, "--resume"]) == 0
    assert json.loads((tmp_path / "run" / T.RESULTS_FILE).read_text())["steps"] == 2


def test_resume_of_a_finished_run_takes_its_options_from_config(demo_run, capsys):
    results = json.loads((demo_run / T.RESULTS_FILE).read_text())
    assert T.main(["--output-dir", str(demo_run), "--resume", "--quiet", "--task", "demo"]) == 0
    assert json.loads((demo_run / T.RESULTS_FILE).read_text())["test"] == results["test"]


# --------------------------------------------------------------------------- #
# Outputs, evaluate, predict, transfer
# --------------------------------------------------------------------------- #

def test_run_folder_holds_every_output(sst2_run):
    assert {p.name for p in sst2_run.iterdir()} >= set(T.RUN_FILES)
    config = json.loads((sst2_run / T.CONFIG_FILE).read_text())
    assert config["run"]["task"] == "sst2" and config["run"]["r"] == 5 and config["model_type"] == "t5"
    results = json.loads((sst2_run / T.RESULTS_FILE).read_text())
    assert results["status"] == "done" and "accuracy" in results["test"] and results["steps_per_s"] > 0
    metadata, tensors = read_adapter(sst2_run / T.ADAPTER_FILE)
    assert set(tensors) == {"prompt.P", "offset.A", "offset.B"}      # only the trainable tensors


def test_evaluate_reads_the_run_and_scores_a_split(sst2_run, tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"
    assert E.main(["--adapter", str(sst2_run), "--split", "validation", "--max-examples", "16",
                   "--predictions", str(predictions)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["task"], result["split"], result["examples"]) == ("sst2", "validation", 16)
    best = json.loads((sst2_run / T.RESULTS_FILE).read_text())["validation"]["accuracy"]
    assert result["accuracy"] == best                # same 16 examples, same best adapter
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(lines) == 16 and set(lines[0]) == {"source", "reference", "prediction"}
    assert lines[0]["source"].startswith("sentence: ")


def test_evaluate_prints_the_scores_before_a_failed_write_of_the_predictions(demo_run, tmp_path, capsys,
                                                                            monkeypatch):
    """A full disk at the end loses no scores: they are printed first, then the write fails in one line."""
    def full(path, data):
        raise OSError(__import__("errno").ENOSPC, "No space left on device")
    monkeypatch.setattr(E, "atomic_write", full)
    assert E.main(["--adapter", str(demo_run), "--max-examples", "8", "--predictions", str(tmp_path / "p.jsonl")]) == 2
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["examples"] == 8 and "accuracy" in result
    assert captured.err == (f"python -m minidept.evaluate: error: --predictions {tmp_path / 'p.jsonl'}: could not "
                            "write it (No space left on device); the scores above are complete\n")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_a_device_as_predictions_before_evaluating(demo_run, tmp_path, capsys, monkeypatch):
    import stat
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    monkeypatch.setattr(E, "load_for_inference", lambda *_: pytest.fail("evaluated first"))
    assert E.main(["--adapter", str(demo_run), "--predictions", str(tmp_path / "null")]) == 2
    assert capsys.readouterr().err.endswith("is not a regular file (a device, pipe or socket); choose another file\n")
    assert stat.S_ISCHR((tmp_path / "null").stat().st_mode)


def test_evaluate_says_which_official_file_a_split_comes_from(demo_run, capsys):
    from minidept.data.load import split_source
    assert E.main(["--adapter", str(demo_run), "--max-examples", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "demo's test examples, made by code"
    assert split_source("sst2", "test") == ("glue/SST-2/dev.tsv (the official validation set; the test set's labels "
                                            "are not public)")
    assert split_source("cb", "test") == ("the other half of superglue/CB/val.jsonl (the official validation set), "
                                          "split with seed 42")
    assert split_source("mnli", "validation") == "glue/MNLI/dev_mismatched.tsv (mismatched)"


def test_evaluate_shows_progress_on_stderr(demo_run, capsys):
    model, tokenizer, _ = E.load_for_inference(demo_run)
    rows = [{"input_ids": [5, 6, 1], "labels": [4, 1], "target": "0"}] * 5
    E.predict(model, rows, tokenizer, batch_size=2, progress=True)
    captured = capsys.readouterr()
    assert "predicting" in captured.err and "5/5" in captured.err and captured.out == ""
    E.predict(model, rows, tokenizer, batch_size=2)                  # training's evaluations: no bar
    assert capsys.readouterr().err == ""


MALFORMED_RUN = {
    "not an object": ([1, 2], "must hold a JSON object, found a list"),
    "no run": ({"model_type": "t5"}, '"run" must be an object of the run\'s options, it has none'),
    "run a list": ({"run": ["demo"]}, '"run" must be an object of the run\'s options, found a list'),
    "no task": ({"run": {"model": "demo", "method": "dept"}}, '"run" does not name the run\'s task;'),
    "no task, no method": ({"run": {"model": "demo"}}, "does not name the run's task and method"),
    "model a list": ({"run": {"task": "demo", "model": ["demo"], "method": "dept"}}, "run.model must be text, found "
                                                                                    "a list"),
    "task a number": ({"run": {"task": 3, "model": "demo", "method": "dept"}}, "run.task must be text, found an "
                                                                                "integer (3)"),
    "dtype unknown": ({"run": {"task": "demo", "model": "demo", "method": "dept", "dtype": "int8"}},
                      "run.dtype 'int8' is not one of float32, bfloat16, float16"),
    "model_type a list": ({"run": {"task": "demo", "model": "demo", "method": "dept"}, "model_type": ["t5"]},
                          "model_type must be text, found a list"),
    "method unknown": ({"run": {"task": "demo", "model": "demo", "method": "lora"}}, "run.method 'lora' is not one"),
    "steps true": ({"run": {"task": "demo", "model": "demo", "method": "dept", "max_steps": True}},
                   "run.max_steps must be an integer, found true or false"),
    "nested deeply": ("[" * 100_000 + "]" * 100_000, "cannot be read as a run's config.json (RecursionError: "),
    "not JSON": ("{run", "cannot be read as a run's config.json (JSONDecodeError: "),
}


@pytest.mark.parametrize("case", list(MALFORMED_RUN))
def test_a_malformed_run_config_is_one_line_in_evaluate_and_predict(case, demo_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    content, message = MALFORMED_RUN[case]
    (run / T.CONFIG_FILE).write_text(content if isinstance(content, str) else json.dumps(content))
    for main, extra in ((E.main, ["--max-examples", "4"]), (P.main, ["it was fun"])):
        assert main(["--adapter", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and str(run / T.CONFIG_FILE) in err, err


def test_evaluate_errors(tmp_path, capsys):
    assert E.main(["--adapter", str(tmp_path / "missing.safetensors"), "--task", "sst2"]) == 2
    assert "no adapter at" in capsys.readouterr().err


def test_predict_prints_the_label(demo_run, capsys, monkeypatch):
    model, tokenizer, _ = E.load_for_inference(demo_run)
    [label] = P.label_texts(model, tokenizer, get_task("demo"), [["the film was superb"]])
    assert P.main(["--adapter", str(demo_run), "the film was superb"]) == 0
    named = {"0": "0 (negative)", "1": "1 (positive)"}
    not_a_label = f"{label!r}: the model's raw generation, not a label of demo (0, 1)"
    assert capsys.readouterr().out == named.get(label, not_a_label) + "\n"
    # a model that generates no label at all (an untrained GPT-2 often ends at once): said, not an empty line
    monkeypatch.setattr(P, "label_texts", lambda *_: [""])
    assert P.main(["--adapter", str(demo_run), "the film was superb"]) == 0
    assert capsys.readouterr().out == "'': the model's raw generation, not a label of demo (0, 1)\n"
    monkeypatch.undo()
    assert P.main(["--adapter", str(demo_run / T.ADAPTER_FILE), "--raw", "it was dull"]) == 0
    raw = capsys.readouterr().out
    assert "(" not in raw and raw.endswith("\n")
    # several examples from stdin, one a line
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("it was fun\nit was bad\n"))
    assert P.main(["--adapter", str(demo_run), "--raw"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    # a single-field task given two texts: two examples, a label each
    assert P.main(["--adapter", str(demo_run), "--raw", "it was fun", "it was bad"]) == 0
    assert capsys.readouterr().out.splitlines() == P.label_texts(model, tokenizer, get_task("demo"),
                                                                [["it was fun"], ["it was bad"]])
    # a two-field task given one text: the fields, and how to pass several examples
    assert P.main(["--adapter", str(demo_run), "--task", "rte", "one"]) == 2
    err = capsys.readouterr().err
    assert "takes 2 text(s) per example" in err and "one example a line, its fields separated by tabs" in err


def test_predict_says_how_it_reads_a_terminal_and_what_help_means(demo_run, capsys, monkeypatch):
    class Terminal(__import__("io").StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stdin", Terminal("it was fun\n"))
    assert P.main(["--adapter", str(demo_run), "--raw"]) == 0
    captured = capsys.readouterr()
    assert "reading examples from standard input, one example a line, its fields separated by tabs; end with " \
           "Ctrl-D" in captured.err and len(captured.out.splitlines()) == 1
    assert P.main(["--help"]) == 0
    assert "one example a line, its fields separated by tabs" in " ".join(capsys.readouterr().out.split())


def test_predict_cuts_a_huge_text_before_tokenizing_it(demo_run, monkeypatch):
    """A huge line (2 MB here; 50 MB took 6 GB and 92 s) is cut to what max_length tokens can hold first: the
    tokenizer sees a few thousand characters, and the label is the one of the text cut to max_length tokens."""
    model, tokenizer, _ = E.load_for_inference(demo_run)
    seen = []
    real = type(tokenizer).encode_batch

    class Spy:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def encode_batch(self, texts, *args, **kwargs):
            seen.extend(len(text) for text in texts)
            return real(tokenizer, texts, *args, **kwargs)

    huge = "a gorgeous, witty film " * 90_000
    labels = P.label_texts(model, Spy(), get_task("demo"), [[huge]])
    limit = 4 * model.config.max_length * P.longest_token(tokenizer)
    assert max(seen) <= limit + len("sentence: ") < 10_000
    assert labels == P.label_texts(model, tokenizer, get_task("demo"), [[huge[:limit]]])
    with pytest.raises(UsageError, match="the text '5' is not UTF-8 text"):    # not a str at all (Python API)
        P.label_texts(model, tokenizer, get_task("demo"), [[5]])


def test_predict_agrees_with_evaluate(demo_run, capsys):
    sentence = synthetic_sentiment()["test"][0]["sentence"]
    model, tokenizer, _ = E.load_for_inference(demo_run)
    assert P.main(["--adapter", str(demo_run), "--raw", sentence]) == 0
    label = capsys.readouterr().out.strip()
    assert P.label_texts(model, tokenizer, get_task("demo"), [[sentence]]) == [label]


def test_init_from_starts_from_the_source_adapter(demo_run, tmp_path, capsys):
    source = demo_run / T.ADAPTER_FILE
    _, tensors = read_adapter(source)
    run, model, *_ = T.setup(config_of(["--task", "demo", "--model", "demo", "--init-from", str(source),
                                        "--output-dir", str(tmp_path / "t")]), log=lambda *_: None)
    assert (run.method, run.l, run.m, run.r) == ("dept", 20, 4, 8)     # from the adapter
    assert all(torch.equal(p, tensors[name]) for name, p in model.adapter_state_dict().items())
    assert not (tmp_path / "t").exists()                              # setup writes nothing
    # a source of another shape is refused before anything is written, naming the tensor
    assert T.main(["--task", "demo", "--model", "demo", "--init-from", str(source), "--m", "2",
                   "--output-dir", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert f"--init-from {source} does not fit the model" in err and not (tmp_path / "u").exists()
    assert "prompt.P: (4, 64) in the file, (2, 64) in the model" in err
    assert "use the --method, --l, --m, --r and --max-length of the source run" in err


def test_python_dash_m_train_runs(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "minidept.train", "--task", "demo", "--model", "demo", "--method", "pt",
               "--max-steps", "4", "--eval-every", "2", "--max-eval-examples", "10", "--threads", "1",
               "--output-dir", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "run settings:" in done.stdout and "trainable_parameters" in done.stdout
    settings = {line.split()[0]: line.split(None, 1)[1] for line in done.stdout.splitlines()
                if line.startswith("  ") and len(line.split()) > 1}
    # how many inputs were cut to max_length, out of how many
    assert settings["max_length"] == "64"
    assert settings["truncated"] == "{'train': 0, 'validation': 0, 'test': 0}"
    assert settings["examples"] == "{'train': 2000, 'validation': 10, 'test': 10}"
    assert {p.name for p in out.iterdir()} >= set(T.RUN_FILES)
