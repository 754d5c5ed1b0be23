"""Model folders on disk: reading config.json and the weights (safetensors, shards, a legacy .bin), atomic writes.

One reader per format (`read_config`, `read_safetensors`, `read_state_dict`), one writer
(`atomic_write`: a temporary file, flushed to disk, renamed over the target, so a crash never
leaves half a file); `load_folder` and `save_pretrained` read and write a whole model folder.
Nothing is ever unpickled: weights come from safetensors, a legacy `pytorch_model.bin` is read
with `torch.load(weights_only=True)`. Every failure is a `CheckpointError` that names the file
and says what to do.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save


from ..models import MODEL_CLASSES
from ..models.loading import CheckpointError, copy_into  # noqa: F401  (one strict copy, shared with the models)


CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"


def read_config(folder: str | os.PathLike, name: str = CONFIG_FILE) -> dict:
    """The `config.json` (or another JSON file `name`) of a model or adapter folder as a dict."""
    file = Path(folder) / name
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: a model folder needs config.json next to its weights")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file} is not valid JSON ({error}); re-download it") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {type(config).__name__}")
    return config


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} could not be read as safetensors ({error}); it may be truncated "
                              "or corrupt: re-download or re-save it") from error


def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder: `model.safetensors`, else the sharded index, else `pytorch_model.bin`."""
    folder = Path(folder)
    single, index, pickle = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX, folder / PICKLE_FILE
    if single.is_file():
        return read_safetensors(single)[1]
    if index.is_file():
        weight_map = read_config(folder, SAFETENSORS_INDEX).get("weight_map")
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in [*weight_map, *weight_map.values()])):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names, found "
                                  f"{str(weight_map)[:80]}; re-download the model")
        shards = set(weight_map.values())
        # a shard is a file of this folder: never a path outside it (../.., /etc/passwd)
        outside = [shard for shard in shards
                   if Path(shard).is_absolute() or ".." in Path(shard).parts or not shard.endswith(".safetensors")]
        if outside:
            raise CheckpointError(f"{index} lists shards outside the model folder or not .safetensors "
                                  f"({', '.join(sorted(outside)[:3])}); a shard must be a .safetensors file in {folder}")
        tensors = {}
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder / shard} is listed in {index.name} but missing; re-download the model")
            tensors.update(read_safetensors(folder / shard)[1])
        return tensors
    if pickle.is_file():
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)   # never a full unpickle
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
    raise CheckpointError(f"no weights in {folder}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {PICKLE_FILE}")


def load_folder(folder, dtype: torch.dtype = torch.float32):
    """Our model for a local Hugging Face folder (config.json + weights), by its `model_type`, in eval mode:
    `MODEL_CLASSES[model_type].from_checkpoint(config.json, tensors)`. (Hub ids and built-in names:
    `minidept.load_model`.)"""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist or is not a folder: pass a local Hugging Face folder "
                              "(for a Hub id or a built-in name, use minidept.load_model)")
    hf_config = read_config(folder)
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(f"{folder / CONFIG_FILE} has model_type={model_type!r}; minidept supports "
                              f"{sorted(MODEL_CLASSES)} (T5, T5 v1.1 / FLAN-T5, GPT-2, Llama 2 / 3, Mistral)")
    return MODEL_CLASSES[model_type].from_checkpoint(hf_config, read_state_dict(folder), dtype, f"checkpoint {folder}")




# ---- Writing, always atomically ---------------------------------------------

def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: `path` is either old or new, never half.

    Only a regular file is ever replaced. A symlink is followed: the file it points to is written and the link
    stays. Anything else at `path` (a folder, a device such as /dev/null, a pipe, a socket) raises a
    CheckpointError and nothing is written: a rename would put a regular file in its place.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} exists and is not a regular file (a folder, device, pipe or socket): "
                              "minidept writes only regular files; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    try:
        # created like any new file (the umask applies), not mkstemp's 0600
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())   # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Tensors (contiguous CPU copies) and string metadata as one safetensors file, atomically."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write(path, save(plain, metadata=metadata))


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_pretrained(model, folder: str | os.PathLike) -> None:
    """A Hugging Face model folder that we and transformers load: the weights under the checkpoint's names
    (`model.to_checkpoint()`), then config.json, each written atomically."""
    tensors, hf_config = model.to_checkpoint()
    save_tensors(tensors, Path(folder) / SAFETENSORS_FILE, metadata={"format": "pt"})
    write_json(Path(folder) / CONFIG_FILE, hf_config)
