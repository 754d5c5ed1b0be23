"""Faults lose nothing: `kill -9` at any moment and the same command plus --resume end with the uninterrupted
run; one run per folder; a torn log line, left-over temporary files and a diverged run are handled.

The kills are real: a training subprocess (the demo model, one thread) sends itself SIGKILL at a chosen
point, through a wrapper that patches one function of the library (`KILL` below), so each point is hit
exactly. CI runs a chain of a few points; `MINIDEPT_KILL_POINTS=all` runs every point of `KILL_POINTS`
on its own (minutes).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import minidept.io.adapters
from safetensors import safe_open

from minidept import load_model
from minidept.run import train as T
from minidept.io.checkpoint import CheckpointError, atomic_write, read_safetensors, save_pretrained, save_tensors
from minidept.io.adapters import read_adapter
from minidept.io.state import save_state
from minidept.models.gpt2 import GPT2, GPT2Config
from minidept.io.backbones import load_backbone
from test_train import config_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

DEMO = ["--task", "demo", "--model", "demo", "--max-steps", "12", "--eval-every", "4", "--log-every", "1",
        "--max-eval-examples", "16", "--batch-size", "8", "--threads", "1", "--quiet"]

# Run minidept.train with argv; with KILL="what:name:n", SIGKILL ourselves at the n-th hit of `what`:
#   setup              entering setup (nothing written yet)
#   step:-:n           the start of the n-th step of this process
#   rename:FILE:n      the n-th atomic write of FILE, its temporary file written, before the rename
#   log:-:n            the n-th record written to metrics.jsonl, half of it on disk
KILL = r"""
import builtins, os, signal, sys
from minidept.io import checkpoint as C
from minidept.run import train as T
what, name, n = (os.environ.get("KILL", "none:-:1").split(":") + ["-", "1"])[:3]
hits = [0]
def hit(matches=True):
    hits[0] += matches
    if matches and hits[0] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
def patch(module, attribute, test):
    real = getattr(module, attribute)
    def patched(*args, **kwargs):
        hit(test(*args))
        return real(*args, **kwargs)
    setattr(module, attribute, patched)
if what == "setup":
    patch(T, "setup", lambda *a: True)
if what == "step":
    patch(T, "collate", lambda *a: True)   # one batch a step
if what == "rename":
    patch(C.os, "replace", lambda tmp, path: os.path.basename(path) == name)
if what == "log":
    class Torn:
        def __init__(self, handle): self.handle = handle
        def write(self, text):
            if hits[0] + 1 == int(n):
                self.handle.write(text[:len(text) // 2]); self.handle.flush()
            hit()
            return self.handle.write(text)
        def __getattr__(self, attribute): return getattr(self.handle, attribute)
        def __enter__(self): return self
        def __exit__(self, *exc): self.handle.close()
    real_open = builtins.open
    builtins.open = lambda file, mode="r", *a, **k: (Torn(real_open(file, mode, *a, **k))
        if str(file).endswith("metrics.jsonl") and "a" in mode else real_open(file, mode, *a, **k))
sys.exit(T.main(sys.argv[1:]))
"""


def train_process(out: Path, kill: str | None = None, resume: bool = False) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL": kill or "none:-:1"}
    done = subprocess.run([sys.executable, "-c", KILL, *DEMO, "--output-dir", str(out), *(["--resume"] * resume)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode


def outcome(out: Path) -> dict:
    """What must be bit-identical: the adapter (tensors and metadata), the state (tensors and progress, less
    its clock readings), the training records (less their clock readings), the test results."""
    def tensors(path):
        with safe_open(str(path), "pt") as handle:
            return handle.metadata(), {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}
    (adapter_meta, adapter), (state_meta, state) = tensors(out / T.ADAPTER_FILE), tensors(out / T.STATE_FILE)
    progress = {k: v for k, v in json.loads(state_meta.pop("progress")).items() if k not in ("train_seconds", "elapsed")}
    records = [{k: v for k, v in json.loads(line).items() if k not in ("steps_per_s", "elapsed")}
               for line in (out / T.LOG_FILE).read_text().splitlines()]
    results = json.loads((out / T.RESULTS_FILE).read_text())
    return dict(adapter=(adapter_meta, adapter), state=(state_meta, state), progress=progress, records=records,
                results=(results["test"], results["validation"], results["best_step"]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train_process(out) == 0
    return outcome(out)


def assert_readable(out: Path):
    """Every run file a kill left reads (a log line cut short is dropped by the reader)."""
    for name, read in ((T.CONFIG_FILE, lambda path: json.loads(path.read_text())), (T.ADAPTER_FILE, read_adapter),
                       (T.STATE_FILE, read_safetensors), (T.RESULTS_FILE, lambda path: json.loads(path.read_text())),
                       (T.LOG_FILE, lambda path: T.log_records_until(path, math.inf))):
        if (out / name).exists():
            read(out / name)


def assert_no_temporary_files(out: Path):
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_kill_9_at_several_points_then_resume_ends_with_the_uninterrupted_run(uninterrupted, tmp_path):
    """One run killed four times (before its first save, mid log line, mid state write, mid results write),
    each time continued with the same command plus --resume: the end is the uninterrupted run's, bit for bit."""
    out = tmp_path / "run"
    for kill in ("rename:adapter.safetensors:1", "log:-:6", "rename:state.safetensors:2", "rename:results.json:1"):
        assert train_process(out, kill, resume=out.exists()) == -signal.SIGKILL, kill
        assert_readable(out)
    assert any(p.name.endswith(".tmp") for p in out.iterdir())      # the last kill left one
    assert train_process(out, resume=True) == 0
    assert outcome(out) == uninterrupted
    assert_no_temporary_files(out)


KILL_POINTS = ["setup", "step:-:1", "rename:config.json:1", "rename:metrics.jsonl:1", "step:-:3",
               "rename:adapter.safetensors:1", "rename:state.safetensors:1", "log:-:1", "log:-:4", "log:-:5",
               "step:-:6", "log:-:10", "rename:state.safetensors:2", "log:-:14",
               "rename:state.safetensors:3", "rename:results.json:1", "log:-:16"]


@pytest.mark.skipif(os.environ.get("MINIDEPT_KILL_POINTS") != "all", reason="every kill point on its own takes "
                    "minutes: set MINIDEPT_KILL_POINTS=all")
@pytest.mark.parametrize("kill", KILL_POINTS)
def test_kill_9_at_each_point_then_resume_ends_with_the_uninterrupted_run(kill, uninterrupted, tmp_path):
    out = tmp_path / "run"
    assert train_process(out, kill) == -signal.SIGKILL
    assert_readable(out)
    assert train_process(out, resume=True) == 0
    assert outcome(out) == uninterrupted
    assert_no_temporary_files(out)


# --------------------------------------------------------------------------- #
# One run per folder, the log, temporary files, file modes
# --------------------------------------------------------------------------- #

def short_run(out: Path, *extra: str) -> list[str]:
    return ["--task", "demo", "--model", "demo", "--max-steps", "4", "--eval-every", "2", "--max-eval-examples", "8",
            "--batch-size", "8", "--quiet", "--output-dir", str(out), *extra]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (path, bytes, mode) and every folder."""
    return {str(p.relative_to(folder)): None if p.is_dir() else (p.read_bytes(), p.stat().st_mode)
            for p in folder.rglob("*")} if folder.exists() else {}


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_process(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"lock = open({str(out / T.LOCK_FILE)!r}, 'a+')\n"
                               "fcntl.flock(lock, fcntl.LOCK_EX); lock.write(f'{os.getpid()}\\n'); lock.flush()\n"
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(out)
        assert T.main(short_run(out)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by another run (process {holder.pid})" in err
        assert snapshot(out) == before                             # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert T.main(short_run(out)) == 0                              # the lock died with its process
    assert (out / T.LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_resume_drops_a_torn_last_log_line_and_refuses_a_broken_earlier_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(short_run(out, "--stop-at", "2")) == 0
    lines = (out / T.LOG_FILE).read_text().splitlines()
    (out / T.LOG_FILE).write_text("\n".join(lines) + '\n{"step": 3, "loss": 0.6')     # a disk filled up mid-line
    assert T.log_records_until(out / T.LOG_FILE, 2) == lines
    assert T.main(short_run(out, "--resume")) == 0
    records = [json.loads(line) for line in (out / T.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]         # (one record every 10 steps, and the last)
    (out / T.LOG_FILE).write_text("\n".join(["{not json", *lines]) + "\n")
    with pytest.raises(CheckpointError, match=f"{T.LOG_FILE} line 1 is not a training record"):
        T.log_records_until(out / T.LOG_FILE, 2)


def test_a_run_removes_the_temporary_files_a_kill_left_and_only_those(tmp_path):
    out = tmp_path / "run"
    assert T.main(short_run(out, "--stop-at", "2")) == 0
    left = [out / ".state.safetensors.123-abcd1234.tmp", out / ".metrics.jsonl.9-00.tmp"]
    others = [out / ".notes.txt.1-2.tmp", out / "mine.tmp", tmp_path / ".state.safetensors.1-2.tmp"]
    for path in left + others:
        path.write_bytes(b"x")
    assert T.main(short_run(out, "--resume")) == 0
    assert not any(path.exists() for path in left) and all(path.exists() for path in others)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(umask, tmp_path):
    before = os.umask(umask)
    try:
        atomic_write(tmp_path / "one.json", b"{}")
        assert T.main(short_run(tmp_path / "run")) == 0
    finally:
        os.umask(before)
    for path in [tmp_path / "one.json", *(tmp_path / "run" / name for name in T.RUN_FILES)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# --------------------------------------------------------------------------- #
# Divergence: the message says what exists and what to do
# --------------------------------------------------------------------------- #

def test_the_divergence_message_says_what_exists_and_when_to_restart(tmp_path):
    config, model, *_ = T.setup(config_of(short_run(tmp_path / "unused")), log=lambda *_: None)
    out = tmp_path / "run"
    out.mkdir()
    assert T.after_divergence(out, model) == ("No state was saved yet: start again with lower --lr-prompt / "
                                              "--lr-lowrank (and --overwrite)")
    optimizer = torch.optim.AdamW(model.param_groups(0.1, 0.1))
    progress = {"step": 5, "best": 50.0, "best_step": 4}
    params = model.adapter_state_dict()
    save_state(out / T.STATE_FILE, params, optimizer, progress, {"cpu": torch.get_rng_state()})
    assert T.after_divergence(out, model) == (f"{out / T.STATE_FILE} holds step 5: continue from it with the same "
                                              "command plus --resume, with lower --lr-prompt / --lr-lowrank")
    minidept.save_adapter(model, out / T.ADAPTER_FILE)
    assert f"holds step 5 and {out / T.ADAPTER_FILE} the best adapter (step 4): continue" in \
        T.after_divergence(out, model)
    for far in (float("nan"), 1e14):
        save_state(out / T.STATE_FILE, {k: p * far for k, p in params.items()}, optimizer, progress,
                   {"cpu": torch.get_rng_state()})
        message = T.after_divergence(out, model)
        assert "but its parameters are far off themselves" in message and "resuming would diverge again" in message
        assert message.endswith("Start again with lower --lr-prompt / --lr-lowrank (and --overwrite)")


# --------------------------------------------------------------------------- #
# Bad input to train: one line, exit code 2, nothing written or changed
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A demo run stopped at step 2 (state, adapter, log): copied by the tests that spoil it."""
    out = tmp_path_factory.mktemp("runs") / "stopped"
    assert T.main(short_run(out, "--stop-at", "2")) == 0
    return out


def spoil_state(run: Path):
    (run / T.STATE_FILE).write_bytes((run / T.STATE_FILE).read_bytes()[:100])


def foreign_state(run: Path):
    (run / T.STATE_FILE).write_bytes((run / T.ADAPTER_FILE).read_bytes())


def extra_state_tensor(run: Path):
    metadata, tensors = read_safetensors(run / T.STATE_FILE)
    save_state(run / T.STATE_FILE, {}, torch.optim.AdamW([torch.zeros(1)]), json.loads(metadata["progress"]),
               {"cpu": torch.get_rng_state()})


TRAIN_BAD_INPUT = {   # argv after short_run's, what the run folder gets first -> a fragment of the message
    "threads": (["--threads", "-3"], None, "--threads=-3: must be at least 1"),
    "huge rate": (["--lr-prompt", "1e38"], None, "--lr-prompt=1e+38: must be a number in (0, 1000.0]"),
    "nan rate": (["--lr-lowrank", "nan"], None, "--lr-lowrank=nan: must be a number in (0, 1000.0]"),
    "huge seed": (["--seed", "99999999999999999999"], None, "--seed=99999999999999999999: must be below 2**63"),
    "corrupt state": (["--resume"], spoil_state, "could not be read as safetensors"),
    "foreign state": (["--resume"], foreign_state, "is not a training state of this run: its format is "
                                                   "'minidept-adapter-2'"),
    "state of another shape": (["--resume"], extra_state_tensor, "does not fit the model"),
    "adapter deleted": (["--resume"], lambda run: (run / T.ADAPTER_FILE).unlink(),
                        "adapter.safetensors is missing, but the state saved at step 2 says the best adapter was "
                        "saved at step 2: put the file back, or start again with --overwrite"),
}


@pytest.mark.parametrize("case", list(TRAIN_BAD_INPUT))
def test_bad_input_to_train_is_one_line_and_changes_nothing(case, stopped_run, tmp_path, capsys):
    argv, spoil, message = TRAIN_BAD_INPUT[case]
    out = tmp_path / "run"
    if spoil:
        subprocess.run(["cp", "-a", str(stopped_run), str(out)], check=True)
        spoil(out)
    before = snapshot(out)
    assert T.main(short_run(out, *argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m minidept.train: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert snapshot(out) == before


def test_an_output_folder_that_cannot_be_made_is_refused_before_loading(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert T.main(short_run(tmp_path / "file" / "run")) == 2
    assert f"--output-dir {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file" in capsys.readouterr().err
    if os.geteuid() != 0:                              # root may write anywhere (a read-only mount excepted)
        (tmp_path / "locked").mkdir(mode=0o555)
        assert T.main(short_run(tmp_path / "locked" / "run")) == 2
        assert "is not writable" in capsys.readouterr().err


def test_ctrl_c_during_start_up_is_one_line_exit_130_and_writes_nothing(stopped_run, tmp_path, monkeypatch, capsys):
    from minidept.run import evaluate, predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "load_backbone", interrupted)
    assert T.main(short_run(tmp_path / "run")) == 130
    assert capsys.readouterr().err == "python -m minidept.train: interrupted\n"
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(evaluate, "load_backbone", interrupted)
    assert evaluate.main(["--adapter", str(stopped_run), "--predictions", str(tmp_path / "p.jsonl")]) == 130
    assert predict.main(["--adapter", str(stopped_run), "hi"]) == 130
    assert capsys.readouterr().err == "python -m minidept.evaluate: interrupted\npython -m minidept.predict: interrupted\n"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# Bad input to every command and to the Python API: one line naming the value and the fix, exit code 2,
# nothing written or changed, no traceback
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "gpt2"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(GPT2(GPT2Config(vocab_size=259, n_positions=64, n_embd=32, n_layer=1, n_head=4)), folder)
    return folder


def copy_of(folder: Path, tmp: Path) -> Path:
    subprocess.run(["cp", "-a", str(folder), str(tmp / folder.name)], check=True)
    return tmp / folder.name


def model_with(config=None, weight_map=None, int8=False):
    """A copy of the tiny GPT-2 with config.json fields changed, its weights as one shard under an index with
    `weight_map`, or its weights stored as int8."""
    def make(tmp, fx):
        folder = copy_of(fx["gpt2"], tmp)
        if config:
            (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **config}))
        if weight_map is not None:
            (folder / "model.safetensors").rename(folder / "model-1.safetensors")
            (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        if int8:
            metadata, tensors = read_safetensors(folder / "model.safetensors")
            save_tensors({k: (t * 100).to(torch.int8) for k, t in tensors.items()}, folder / "model.safetensors", metadata)
        return str(folder)
    return make


def adapter_with(settings=None, drop_settings=False, scale=1.0):
    """A copy of the demo run whose adapter's settings are changed (or gone) or whose tensors are scaled."""
    def make(tmp, fx):
        run = copy_of(fx["run"], tmp)
        metadata, tensors = read_safetensors(run / T.ADAPTER_FILE)
        if settings:
            metadata["config"] = json.dumps({**json.loads(metadata["config"]), **settings})
        if drop_settings:
            del metadata["config"]
        save_tensors({k: t * scale for k, t in tensors.items()}, run / T.ADAPTER_FILE, metadata)
        return str(run)
    return make


def data_with(name, text):
    """A data folder holding SST-2 files, the file `name` with `text` (bytes) instead."""
    def make(tmp, fx):
        for split in ("train.tsv", "dev.tsv"):
            (tmp / "data" / "SST-2").mkdir(parents=True, exist_ok=True)
            (tmp / "data" / "SST-2" / split).write_bytes(text if split == name else b"sentence\tlabel\nfine\t1\n")
        return str(tmp / "data")
    return make


def file_under_a_file(tmp, fx):
    (tmp / "a-file").write_text("x")
    return str(tmp / "a-file" / "out.json")


def broken_json(tmp, fx):
    (tmp / "b.json").write_text("{")
    return str(tmp / "b.json")


TRAIN = ["--task", "demo", "--model", "demo", "--max-steps", "2", "--quiet"]
BAD_INPUT = {   # command, argv (pieces made by functions of (tmp_path, fixtures)), a fragment of the one-line message
    "gpt2 n_head 0": ("train", [*TRAIN, "--model", model_with({"n_head": 0})], "'n_head' must be a positive integer, got 0"),
    "gpt2 n_positions -5": ("train", [*TRAIN, "--model", model_with({"n_positions": -5})], "got -5"),
    "gpt2 epsilon x": ("train", [*TRAIN, "--model", model_with({"layer_norm_epsilon": "x"})], "must be a number > 0"),
    "gpt2 n_embd 1e9": ("train", [*TRAIN, "--model", model_with({"n_embd": 1e9})], "got 1000000000.0"),
    "gpt2 n_embd '32'": ("train", [*TRAIN, "--model", model_with({"n_embd": "32"})], "got '32'"),
    "gpt2 resid_pdrop 2": ("train", [*TRAIN, "--model", model_with({"resid_pdrop": 2.0})], "in [0, 1), got 2.0"),
    "weight_map a list": ("evaluate", ["--adapter", "RUN", "--model", model_with(weight_map=["model-1.safetensors"])],
                          "weight_map must map tensor names to shard file names"),
    "weight_map ints": ("evaluate", ["--adapter", "RUN", "--model", model_with(weight_map={"wte.weight": 3})],
                        "weight_map must map tensor names to shard file names"),
    "shard outside": ("evaluate", ["--adapter", "RUN", "--model", model_with(weight_map={"a": "../gpt2/model.safetensors"})],
                      "lists shards outside the model folder or not .safetensors (../gpt2/model.safetensors)"),
    "shard /etc/passwd": ("predict", ["--adapter", "RUN", "--model", model_with(weight_map={"a": "/etc/passwd"}), "hi"],
                          "(/etc/passwd); a shard must be a .safetensors file in"),
    "int8 weights": ("evaluate", ["--adapter", "RUN", "--model", model_with(int8=True)],
                     "not floating point (quantized weights are not supported): wte.weight: torch.int8"),
    "adapter without settings": ("evaluate", ["--adapter", adapter_with(drop_settings=True)],
                                 "its metadata holds no config object with a method"),
    "adapter unknown setting": ("predict", ["--adapter", adapter_with({"zzz": 1}), "hi"], "unknown config key(s) zzz"),
    "adapter max_length 1e9": ("evaluate", ["--adapter", adapter_with({"max_length": 10**9})],
                               "max_length=1000000000, d=64) make 8,000,000,768 trainable values, its tensors"),
    "adapter all NaN": ("evaluate", ["--adapter", adapter_with(scale=float("nan"))], "holds NaN or infinite values"),
    "init-from NaN adapter": ("train", [*TRAIN, "--init-from", adapter_with(scale=float("nan"))],
                              "holds NaN or infinite values (offset.A, offset.B, prompt.P)"),
    "init-from bad setting": ("train", [*TRAIN, "--init-from", adapter_with({"m": -1})], "m=-1: must be an integer"),
    "empty train.tsv": ("train", ["--task", "sst2", "--model", "demo", "--data-dir", data_with("train.tsv", b"")],
                        "train.tsv is empty"),
    "non-UTF-8 data": ("evaluate", ["--adapter", "RUN", "--task", "sst2", "--data-dir",
                                    data_with("dev.tsv", b"sentence\tlabel\ncaf\xe9\t1\n")], "dev.tsv is not UTF-8 text"),
    "predictions unwritable": ("evaluate", ["--adapter", "RUN", "--predictions", file_under_a_file],
                               "is not a writable folder); choose another file"),
    "predict non-UTF-8 text": ("predict", ["--adapter", "RUN", b"caf\xe9".decode("utf-8", "surrogateescape")],
                               "is not UTF-8 text; pass UTF-8"),
    "export adapter without settings": ("export", [adapter_with(drop_settings=True), "OUT"],
                                        "its metadata holds no config object with a method"),
    "export under a file": ("export", ["RUN", file_under_a_file], "is not a writable folder); choose another file"),
    "bench --json unwritable": ("bench", ["--quick", "--json", file_under_a_file], "cannot write there"),
    "bench --merge broken": ("bench", ["--quick", "--impls", "minidept", "--backbones", "t5-small", "--methods", "pt",
                                       "--json", broken_json, "--merge"], "b.json is not a list of benchmark records"),
}


def run_command(command, argv, capsys):
    from minidept.run import evaluate, predict
    from minidept.tools import export
    from minidept.tools.bench import __main__ as bench
    main = {"train": T.main, "evaluate": evaluate.main, "predict": predict.main, "bench": bench.main,
            "export": export.main}[command]
    try:
        code = main(argv)
    except SystemExit as exit:   # argparse's errors in bench
        code = exit.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_to_a_command_is_one_line_exit_2_and_changes_nothing(case, tiny_gpt2, stopped_run, tmp_path, capsys):
    command, pieces, message = BAD_INPUT[case]
    fixtures = {"gpt2": tiny_gpt2, "run": stopped_run}
    named = {"RUN": str(stopped_run), "OUT": str(tmp_path / "out")}
    argv = [piece(tmp_path, fixtures) if callable(piece) else named.get(piece, piece) for piece in pieces]
    out = tmp_path / "out"
    if command == "train":
        argv += ["--output-dir", str(out)]
    before = snapshot(tmp_path), snapshot(stopped_run)
    code, captured = run_command(command, argv, capsys)
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and ": error: " in captured.err and "Traceback" not in captured.err, \
        captured.err
    assert message in captured.err, captured.err
    assert (snapshot(tmp_path), snapshot(stopped_run)) == before and not out.exists()


def test_bad_input_to_the_python_api_raises_one_line_value_errors(tiny_gpt2, stopped_run, tmp_path):
    fixtures = {"gpt2": tiny_gpt2, "run": stopped_run}
    with pytest.raises(CheckpointError, match="'n_head' must be a positive integer") as caught:
        load_model(model_with({"n_head": 0})(tmp_path, fixtures))
    assert "\n" not in str(caught.value)
    backbone, _ = load_backbone("demo")
    for i, (make, message) in enumerate([(adapter_with({"max_length": 10**9}), "make 8,000,000,768 trainable values"),
                                         (adapter_with(scale=float("inf")), "holds NaN or infinite values"),
                                         (adapter_with({"zzz": 1}), "unknown config key(s) zzz")]):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
            minidept.load_adapter(make(tmp_path / str(i), fixtures), backbone)
        assert "\n" not in str(caught.value)


def test_plot_draws_a_run_whose_log_ends_in_half_a_line(stopped_run, tmp_path):
    pytest.importorskip("matplotlib")
    from minidept.tools import plot
    run = copy_of(stopped_run, tmp_path)
    with open(run / T.LOG_FILE, "a") as log:
        log.write('{"step": 3, "lo')                                    # being written, or killed mid-line
    assert plot.main([str(run), "-o", str(tmp_path / "run.png")]) == 0
