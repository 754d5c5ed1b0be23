"""The training loop end to end on real SST-2 text, real tokenizers and tiny random backbones.

Every backbone folder is written by the test into its tmp_path (our save_pretrained
of a tiny config with the real vocabulary size, plus the real tokenizer files).
Runs are few-shot (`--k-shot`) and short so the file stays well under a minute.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safetensors import safe_open
from safetensors.torch import load_file

from minidept import load_model
from minidept import train as T
from minidept.gpt2 import GPT2, GPT2Config
from minidept.prompts import METHODS, PromptedModel
from minidept.t5 import T5, T5Config


def write_tiny_t5(folder, data_dir, dropout=0.1):
    """A tiny random T5 with T5's real vocabulary (32,128) and the real tokenizer.json."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        T5(T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    dropout_rate=dropout)).save_pretrained(folder)
    shutil.copy(data_dir / "t5-tokenizer" / "tokenizer.json", folder)
    return folder


def write_tiny_gpt2(folder, data_dir):
    """A tiny random GPT-2 with GPT-2's real vocabulary (50,257) and the real BPE files."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2(GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4)).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(data_dir / "gpt2-tokenizer" / name, folder)
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the test machines are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbones(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {"t5": write_tiny_t5(root / "t5", data_dir), "gpt2": write_tiny_gpt2(root / "gpt2", data_dir)}


def options(folder, data_dir, out, method="dept", steps=30, *extra):
    argv = ["--task", "sst2", "--model", str(folder), "--data-dir", str(data_dir), "--method", method,
            "--l", "20", "--k-shot", "16", "--batch-size", "8", "--max-length", "64", "--max-steps", str(steps),
            "--warmup-steps", "3", "--eval-every", "15", "--log-every", "1", "--max-eval-examples", "24",
            "--eval-batch-size", "16", "--lr-prompt", "0.3", "--lr-lowrank", "0.01",
            "--output-dir", str(out), "--quiet", *extra]
    if method != "pt":
        argv += ["--m", "4"]
    return argv


def setup_run(argv):
    run = T.resolve_run(T.build_parser().parse_args(argv))
    model, tokenizer, task, data, truncated = T.prepare(run)
    return T.describe(run, model, data, truncated)[0], model, tokenizer, task, data


def same_file_content(a, b) -> bool:
    """Bitwise-equal tensors and equal metadata (safetensors orders its header keys arbitrarily)."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return (fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))


def training_losses(out):
    return [record["loss"] for record in map(json.loads, (out / T.LOG_FILE).read_text().splitlines())
            if "loss" in record]


# --------------------------------------------------------------------------- #
# End to end, every backbone x method
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("backbone", ["t5", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_end_to_end(backbone, method, backbones, data_dir, tmp_path):
    out = tmp_path / "run"
    run, model, tokenizer, task, data = setup_run(options(backbones[backbone], data_dir, out, method))
    fixed = data["train"][:8]
    before = T.batch_loss(model, fixed, tokenizer)

    results = T.train(run, model, tokenizer, task, data, quiet=True, log=lambda *_: None)

    after = T.batch_loss(model, fixed, tokenizer)
    assert results["status"] == "done" and results["steps"] == 30
    assert after < before, f"{backbone}/{method}: loss on a fixed batch {before:.4f} -> {after:.4f}"
    assert set(results["test"]) == {"accuracy"} and 0 <= results["test"]["accuracy"] <= 100
    assert "accuracy" in results["validation"] and results["best_step"] in (15, 30)
    saved = json.loads((out / T.RESULTS_FILE).read_text())
    assert saved["test"] == results["test"]
    records = [json.loads(line) for line in (out / T.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))
    assert [r["step"] for r in records if r.get("split") == "validation"] == [15, 30]
    assert all({"lr_prompt", "lr_lowrank", "elapsed", "grad_norm"} <= set(r) for r in records if "loss" in r)

    # The saved (best) adapter, on a freshly loaded backbone, predicts exactly as the trained model.
    reloaded = PromptedModel.from_adapter(out / T.ADAPTER_FILE, load_model(backbones[backbone]))
    n_new = T.answer_tokens(task, tokenizer, model.model_type)
    rows = data["validation"]
    assert T.predict(reloaded, rows, tokenizer, n_new) == T.predict(model, rows, tokenizer, n_new)


def test_config_and_defaults(backbones, data_dir, tmp_path):
    out = tmp_path / "run"
    argv = options(backbones["t5"], data_dir, out, "dept", 4)
    assert T.main(argv) == 0
    config = json.loads((out / T.CONFIG_FILE).read_text())
    run = config["run"]
    # r from the budget: floor((l - m) * d / (s + d)) = floor(16 * 32 / 96) = 5
    assert (run["l"], run["m"], run["r"], run["max_length"]) == (20, 4, 5, 64)
    assert config["trainable_parameters"] == 4 * 32 + (64 + 32) * 5 <= config["budget_l_times_d"] == 640
    assert config["examples"] == {"train": 32, "validation": 24, "test": 24}
    assert set(config["truncated"]) == {"train", "validation", "test"}
    # Unset options come from the task's published settings (methods.md section 5).
    defaults = T.resolve_run(T.build_parser().parse_args(["--task", "cola"]))
    assert (defaults.m, defaults.lr_prompt, defaults.lr_lowrank, defaults.max_steps) == (80, 0.3, 5e-4, 40_000)
    assert (defaults.model, defaults.method, defaults.batch_size, defaults.seed) == ("t5-base", "dept", 32, 42)
    assert (defaults.warmup_steps, defaults.eval_every, defaults.save_every) == (500, 1000, 1000)
    short = T.resolve_run(T.build_parser().parse_args(["--task", "cola", "--max-steps", "200"]))
    assert short.warmup_steps == 20


# --------------------------------------------------------------------------- #
# Faults lose nothing
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("grouping", [[], ["--group-by-length"]])
def test_resume_gives_the_same_run(backbones, data_dir, tmp_path, grouping):
    """12 steps straight == 6 steps, stop, --resume, 6 more: same losses, bit-identical tensors."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = ["--eval-every", "4", "--save-every", "3", *grouping]
    assert T.main(options(backbones["t5"], data_dir, straight, "dept", 12, *extra)) == 0
    assert T.main(options(backbones["t5"], data_dir, split, "dept", 12, *extra, "--stop-at", "6")) == 0
    assert not (split / T.RESULTS_FILE).exists()
    assert len(training_losses(split)) == 6
    assert T.main(options(backbones["t5"], data_dir, split, "dept", 12, *extra, "--resume")) == 0

    assert training_losses(split) == training_losses(straight)
    assert len(set(training_losses(straight))) > 1          # dropout and data order really vary
    assert same_file_content(split / T.ADAPTER_FILE, straight / T.ADAPTER_FILE)
    states = [load_file(str(d / T.STATE_FILE)) for d in (straight, split)]   # tensors; the metadata has times
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    a, b = (json.loads((d / T.RESULTS_FILE).read_text()) for d in (straight, split))
    assert (a["test"], a["validation"], a["best_step"]) == (b["test"], b["validation"], b["best_step"])
    assert json.loads((split / T.CONFIG_FILE).read_text())["run"]["group_by_length"] == bool(grouping)


def test_group_by_length_is_fixed_on_resume(backbones, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(options(backbones["t5"], data_dir, out, "dept", 4, "--stop-at", "2", "--group-by-length")) == 0
    capsys.readouterr()
    # argparse cannot switch a store_true flag off, so compare with a saved run that had it off
    config = json.loads((out / T.CONFIG_FILE).read_text())
    config["run"]["group_by_length"] = False
    (out / T.CONFIG_FILE).write_text(json.dumps(config))
    assert T.main(options(backbones["t5"], data_dir, out, "dept", 4, "--resume", "--group-by-length")) == 2
    assert "--group-by-length False -> True" in capsys.readouterr().err


def test_ctrl_c_saves_state_and_resume_continues_exactly(backbones, data_dir, tmp_path, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = ["--eval-every", "5", "--save-every", "100"]
    assert T.main(options(backbones["gpt2"], data_dir, straight, "adept", 10, *extra)) == 0

    real = T.train_batch

    def interrupted_at_step_7(n, batch_size, seed, step, lengths=None):
        if step == 7:
            raise KeyboardInterrupt
        return real(n, batch_size, seed, step, lengths)

    monkeypatch.setattr(T, "train_batch", interrupted_at_step_7)
    assert T.main(options(backbones["gpt2"], data_dir, split, "adept", 10, *extra)) == 130
    monkeypatch.setattr(T, "train_batch", real)
    assert len(training_losses(split)) == 7      # saved at step 7 although --save-every is 100
    assert T.main(options(backbones["gpt2"], data_dir, split, "adept", 10, *extra, "--resume")) == 0
    assert training_losses(split) == training_losses(straight)
    assert same_file_content(split / T.ADAPTER_FILE, straight / T.ADAPTER_FILE)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(backbones, data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_forward, calls = PromptedModel.forward, []

    def nan_at_step_8(self, *args, **kwargs):
        loss = real_forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 8:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(PromptedModel, "forward", nan_at_step_8)
    code = T.main(options(backbones["t5"], data_dir, out, "pt", 20, "--eval-every", "5", "--save-every", "5"))
    assert code == 1
    message = capsys.readouterr().out
    assert "non-finite" in message and "loss nan" in message and "step 8" in message
    state_step = json.loads(safe_open(str(out / T.STATE_FILE), "pt").metadata()["progress"])["step"]
    assert state_step == 5                       # the last good state, not step 7
    assert (out / T.ADAPTER_FILE).is_file() and not (out / T.RESULTS_FILE).exists()


def test_state_round_trip(backbones, data_dir, tmp_path):
    run, model, tokenizer, task, data = setup_run(options(backbones["t5"], data_dir, tmp_path, "ept", 3))
    T.train(run, model, tokenizer, task, data, quiet=True, log=lambda *_: None)
    optimizer = torch.optim.AdamW(model.param_groups(0.3, 0.01))
    model(torch.tensor([[5, 6, 1]]), labels=torch.tensor([[7, 1]])).backward()
    optimizer.step()
    progress = {"step": 3, "best": float("nan"), "note": [1, 2]}
    rng = T.rng_state(torch.device("cpu"))
    T.save_state(tmp_path / "s.safetensors", model, optimizer, progress, rng)

    _, other, *_ = setup_run(options(backbones["t5"], data_dir, tmp_path, "ept", 3, "--seed", "7"))
    other_optimizer = torch.optim.AdamW(other.param_groups(0.3, 0.01))
    loaded, loaded_rng = T.load_state(tmp_path / "s.safetensors", other, other_optimizer)
    assert loaded["step"] == 3 and math.isnan(loaded["best"]) and loaded["note"] == [1, 2]
    assert torch.equal(loaded_rng["cpu"], rng["cpu"])
    for a, b in zip(model.trainable_parameters(), other.trainable_parameters()):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.state.values(), other_optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_run_trained_from_python_opens_for_inference(backbones, data_dir, tmp_path):
    """train() itself writes config.json, so a run started from Python needs no --model later."""
    from minidept.evaluate import load_for_inference

    run, model, tokenizer, task, data = setup_run(options(backbones["t5"], data_dir, tmp_path, "dept", 2))
    T.train(run, model, tokenizer, task, data, quiet=True, log=lambda *_: None, truncated={"train": 0})
    saved = json.loads((tmp_path / T.CONFIG_FILE).read_text())
    assert saved["run"]["model"] == str(backbones["t5"]) and saved["truncated"] == {"train": 0}
    reloaded, _, run_settings = load_for_inference(tmp_path)
    assert run_settings["method"] == "dept"
    for a, b in zip(model.trainable_parameters(), reloaded.trainable_parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- #
# Learning-rate schedule
# --------------------------------------------------------------------------- #

def test_schedule_fixed_points():
    assert [T.lr_factor(s, 4, 12) for s in (0, 1, 3, 4, 8, 11)] == [0.25, 0.5, 1.0, 1.0, 0.5, 0.125]
    assert T.lr_factor(0, 0, 10) == 1.0 and T.lr_factor(9, 0, 10) == 0.1


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 600), st.integers(1, 3000))
def test_schedule_rises_then_falls(warmup, max_steps):
    factors = [T.lr_factor(s, warmup, max_steps) for s in range(max_steps)]
    assert all(0 < f <= 1 for f in factors)
    peak = factors.index(max(factors))
    assert all(a <= b for a, b in zip(factors[:peak], factors[1:peak + 1]))
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1:]))
