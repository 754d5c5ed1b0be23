"""The training run around the loop (`minidept/run/train.py`, `run/folder.py`): resuming without repeating
the options, what may and may not change on resume, and the mistakes caught before anything is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from minidept.loop import Diverged
from minidept.run import train as T
from minidept.run.config import BUILT_IN_STEPS, DEFAULTS, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def demo(out: Path, *extra: str) -> list[str]:
    return ["--task", "demo", "--model", "demo", "--max-steps", "4", "--eval-every", "2", "--max-eval-examples", "8",
            "--batch-size", "8", "--quiet", "--threads", "1", "--output-dir", str(out), *extra]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture
def stopped(tmp_path):
    out = tmp_path / "run"
    assert T.main(demo(out, "--stop-at", "2")) == 0
    return out


def test_every_field_shows_its_default_and_only_derived_ones_are_none():
    assert (DEFAULTS["model"], DEFAULTS["method"], DEFAULTS["seed"], DEFAULTS["eval_batch_size"],
            DEFAULTS["log_every"], DEFAULTS["init"]) == ("t5-base", "dept", 42, 64, 10, "text")
    derived = {name for name, value in DEFAULTS.items() if value is None}
    # each None is derived from something else, and its help says from what
    assert derived == {"task", "tokenizer", "l", "m", "r", "max_length", "init_from", "batch_size", "grad_accum", "max_steps",
                       "warmup_steps", "lr_prompt", "lr_lowrank", "eval_every", "save_every", "max_eval_examples",
                       "k_shot", "data_dir", "output_dir", "stop_at", "threads", "report_to"}
    assert "(default 42)" in " ".join(TrainConfig.__dataclass_fields__["seed"].metadata.values()) or \
        TrainConfig().seed == 42


def test_resume_takes_the_options_from_the_run(stopped, capsys):
    """--resume --output-dir RUN alone: --task and the rest come from its config.json; no false notes."""
    assert T.main(["--resume", "--output-dir", str(stopped), "--quiet", "--threads", "1"]) == 0
    err, out = capsys.readouterr()
    results = json.loads((stopped / T.RESULTS_FILE).read_text())
    assert results["status"] == "done" and results["steps"] == 4
    assert "changed on resume" not in out + err


def test_resume_notes_a_real_change_but_not_the_same_folder_by_another_path(stopped, capsys, monkeypatch):
    monkeypatch.chdir(stopped.parent)
    assert T.main(demo(Path("run"), "--resume", "--log-every", "3")) == 0   # relative path, same folder
    out = capsys.readouterr().out
    assert "--log-every changed on resume: 10 -> 3" in out
    assert "--output-dir changed" not in out


def test_resume_with_another_method_says_the_method_cannot_change(stopped, capsys):
    before = snapshot(stopped)
    assert T.main(demo(stopped, "--resume", "--method", "pt")) == 2
    err = capsys.readouterr().err
    assert "cannot change in a run (--method 'dept' -> 'pt')" in err and err.count("\n") == 1, err
    assert snapshot(stopped) == before


def test_resume_of_an_empty_folder_starts_from_step_0_without_notes(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert T.main(demo(out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "no state saved" in printed and "changed on resume" not in printed


def test_built_in_models_get_short_defaults_with_a_note():
    notes = []
    config, task, *_ = T.resolve(TrainConfig(task="sst2", model="demo", data_dir="."), log=notes.append)
    assert (config.max_steps, config.eval_every, config.warmup_steps) == (BUILT_IN_STEPS, 100, 50)
    assert any("built into minidept" in note and "30,000" in note for note in notes)
    config, *_ = T.resolve(TrainConfig(task="sst2", model="demo", max_steps=40), log=notes.append)
    assert config.max_steps == 40
    config, *_ = T.resolve(TrainConfig(task="sst2", model="./t5-base"), log=notes.append)   # a real model
    assert config.max_steps == 30_000


@pytest.mark.parametrize("extra, message", [
    (["--stop-at", "30"], "--stop-at 30 is after --max-steps 4"),
    (["--threads", "100000"], "--threads 100000: this machine has"),
    (["--l", "1000000000", "--m", "60"], "--l 1000000000: a prompt longer than 4,096 vectors is not taken"),
    (["--max-length", "1000000", "--r", "1000000"], "trainable values, more than 1,000,000,000: lower --l, --m or --r"),
    (["--data-dir", "no/such/folder"], "--data-dir no/such/folder: no such folder ("),
    (["--method", "pt", "--m", "3"], "--m=3 with method 'pt'"),
])
def test_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert T.main(demo(out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_huge_batch_is_refused_before_it_is_built(tmp_path, capsys, data_dir):
    out = tmp_path / "run"
    argv = ["--task", "sst2", "--model", "demo", "--data-dir", str(data_dir), "--batch-size", "100000",
            "--output-dir", str(out)]
    assert T.main(argv) == 2
    err = capsys.readouterr().err
    assert "tokens, more than 1,048,576: lower --batch-size or raise --grad-accum" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_model_folder_is_never_a_run_folder(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "t5"}')
    (model / "model.safetensors").write_bytes(b"weights")
    before = snapshot(model)
    for extra in ([], ["--overwrite"]):
        assert T.main(demo(model, *extra)) == 2
        assert "holds a model (config.json without a run), not a run" in capsys.readouterr().err
    assert snapshot(model) == before


def test_the_lock_never_follows_a_symlink(tmp_path, capsys):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("keep me\n")
    (out / T.LOCK_FILE).symlink_to(victim)
    assert T.main(demo(out)) == 2
    assert "a symlink there is refused" in capsys.readouterr().err
    assert victim.read_text() == "keep me\n"


def test_a_dangling_output_dir_symlink_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.symlink_to(tmp_path / "nowhere")
    assert T.main(demo(out)) == 2
    assert "is a symlink to nothing" in capsys.readouterr().err


def test_init_from_is_recorded_by_absolute_path_and_resumes_from_elsewhere(stopped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "transfer"
    assert T.main(demo(out, "--init-from", "run", "--stop-at", "2")) == 0
    run = json.loads((out / T.CONFIG_FILE).read_text())["run"]
    assert run["init_from"] == str(stopped.resolve())
    monkeypatch.chdir(tmp_path.parent)                       # another directory: the run still resumes
    assert T.main(["--resume", "--output-dir", str(out), "--quiet", "--threads", "1"]) == 0
    assert T.main(demo(out, "--resume", "--init-from", str(stopped))) == 0   # the same source by absolute path


def test_the_test_record_is_written_before_results(tmp_path, monkeypatch):
    """results.json marks a complete run: when it exists, metrics.jsonl already has its test record."""
    out, seen = tmp_path / "run", []
    real = T.write_json
    monkeypatch.setattr(T, "write_json", lambda path, obj: seen.append(
        any(json.loads(line).get("split") == "test" for line in (out / T.LOG_FILE).read_text().splitlines()))
        or real(path, obj))
    assert T.main(demo(out)) == 0
    assert seen == [True]


def test_a_non_finite_loss_at_step_1_blames_the_backbone_not_the_rates(tmp_path, monkeypatch):
    printed = []
    monkeypatch.setattr(T, "train_loop", lambda *a, **k: (_ for _ in ()).throw(Diverged(1, float("nan"), 0.0)))
    config = TrainConfig(task="demo", model="demo", max_steps=4, output_dir=str(tmp_path / "run"), quiet=True)
    assert T.train(config, log=printed.append)["status"] == "diverged"
    assert "The first step has learning rate 0, so the rates are not the cause" in printed[-1]


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "config.json"))
    monkeypatch.setattr(T, "atomic_write", full)
    assert T.main(demo(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and err.count("\n") == 1, err


def test_in_python_the_run_folder_error_names_the_python_words(stopped):
    with pytest.raises(ValueError, match=r"TrainConfig\(resume=True\)"):
        T.setup(TrainConfig(task="demo", model="demo", output_dir=str(stopped)), log=lambda *_: None)


def test_a_second_interrupt_stops_at_once():
    hooks = T.RunHooks.__new__(T.RunHooks)
    hooks.interrupted = hooks.asked = False
    hooks.world, hooks.rank, hooks.log = 1, 0, lambda *_: None
    hooks.config = TrainConfig(quiet=True)
    hooks.on_signal()
    assert hooks.stop_requested()
    with pytest.raises(KeyboardInterrupt):
        hooks.on_signal()


def test_mrqa_trains_32_a_step_as_2_micro_batches_by_default():
    config, *_ = T.resolve(TrainConfig(task="nq", data_dir="."), log=lambda *_: None)
    assert (config.batch_size, config.grad_accum) == (32, 2)
    config, *_ = T.resolve(TrainConfig(task="sst2", data_dir="."), log=lambda *_: None)
    assert (config.batch_size, config.grad_accum) == (32, 1)


def test_environment_data_dir_is_taken_when_not_given(monkeypatch):
    monkeypatch.setenv("MINIDEPT_DATA", os.getcwd())
    config, *_ = T.resolve(TrainConfig(task="sst2"), log=lambda *_: None)
    assert config.data_dir == os.getcwd()


def test_a_peft_folder_with_a_huge_prompt_is_refused_before_anything_is_built(tmp_path):
    import torch
    from minidept import load_model
    from minidept.io.adapters import PEFT_CONFIG, PEFT_WEIGHTS, load_adapter
    from minidept.io.checkpoint import save_tensors, write_json

    folder = tmp_path / "peft"
    write_json(folder / PEFT_CONFIG, {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 100_000, "token_dim": 64,
                                      "num_transformer_submodules": 1})
    save_tensors({"prompt_embeddings": torch.zeros(100_000, 64)}, folder / PEFT_WEIGHTS)
    with pytest.raises(ValueError, match="a prompt of 100,000 vectors is longer than minidept takes"):
        load_adapter(folder, load_model("demo"))


def test_the_tasks_max_length_is_fitted_to_a_decoders_positions_but_a_chosen_one_is_not(tmp_path, capsys):
    """demo-gpt2 has 256 learned positions: a prompt of 200 leaves 56 of the demo's 64 input tokens. Left to the
    task, --max-length becomes 56 (with a note, saved for --resume); chosen, it is refused in one line."""
    out = tmp_path / "run"
    argv = demo(out, "--model", "demo-gpt2", "--method", "pt", "--l", "200")
    assert T.main([*argv, "--stop-at", "2"]) == 0
    assert "note: --max-length 56: the task's 64 input tokens after 200 prompt vectors" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["run"]["max_length"] == 56
    assert T.main([*argv, "--resume"]) == 0 and "note: --max-length" not in capsys.readouterr().out
    assert T.main(demo(tmp_path / "chosen", "--model", "demo-gpt2", "--method", "pt", "--l", "200",
                       "--max-length", "64")) == 2
    err = capsys.readouterr().err
    assert "lower --max-length to 56" in err and err.count("\n") == 1
