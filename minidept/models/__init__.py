"""The backbones, each in one file (`t5.py`, `gpt2.py`, `llama.py`; the blocks they share in `layers.py`).

`from_folder(folder)` loads the model a Hugging Face folder holds (`config.json` + safetensors),
by its `model_type`; `minidept.load_model` also takes a Hub id or a built-in model name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CONFIG_FILE, CheckpointError, read_config
from .gpt2 import GPT2, GPT2Config
from .llama import Llama, LlamaConfig
from .t5 import T5, T5Config

# config.json's model_type -> our class (Mistral without a sliding window is a Llama)
MODEL_CLASSES = {"t5": T5, "gpt2": GPT2, "llama": Llama, "mistral": Llama}


def from_folder(folder, dtype: torch.dtype = torch.float32):
    """Our model for a local Hugging Face folder, chosen by config.json's `model_type`, in eval mode."""
    model_type = read_config(folder).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(f"{Path(folder) / CONFIG_FILE} has model_type={model_type!r}; minidept supports "
                              f"{sorted(MODEL_CLASSES)} (T5, T5 v1.1 / FLAN-T5, GPT-2, Llama 2 / 3, Mistral)")
    return MODEL_CLASSES[model_type].from_pretrained(folder, dtype=dtype)


__all__ = ["T5", "T5Config", "GPT2", "GPT2Config", "Llama", "LlamaConfig", "MODEL_CLASSES", "from_folder"]
