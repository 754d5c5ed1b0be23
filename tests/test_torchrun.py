"""torchrun: two CPU processes (gloo) train exactly as one, also across a kill and --resume.

The demo T5 (no dropout) on the demo task, batch 8: each process takes 4 rows of every
batch. torchrun is killed (SIGTERM, as a scheduler does) once a few steps are logged;
both processes stop at the same step, rank 0 saves the state, and the same command plus
--resume continues. The result is compared with one process run straight to the same
step: the same losses and adapter tensors (within float32 rounding).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from minidept.run import train as T
from minidept.io.checkpoint import read_safetensors

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--task", "demo", "--model", "demo", "--method", "dept", "--m", "4", "--batch-size", "8", "--max-steps", "2000",
        "--eval-every", "2000", "--log-every", "1", "--max-eval-examples", "16", "--threads", "1", "--quiet"]


def torchrun(out: Path, *extra: str, **env_extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           **env_extra}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "minidept.train", "--", *ARGS, "--output-dir", str(out), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / T.LOG_FILE).read_text().splitlines()]


def test_two_processes_equal_one_also_after_a_kill_and_resume(tmp_path):
    two = tmp_path / "two"
    run = torchrun(two)
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:   # wait for a few logged steps, then kill
        if (two / T.LOG_FILE).is_file() and len((two / T.LOG_FILE).read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert run.poll() is None, run.communicate()[0][-3000:]
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=120)[0]
    killed_at = json.loads(read_safetensors(two / T.STATE_FILE)[0]["progress"])["step"]
    assert 3 <= killed_at < 2000, output[-3000:]
    assert "interrupted: state saved at step" in output and output.count("interrupted: state saved") == 1  # rank 0

    stop = killed_at + 8
    resumed = torchrun(two, "--resume", "--stop-at", str(stop))
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    one = tmp_path / "one"
    assert T.main([*ARGS, "--output-dir", str(one), "--stop-at", str(stop)]) == 0

    losses = {name: [r["loss"] for r in records(out)] for name, out in (("one", one), ("two", two))}
    assert [r["step"] for r in records(two)] == list(range(1, stop + 1))   # rank 0 alone logs, each step once
    for a, b in zip(losses["one"], losses["two"]):
        assert abs(a - b) <= 1e-6 * abs(a), (a, b)
    states = [load_file(str(out / T.STATE_FILE)) for out in (one, two)]
    for name, tensor in states[0].items():
        if name.startswith(("param.", "optimizer.")):
            assert (tensor - states[1][name]).abs().max() <= 1e-6, name
    assert {"rng.cpu", "rng.cpu.1"} <= states[1].keys()                    # both ranks' generators saved
    assert json.loads((two / T.CONFIG_FILE).read_text())["world_size"] == 2
    assert json.loads((one / T.CONFIG_FILE).read_text())["world_size"] == 1


# --------------------------------------------------------------------------- #
# No process waits forever: a launcher killed with SIGKILL, a stopped peer, a peer that never starts
# --------------------------------------------------------------------------- #

def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux's /proc), children first."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"   # a zombie has ended
    except OSError:
        return False


@contextlib.contextmanager
def training(out: Path, **env: str):
    """(torchrun, its worker pids) once a few steps are logged; every one of them killed afterwards."""
    run, workers = torchrun(out, **env), []
    try:
        deadline = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < deadline:
            if (out / T.LOG_FILE).is_file() and len((out / T.LOG_FILE).read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-3000:]
        workers = descendants(run.pid)
        assert len(workers) >= 2
        yield run, workers
    finally:
        for pid in [run.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_workers_stop_and_save_when_the_launcher_is_killed(tmp_path):
    """torchrun killed with SIGKILL cannot end its workers: each notices its parent is gone, stops as on
    SIGTERM (rank 0 saves the state) and ends, instead of training on as orphans."""
    with training(tmp_path / "run") as (run, workers):
        run.kill()
        run.communicate(timeout=120)               # the workers hold its output pipe until they end
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "workers outlived their launcher"
    progress = json.loads(read_safetensors(tmp_path / "run" / T.STATE_FILE)[0]["progress"])
    assert progress["step"] >= 3


def test_a_stopped_peer_ends_the_run_after_the_timeout(tmp_path):
    """A rank stopped (SIGSTOP) mid-run blocks its peer's all-reduce; MINIDEPT_DIST_TIMEOUT bounds the wait
    (torch's default is 30 minutes), then the peer fails and torchrun ends the run."""
    # 20 s: well above a step's time on a loaded machine, well below torch's 30 minutes
    with training(tmp_path / "run", MINIDEPT_DIST_TIMEOUT="20") as (run, workers):
        os.kill(max(workers), signal.SIGSTOP)      # one of the two workers
        output = run.communicate(timeout=240)[0]
        assert run.returncode != 0, output[-3000:]
    # the running peer says so in one line (torchrun's own report of the failed run follows it)
    assert re.search(r"error: process [01] of 2: a peer did not answer within 20 s", output), output[-3000:]
    assert not re.search(r"\[rank[01]\]: Traceback", output), output[-3000:]


def test_a_peer_that_never_starts_ends_the_start_up_in_one_line(tmp_path):
    """One process of two (the other never comes): it gives up joining after MINIDEPT_DIST_TIMEOUT seconds,
    in one line, exit code 2."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MINIDEPT_DIST_TIMEOUT": "3",
           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "minidept.train", *ARGS, "--output-dir", str(tmp_path / "run")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("python -m minidept.train: error: the 2 processes of torchrun did not all join "
                                  "within 3 s") and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert not (tmp_path / "run").exists()
