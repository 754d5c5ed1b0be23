"""minidept: prompt tuning (PT), DePT, ADePT and EPT on hand-written T5 and GPT-2.

Entry points:
- `load_model(name_or_path)`: our T5 or GPT-2 with Hugging Face weights, in eval mode.
- `load_tokenizer(name_or_path)`: the matching `tokenizers.Tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .io import CheckpointError, read_config, resolve_model_dir

__all__ = ["load_model", "load_tokenizer", "CheckpointError"]


def load_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32):
    """Our T5 or GPT-2 for a Hub id or a local folder, chosen by config.json's `model_type`."""
    folder = resolve_model_dir(name_or_path)
    model_type = read_config(folder).get("model_type")
    from .gpt2 import GPT2
    from .t5 import T5

    classes = {"t5": T5, "gpt2": GPT2}
    if model_type not in classes:
        raise CheckpointError(
            f"{folder / 'config.json'} has model_type={model_type!r}; minidept supports "
            f"{sorted(classes)} (T5, T5 v1.1 / FLAN-T5, GPT-2)")
    return classes[model_type].from_pretrained(folder, dtype=dtype)


def load_tokenizer(name_or_path: str | Path):
    """A `tokenizers.Tokenizer` from `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import ByteLevelBPETokenizer

    folder = resolve_model_dir(name_or_path)
    if (folder / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as error:
            raise CheckpointError(f"{folder / 'tokenizer.json'} could not be read ({error})") from error
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        try:
            return ByteLevelBPETokenizer(str(vocab), str(merges))._tokenizer
        except Exception as error:
            raise CheckpointError(f"{vocab} / {merges} could not be read as a byte-level BPE ({error})") from error
    raise CheckpointError(
        f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json + merges.txt (GPT-2)")
