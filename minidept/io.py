"""Files in and out: finding a checkpoint, reading it safely, writing atomically.

Everything that touches the disk or the Hugging Face Hub lives here, so the
model files (`t5.py`, `gpt2.py`) can stay about the model.

Rules kept throughout:
- nothing is ever unpickled: weights come from safetensors, and the legacy
  `pytorch_model.bin` is read only with `torch.load(weights_only=True)`;
- every write goes to a temporary file in the same folder and is renamed into
  place, so a crash never leaves a half-written file;
- every failure names the file (or Hub id) and says what to do.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A model or adapter file is missing, corrupt, or does not fit the model."""


# Files a model folder may hold; only these are fetched from the Hub.
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model",
                   "tokenizer_config.json", "special_tokens_map.json")
HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES]

OFFLINE_HINT = (
    "To run without network access, download the model once (for example "
    "`hf download t5-base --local-dir ./t5-base`) and pass the folder: "
    "`--model ./t5-base`. The folder needs config.json and model.safetensors "
    "(plus tokenizer files)."
)


# --------------------------------------------------------------------------- #
# Finding a model folder
# --------------------------------------------------------------------------- #

def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """Return a local folder for `name_or_path`: the folder itself, or a Hub download.

    A Hub id (`t5-small`, `google/flan-t5-small`, `gpt2`) is fetched with
    huggingface_hub (config, safetensors and tokenizer files only) into its
    usual cache. With no network, this fails within seconds with a message that
    says how to pass a local folder instead.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{name!r} is a file; pass the folder that holds config.json")
    # A Hub id is `name` or `owner/name`; anything else was meant as a local folder.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise CheckpointError(f"model folder {name!r} does not exist. {OFFLINE_HINT}")
    return _download_from_hub(name)


def _download_from_hub(repo_id: str) -> Path:
    # Fail fast when offline: short timeouts instead of huggingface_hub's long retries.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - datasets brings huggingface_hub
        raise CheckpointError(
            f"cannot download {repo_id!r}: huggingface_hub is not installed. {OFFLINE_HINT}") from error
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
        if not any(folder.glob("*.safetensors")) and not (folder / SAFETENSORS_INDEX).is_file():
            # an older repository with pickled weights only: fetch them (read with weights_only=True)
            folder = Path(snapshot_download(repo_id, allow_patterns=[PICKLE_FILE]))
    except Exception as error:  # network errors, unknown repo, gated repo ...
        raise CheckpointError(
            f"could not get {repo_id!r} from the Hugging Face Hub "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). {OFFLINE_HINT}"
        ) from error
    return folder


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #

def read_config(folder: Path) -> dict:
    """Read `config.json` of a model folder, with a clear error when it is missing or broken."""
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: a model folder needs config.json next to its weights")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file} is not valid JSON ({error}); re-download the model") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {type(config).__name__}")
    return config


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{file} could not be read as safetensors ({error}); it may be truncated or corrupt: "
            "re-download or re-save it") from error


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, from whichever weight format it has.

    Order of preference: `model.safetensors`, the sharded
    `model.safetensors.index.json`, then `pytorch_model.bin` read with
    `weights_only=True` (never a full unpickle).
    """
    folder = Path(folder)
    single, index, pickle = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX, folder / PICKLE_FILE
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index ({error})") from error
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_file = folder / shard
            if not shard_file.is_file():
                raise CheckpointError(f"{shard_file} is listed in {index.name} but missing; re-download the model")
            tensors.update(_read_safetensors(shard_file))
        return tensors
    if pickle.is_file():
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as error:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f"the object {found.group(1)}" if found else type(error).__name__
            raise CheckpointError(
                f"{pickle} could not be loaded safely: it holds more than plain tensors ({what}). "
                "minidept never unpickles arbitrary objects; convert the checkpoint to "
                "model.safetensors with a tool you trust") from error
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{pickle} does not hold a plain dict of tensors")
        return state
    raise CheckpointError(
        f"no weights in {folder}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {PICKLE_FILE}")


def check_complete(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    """Raise a `CheckpointError` listing what a strict load could not match.

    `missing`: model parameters nothing filled; `unexpected`: checkpoint keys
    nothing used; `mismatched`: "key: checkpoint shape vs model shape" lines.
    """
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint {source} does not fit the model:"]
    for title, items in (("missing (not in the checkpoint)", missing),
                         ("unexpected (not used by the model)", unexpected),
                         ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
            lines.append(f"  {title}: {shown}")
    lines.append("  Check that config.json belongs to these weights.")
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------- #
# Writing, always atomically
# --------------------------------------------------------------------------- #

@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success rename it into place.

    On any exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:  # make the bytes durable before the rename
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically (contiguous CPU copies, shared storage broken)."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write raw bytes atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
