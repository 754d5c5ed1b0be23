"""torchrun: two CPU processes (gloo) train exactly as one, also across a kill and --resume.

The demo T5 (no dropout) on the demo task, batch 8: each process takes 4 rows of every
batch. torchrun is killed (SIGTERM, as a scheduler does) once a few steps are logged;
both processes stop at the same step, rank 0 saves the state, and the same command plus
--resume continues. The result is compared with one process run straight to the same
step: the same losses and adapter tensors (within float32 rounding).
"""

from __future__ import annotations

import json
import os
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


def torchrun(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
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
