"""What the tools share about their output: a folder tried with a real write before the long work."""

from __future__ import annotations

import os
from pathlib import Path

from ..run.cli import UsageError


def try_writing(folder: Path, what: str, instead: str, size: int = 1 << 20) -> None:
    """A UsageError unless `size` bytes can be written in `folder` (made if missing): a file is written,
    synced and removed there, so that a read-only folder, or a full disk that still takes an empty file,
    is found before the work rather than after it. `what` names the option, `instead` the way out."""
    probe = Path(folder) / f".write-test.{os.getpid()}.tmp"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise UsageError(f"{what}: cannot write in {folder} ({error.strerror}); free some space or choose "
                         f"{instead}") from None
    finally:
        probe.unlink(missing_ok=True)
