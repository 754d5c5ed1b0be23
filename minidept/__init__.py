"""minidept: prompt tuning (PT), DePT, ADePT and EPT on hand-written T5, GPT-2 and Llama.

The core, in reading order: `methods.py` (the papers' equations), `prompted.py` (a method in front of a frozen
backbone), `models/` (T5, GPT-2, Llama), `loop.py` (the training loop). Around it: `data/`, `io/`, `run/`, `tools/`.
"""

from .io.adapters import load_adapter, save_adapter
from .io.backbones import load_model, load_tokenizer
from .io.checkpoint import CheckpointError, save_pretrained
from .methods import PromptConfig
from .prompted import PromptedModel

__all__ = ["load_model", "load_tokenizer", "save_pretrained", "PromptConfig", "PromptedModel", "save_adapter",
           "load_adapter", "CheckpointError"]
