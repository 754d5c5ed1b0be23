"""The run folder of `python -m minidept.train`: its files, one process at a time, and what a resume keeps.

    config.json          every setting of the run ("run") and facts about it
    metrics.jsonl        one JSON record a line: training, validation and test records
    adapter.safetensors  the best adapter so far
    state.safetensors    the training state, for --resume (io/state.py)
    results.json         best validation and test metrics of the best adapter
    .lock                names the process that trains here (.lock.RANK under torchrun)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..io.checkpoint import CONFIG_FILE, CheckpointError
from ..io.adapters import ADAPTER_FILE
from ..io.runs import RESULTS_FILE, read_run_config   # noqa: F401  (the checked reader of config.json; train uses it)
from .cli import UsageError

try:
    import fcntl                 # POSIX: the run folder's lock
except ImportError:              # Windows: no lock
    fcntl = None

LOG_FILE = "metrics.jsonl"
STATE_FILE, LOCK_FILE = "state.safetensors", ".lock"
RUN_FILES = (CONFIG_FILE, LOG_FILE, ADAPTER_FILE, STATE_FILE, RESULTS_FILE)


def holds_run(folder: Path) -> bool:
    """True when `folder` holds files of a training run (a model folder's config.json alone is not one)."""
    if any((folder / name).exists() for name in RUN_FILES if name != CONFIG_FILE):
        return True
    try:
        return "run" in json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, RecursionError):
        return (folder / CONFIG_FILE).exists()


@contextlib.contextmanager
def folder_lock(out: Path, rank: int = 0):
    """One run per folder: an advisory lock on OUT/.lock, which names our process, while the block runs. The
    system drops it when the process ends, however it ends (fcntl is POSIX: no lock on Windows). Under
    torchrun each process locks its own file, .lock.RANK. A symlink in its place is refused, never followed."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / (LOCK_FILE + (f".{rank}" if rank else ""))
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as error:
        raise UsageError(f"--output-dir {out}: cannot open its lock file {path.name} ({error.strerror}; a "
                         "symlink there is refused): remove it, or choose another --output-dir") from None
    with open(descriptor, "r+", encoding="utf-8") as lock:
        try:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = lock.read().strip() or "unknown"
            raise UsageError(f"--output-dir {out} is in use by another run (process {holder}): wait for it to end, "
                             "or choose another --output-dir") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def log_records_until(path: Path, step: int) -> list[str]:
    """The lines of metrics.jsonl that a run resumed at `step` keeps: the records up to that step, without
    the final test record. A last line cut short (a full disk, a kill while it was written) is dropped:
    the saved state says the log reached `step`, and the records after it come again."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if record["step"] <= step and record.get("split") != "test":
                kept.append(line)
        except (ValueError, KeyError, TypeError) as error:
            if number < len(lines):
                raise CheckpointError(f"{path} line {number} is not a training record ({error}): delete that "
                                      "line, or start again with --overwrite") from None
    return kept


def remove_temporaries(out: Path) -> None:
    """What writes a kill interrupted left behind (atomic_write's `.NAME.*.tmp`)."""
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
