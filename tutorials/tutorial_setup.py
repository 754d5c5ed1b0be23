"""What every tutorial shares: fast mode, the data switch, the pocket T5, the tiny backbones, where pictures go.

Kept out of the tutorials so each one starts with its subject. Run a tutorial from
this folder (`python tutorials/04_dept.py` or open it in Jupyter / VS Code here).

The data switch: with `MINIDEPT_DATA` naming the project's data folder (GLUE files and
the T5 / GPT-2 / Llama 2 tokenizers) the tutorials use real SST-2 text, the real
tokenizers and tiny random backbones of the real vocabulary sizes; without it, the
built-in demo (the synthetic sentiment task `--task demo`, byte tokenizers and the demo
backbones of `--model demo-t5` / `demo-gpt2` / `demo-llama`).

Where a lesson is learning, the tutorials train on the pocket T5 (`--model pocket-t5`,
docs/pocket.md): a small T5 that minidept pretrained on this kind of CPU and ships in the
package, so it needs no network and no data folder. It learned sentiment behind a task
prefix ("sst2 sentence: ..."); the tutorials feed it the text without one, so the prompt has
to take the prefix's place. Random backbones know nothing a prompt could steer.
"""

import json
import os
import sys
from pathlib import Path

from minidept import load_tokenizer
from minidept.data.load import batches, collate, encode_examples, load_splits
from minidept.data.tasks import get_task, synthetic_sentiment
from minidept.io.backbones import VOCAB_SIZE, byte_tokenizer, load_backbone
from minidept.models.gpt2 import GPT2, GPT2Config
from minidept.models.llama import Llama, LlamaConfig
from minidept.models.t5 import T5, T5Config
from minidept.run.evaluate import evaluate

FAST = os.environ.get("MINIDEPT_FAST") == "1"          # set by the test suite: smaller, quicker settings
DATA = os.environ.get("MINIDEPT_DATA")                 # real tokenizers and data, when you have them
USE_DATA = bool(DATA) and (Path(DATA) / "glue").is_dir()
HERE = Path(__file__).resolve().parent                 # this folder, tutorials/
REPO = HERE.parent                                     # the repository root
OUT = Path(os.environ.get("MINIDEPT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
NOTEBOOK = "ipykernel" in sys.modules                  # inside Jupyter / VS Code's interactive window

# --------------------------------------------------------------------------- #
# The data switch
# --------------------------------------------------------------------------- #

TOKENIZER_FOLDERS = {"t5": "t5-tokenizer", "gpt2": "gpt2-tokenizer", "llama": "llama2-tokenizer"}
REAL_VOCAB_SIZES = {"t5": 32128, "gpt2": 50257, "llama": 32000}   # embedding rows of the real checkpoints


def tokenizer_dir(family: str) -> Path:
    """The real tokenizer's folder in MINIDEPT_DATA (`--tokenizer` of the commands)."""
    return Path(DATA) / TOKENIZER_FOLDERS[family]


def tokenizer_for(family: str):
    """The real tokenizer of `family` ("t5", "gpt2", "llama") with the data, else the demo's byte tokenizer."""
    return load_tokenizer(tokenizer_dir(family)) if USE_DATA else byte_tokenizer(family)


def vocab_size_for(family: str) -> int:
    """Rows of the embedding table: the real checkpoint's (T5: 32,128 for 32,100 pieces), or 259 bytes."""
    return REAL_VOCAB_SIZES[family] if USE_DATA else VOCAB_SIZE


def sentiment_examples(split: str, n: int):
    """(task, the first n examples of `split`): SST-2 with the data, else the demo's synthetic sentiment task."""
    if USE_DATA:
        task = get_task("sst2")
        return task, load_splits(task, data_dir=DATA)[split][:n]
    return get_task("demo"), synthetic_sentiment()[split][:n]


def hf_config(name: str) -> dict | None:
    """A real model's config.json from MINIDEPT_DATA/configs (`t5-small`, `gpt2`, `llama-2-7b`, ...), or None."""
    file = Path(DATA or ".") / "configs" / f"{name}.config.json"
    return json.loads(file.read_text()) if DATA and file.is_file() else None


# --------------------------------------------------------------------------- #
# The pocket T5 and a sentiment task to train it on
# --------------------------------------------------------------------------- #

def pocket_t5():
    """(the pocket T5, frozen and in eval mode, its tokenizer): `--model pocket-t5`, shipped with minidept."""
    return load_backbone("pocket-t5")


def sentiment_splits():
    """(task, {"train", "validation", "test"}): SST-2 split by the official rule (docs/methods.md) with the data,
    else the demo task's synthetic sentences (2,000 / 200 / 200)."""
    task = get_task("sst2" if USE_DATA else "demo")
    return task, load_splits(task, data_dir=DATA if USE_DATA else None)


def encode(task, examples, tokenizer, backbone, max_length: int = 128) -> list[dict]:
    """Examples as token rows for `backbone` (what `python -m minidept.train` feeds it), at most max_length tokens."""
    return encode_examples(task, examples, tokenizer, max_length, decoder_only=not backbone.is_encoder_decoder,
                           eos_id=backbone.config.eos_token_id)[0]


def batch_source(rows: list[dict], batch_size: int, pad_id: int, seed: int = 42):
    """`batch_at(step)` for `minidept.loop.train_loop`: the rows shuffled once per epoch by `seed` (42, the
    train command's default), cut into batches of `batch_size` (a last partial batch dropped), as one
    (batch, weight 1.0) pair a step."""
    per_epoch = len(rows) // batch_size

    def batch_at(step: int):
        epoch, i = divmod(step, per_epoch)
        order = batches(len(rows), batch_size, seed=seed, epoch=epoch, drop_last=True)[i]
        return [(collate([rows[j] for j in order], pad_id), 1.0)]
    return batch_at


def accuracy(model, rows: list[dict], task, tokenizer) -> float:
    """Accuracy (percent) of the model's greedy answers on encoded rows, as `python -m minidept.evaluate` scores."""
    return evaluate(model, rows, task, tokenizer)["accuracy"]


# --------------------------------------------------------------------------- #
# The tiny backbones: 2 blocks (T5: 2 + 2) of width 64, 4 heads
# --------------------------------------------------------------------------- #

def tiny_t5_config(vocab_size: int, **changes) -> T5Config:
    return T5Config(**{**dict(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                              num_decoder_layers=2, num_heads=4), **changes})


def tiny_gpt2_config(vocab_size: int, **changes) -> GPT2Config:
    return GPT2Config(**{**dict(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=4), **changes})


def tiny_llama_config(vocab_size: int, **changes) -> LlamaConfig:
    return LlamaConfig(**{**dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2), **changes})


def tiny_backbone(family: str):
    """A tiny random backbone in eval mode: with the data, of the real vocabulary (drawn from torch's random
    generator, so seed it first); else the demo model `--model demo-<family>` (always the same weights)."""
    if not USE_DATA:
        return load_backbone(f"demo-{family}")[0]
    size = REAL_VOCAB_SIZES[family]
    if family == "t5":
        return T5(tiny_t5_config(size)).eval()
    if family == "gpt2":
        return GPT2(tiny_gpt2_config(size)).eval()
    return Llama(tiny_llama_config(size, pad_token_id=0)).eval()


# --------------------------------------------------------------------------- #
# Pictures
# --------------------------------------------------------------------------- #

try:
    import matplotlib
    if not NOTEBOOK:
        matplotlib.use("Agg")                          # scripts write PNG files; notebooks show them inline
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    print("matplotlib is not installed (pip install matplotlib): the pictures are skipped")


def save(fig, name):
    """Write `fig` to OUT/name as PNG (and show it in a notebook)."""
    fig.savefig(OUT / name, dpi=120, bbox_inches="tight")
    print(f"saved {OUT / name}")
    plt.show() if NOTEBOOK else plt.close(fig)
