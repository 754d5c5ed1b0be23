"""The backbones, each in one file (`t5.py`, `gpt2.py`, `llama.py`; the blocks they share in `layers.py`).

Each model class has `from_checkpoint(config.json dict, tensors)` and `to_checkpoint()`;
`minidept.load_model` reads a folder, a Hub id or a built-in name (`minidept/io/`).
"""

from .gpt2 import GPT2, GPT2Config
from .llama import Llama, LlamaConfig
from .loading import CheckpointError
from .t5 import T5, T5Config

# config.json's model_type -> our class (Mistral without a sliding window is a Llama)
MODEL_CLASSES = {"t5": T5, "gpt2": GPT2, "llama": Llama, "mistral": Llama}

__all__ = ["T5", "T5Config", "GPT2", "GPT2Config", "Llama", "LlamaConfig", "MODEL_CLASSES", "CheckpointError"]
