"""The Hugging Face Hub: model and adapter repositories fetched with huggingface_hub (installed with datasets).

A name such as `t5-base` or `owner/name` that is not a local path is looked up on the Hub;
only the files minidept reads are fetched. With no network every lookup fails within
seconds with one line that says how to pass a local folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import CONFIG_FILE, PICKLE_FILE, SAFETENSORS_INDEX, CheckpointError
from ..errors import one_line

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model",
                   "tokenizer_config.json", "special_tokens_map.json")
HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES]  # all we fetch

OFFLINE_HINT = (
    "To run without network access, download the model once (for example "
    "`hf download t5-base --local-dir ./t5-base`) and pass the folder: "
    "`--model ./t5-base`. The folder needs config.json and model.safetensors "
    "(plus tokenizer files)."
)


def is_hub_id(name: str) -> bool:
    """`name` or `owner/name` that does not look like a path (a leading `.`, `/` or `~`, two slashes)."""
    return not (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name)


def hub_snapshot(repo_id: str, patterns: list[str], hint: str) -> Path:
    """The local copy of the files of Hub repository `repo_id` that match `patterns` (huggingface_hub's cache).

    With no network this fails within seconds with a CheckpointError ending in `hint`.
    """
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")       # fail fast when offline
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download            # installed with datasets
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # network errors, unknown or gated repository ...
        raise CheckpointError(f"could not get {repo_id!r} from the Hugging Face Hub ({one_line(error)}). "
                              f"{hint}") from error


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder for `name_or_path`: the folder itself, or a Hub download (`t5-small`, `gpt2`, `owner/name`).

    With no network this fails within seconds and says how to pass a local folder instead.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{name!r} is a file; pass the folder that holds config.json")
    if not is_hub_id(name):   # meant as a local folder
        raise CheckpointError(f"model folder {name!r} does not exist. {OFFLINE_HINT}")
    folder = hub_snapshot(name, HUB_PATTERNS, OFFLINE_HINT)
    if not any(folder.glob("*.safetensors")):   # an old repository with pickled weights only
        folder = hub_snapshot(name, [PICKLE_FILE], OFFLINE_HINT)
    return folder
