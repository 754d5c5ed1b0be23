"""Folders that cannot take a write: a tmpfs that is full and one mounted read-only, made in a temporary folder
(root only: tests that need them are skipped elsewhere). Import the fixtures into a test module to use them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(folder: Path, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")


def fill(folder: Path) -> None:
    """Take every byte left on the file system of `folder`, in the file `filler` (appended to)."""
    try:
        with open(folder / "filler", "ab") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a tmpfs of 256 KiB whose every byte is taken by one file, `filler` (delete it to make room)."""
    if os.geteuid() != 0 or not Path("/proc/mounts").is_file():
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder = tmp_path / "full"
    mount_tmpfs(folder)
    fill(folder)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """An empty folder on a tmpfs mounted read-only (even root cannot write there)."""
    if os.geteuid() != 0 or not Path("/proc/mounts").is_file():
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder = tmp_path / "read-only"
    mount_tmpfs(folder, "ro")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)
