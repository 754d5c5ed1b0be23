"""Faults lose nothing: `kill -9` at any moment and the same command plus --resume end with the uninterrupted
run; one run per folder; a torn log line, left-over temporary files and a diverged run are handled.

The kills are real: a training subprocess (the demo model, one thread) sends itself SIGKILL at a chosen
point, through a wrapper that patches one function of the library (`KILL` below), so each point is hit
exactly. CI runs a chain of a few points; `MINIDEPT_KILL_POINTS=all` runs every point of `KILL_POINTS`
on its own (minutes).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from minidept import train as T
from minidept.checkpoints import CheckpointError, atomic_write, read_safetensors, save_state
from test_train import config_of, one_thread  # noqa: F401 (one thread for this module too)

REPO = Path(__file__).resolve().parents[1]

DEMO = ["--task", "demo", "--model", "demo", "--max-steps", "12", "--eval-every", "4", "--log-every", "1",
        "--max-eval-examples", "16", "--batch-size", "8", "--threads", "1", "--quiet"]

# Run minidept.train with argv; with KILL="what:name:n", SIGKILL ourselves at the n-th hit of `what`:
#   setup              entering setup (nothing written yet)
#   step:-:n           the start of the n-th step of this process
#   rename:FILE:n      the n-th atomic write of FILE, its temporary file written, before the rename
#   log:-:n            the n-th record written to metrics.jsonl, half of it on disk
KILL = r"""
import builtins, os, signal, sys
from minidept import checkpoints as C, train as T
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
    patch(T, "batches", lambda *a: True)
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


def assert_no_temporary_files(out: Path):
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_kill_9_at_several_points_then_resume_ends_with_the_uninterrupted_run(uninterrupted, tmp_path):
    """One run killed four times (before its first save, mid log line, mid state write, mid results write),
    each time continued with the same command plus --resume: the end is the uninterrupted run's, bit for bit."""
    out = tmp_path / "run"
    for kill in ("rename:adapter.safetensors:1", "log:-:6", "rename:state.safetensors:2", "rename:results.json:1"):
        assert train_process(out, kill, resume=out.exists()) == -signal.SIGKILL, kill
    assert any(p.name.endswith(".tmp") for p in out.iterdir())      # the last kill left one
    assert train_process(out, resume=True) == 0
    assert outcome(out) == uninterrupted
    assert_no_temporary_files(out)


KILL_POINTS = ["setup", "step:-:1", "rename:config.json:1", "rename:metrics.jsonl:1", "step:-:3",
               "rename:adapter.safetensors:1", "rename:state.safetensors:1", "log:-:1", "log:-:4", "log:-:5",
               "step:-:6", "rename:adapter.safetensors:2", "rename:state.safetensors:2", "log:-:14",
               "rename:state.safetensors:3", "rename:results.json:1", "log:-:16"]


@pytest.mark.skipif(os.environ.get("MINIDEPT_KILL_POINTS") != "all", reason="every kill point on its own takes "
                    "minutes: set MINIDEPT_KILL_POINTS=all")
@pytest.mark.parametrize("kill", KILL_POINTS)
def test_kill_9_at_each_point_then_resume_ends_with_the_uninterrupted_run(kill, uninterrupted, tmp_path):
    out = tmp_path / "run"
    assert train_process(out, kill) == -signal.SIGKILL
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
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in folder.iterdir()} if folder.exists() else {}


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
    model.save_adapter(out / T.ADAPTER_FILE)
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
                                                   "'minidept-adapter-1'"),
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


def test_ctrl_c_during_start_up_is_one_line_exit_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "load_backbone", interrupted)
    assert T.main(short_run(tmp_path / "run")) == 130
    assert capsys.readouterr().err == "python -m minidept.train: interrupted\n"
    assert not (tmp_path / "run").exists()
