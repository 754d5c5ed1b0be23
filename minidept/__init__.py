"""minidept: prompt tuning (PT), DePT, ADePT and EPT on hand-written T5, GPT-2 and Llama.

Where to read (docs/methods.md is the specification the code cites):
- `minidept/methods.py`: the methods' equations, budgets and config (the paper's part);
- `minidept/prompted.py`: a method in front of a frozen backbone (`PromptedModel`);
- `minidept/t5.py`, `minidept/gpt2.py`, `minidept/llama.py`: the backbones, each in one file;
- `minidept/train.py`: the training loop (`python -m minidept.train`, `train(TrainConfig(...))`).

`load_model(name_or_path)` gives our T5, GPT-2 or Llama with Hugging Face weights, in eval mode;
`load_tokenizer(name_or_path)` the matching `tokenizers.Tokenizer`.
"""

from .checkpoints import CheckpointError
from .methods import PromptConfig
from .models import load_model, load_tokenizer
from .prompted import PromptedModel

__all__ = ["load_model", "load_tokenizer", "PromptConfig", "PromptedModel", "CheckpointError"]
