"""Backbones by name: a Hub id, a local folder, or one of the models built into minidept.

A folder or Hub id (`config.json` + safetensors + tokenizer files) loads with the class
its `model_type` names (`MODEL_CLASSES`). Two kinds of model come with minidept, so that
everything runs with nothing downloaded:
- the pocket models (`SHIPPED_MODELS`, `--model pocket-t5` or `pocket-gpt2`): a small T5
  and a small GPT-2 pretrained from scratch by minidept itself (`python -m minidept.pretrain`,
  docs/pocket.md), shipped in the package in the Hugging Face layout. They know some English
  and some tasks, so prompt tuning on them learns real tasks;
- the demo names (`DEMO_MODELS`): a tiny model with RANDOM weights from a config written
  below, and a byte-level tokenizer built in code. They teach how the code works, not how
  well the methods do (a random network knows nothing for a prompt to steer).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models import GPT2, T5, GPT2Config, Llama, LlamaConfig, T5Config
from .checkpoint import CheckpointError, load_folder
from .hub import resolve_model_dir

# --dtype: the frozen backbone's weights and activations (the adapter always trains in float32)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The models shipped in the package (minidept/pocket/), by the name `--model` accepts.
POCKET_DIR = Path(__file__).resolve().parents[1] / "pocket"
SHIPPED_MODELS = {"pocket-t5": POCKET_DIR / "pocket-t5", "pocket-gpt2": POCKET_DIR / "pocket-gpt2"}


def shipped(name) -> bool:
    """`name` is a model shipped with minidept (a folder of that name in the working directory still wins)."""
    return str(name) in SHIPPED_MODELS and not Path(name).is_dir()


def model_dir(name_or_path: str | os.PathLike) -> Path:
    """The local folder of a shipped model's name, a folder, or a Hub id (downloaded)."""
    if shipped(name_or_path):
        folder = SHIPPED_MODELS[str(name_or_path)]
        if not (folder / "model.safetensors").is_file():
            raise CheckpointError(f"the shipped model {name_or_path!r} is missing from {folder}: reinstall minidept, or "
                                  "make it again with python -m minidept.pretrain --data-dir DATA --output-dir "
                                  f"{folder}{' --family gpt2' if 'gpt2' in str(name_or_path) else ''} (docs/pocket.md)")
        return folder
    return resolve_model_dir(name_or_path)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Our model for a Hub id, a local folder (its class chosen by config.json's `model_type`), a shipped
    model's name (`SHIPPED_MODELS`: `pocket-t5`, `pocket-gpt2`) or a demo name (`DEMO_MODELS`: random weights, the same
    every time), in eval mode.

    `model.name_or_path` and `model.revision` say where it came from (adapters saved on it
    record them): the Hub id and commit, the folder's absolute path and None, or the shipped
    or demo name and None.
    """
    if str(name_or_path) in DEMO_MODELS and not Path(name_or_path).is_dir():   # a folder called "demo" still wins
        config = DEMO_MODELS[str(name_or_path)]
        with torch.random.fork_rng(devices=[]):            # always the same weights; the caller's RNG untouched
            torch.manual_seed(0)
            model = {T5Config: T5, GPT2Config: GPT2, LlamaConfig: Llama}[type(config)](config).eval()
        model.name_or_path, model.revision = str(name_or_path), None
        return model.to(dtype)
    folder = model_dir(name_or_path)
    model = load_folder(folder, dtype)
    folder = folder.resolve()   # huggingface_hub keeps a download in models--owner--name/snapshots/COMMIT
    hub = folder.parent.name == "snapshots" and folder.parents[1].name.startswith("models--")
    model.name_or_path = (str(name_or_path) if shipped(name_or_path) else
                          folder.parents[1].name[len("models--"):].replace("--", "/") if hub else str(folder))
    model.revision = folder.name if hub else None
    return model


def load_tokenizer(name_or_path: str | os.PathLike):
    """A `tokenizers.Tokenizer` from `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import ByteLevelBPETokenizer

    folder = model_dir(name_or_path)
    json_file, vocab, merges = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
    try:
        if json_file.is_file():
            return Tokenizer.from_file(str(json_file))
        if vocab.is_file() and merges.is_file():
            return ByteLevelBPETokenizer(str(vocab), str(merges))._tokenizer
    except Exception as error:
        raise CheckpointError(f"the tokenizer files in {folder} could not be read ({error})") from error
    raise CheckpointError(f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json + merges.txt (GPT-2); "
                          "pass the folder that holds them with --tokenizer DIR")


def load_backbone(name: str, tokenizer: str | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(frozen model in eval mode on `device`, tokenizer) for a Hub id, a local folder, a shipped model's name
    (`pocket-t5`, `pocket-gpt2`) or a demo model name.

    device "auto": CUDA if there is a GPU, else Apple's MPS, else the CPU. dtype: the model's
    weights (`DTYPES`); float16 only on a GPU.
    """
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    device = next(kind for kind in ("cuda", "mps", "cpu") if available[kind]) if device == "auto" else device
    if not available.get(device):
        raise ValueError(f"--device {device} is not available on this machine; use --device cpu or auto")
    if dtype == torch.float16 and device == "cpu":
        raise ValueError("--dtype float16 needs a GPU: CPU kernels for float16 are slow or missing, and without "
                         "loss scaling its small gradients vanish; use --dtype bfloat16 on the CPU")
    if name in DEMO_MODELS and not Path(name).is_dir():     # a folder called "demo" still wins
        model = load_model(name, dtype)
        source, tok = "the byte-level tokenizer", byte_tokenizer(model.model_type)
    else:
        folder = model_dir(name)
        source = f"the tokenizer in {tokenizer or folder}"
        model, tok = load_model(name if shipped(name) else folder, dtype), load_tokenizer(tokenizer or folder)
    check_tokenizer(model, tok, source)
    return model.to(device=device, dtype=dtype).requires_grad_(False), tok


def check_tokenizer(model, tokenizer, source: str) -> None:
    """A CheckpointError unless every id of `tokenizer` has a row in the model's embedding table and the
    model's special ids (pad, end and start of sequence) are tokens of it: another model's tokenizer would
    fail deep inside the embedding lookup, or produce ids that mean something else without a word."""
    size, ids = model.config.vocab_size, tokenizer.get_vocab().values()
    if max(ids) >= size:
        raise CheckpointError(f"{source} has ids up to {max(ids):,}, but the model's vocabulary has {size:,}: "
                              "it is another model's tokenizer; pass the model's own with --tokenizer DIR")
    special = {name: getattr(model.config, name, None) for name in
               ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")}
    unknown = [f"{name}={i}" for name, i in special.items() if i is not None and tokenizer.id_to_token(i) is None]
    if unknown:
        raise CheckpointError(f"{source} has no token for the model's {', '.join(unknown)}: it is another model's "
                              "tokenizer; pass the model's own with --tokenizer DIR")


# --------------------------------------------------------------------------- #
# The demo models: tiny configs and a byte-level tokenizer, built in code
# --------------------------------------------------------------------------- #

# Special tokens first, then byte b is token id b + 3. Every flavour uses the same ids for pad
# and end-of-sequence; Llama's puts its beginning-of-sequence token <s> third.
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
SPECIALS = {"t5": ("<pad>", "</s>", "<unk>"), "gpt2": ("<pad>", "<|endoftext|>", "<unk>"),
            "llama": ("<pad>", "</s>", "<s>")}
VOCAB_SIZE = 3 + 256

# The T5 v1.1 / FLAN-T5 layout (gated-gelu, separate output head): with random weights a prompt
# can steer a separate head to the label tokens; a tied head (original T5) barely moves.
# No dropout: the runs are short and the model random.
DEMO_T5 = T5Config(vocab_size=VOCAB_SIZE, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                   num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=64,
                   dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
DEMO_GPT2 = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS_ID, eos_token_id=EOS_ID)
# Llama with grouped-query attention (4 query heads, 2 key/value heads) and a separate head, as Llama 2.
DEMO_LLAMA = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
DEMO_MODELS = {"demo": DEMO_T5, "demo-t5": DEMO_T5, "demo-gpt2": DEMO_GPT2,
               "demo-llama": DEMO_LLAMA}   # names `--model` accepts
BUILT_IN_MODELS = set(DEMO_MODELS) | set(SHIPPED_MODELS)   # models that come with minidept (small: the commands'
                                                          # defaults are shorter)


def byte_tokenizer(flavour: str = "t5"):
    """A `tokenizers.Tokenizer` over raw UTF-8 bytes: ids 0-2 special, byte b = id b + 3.

    flavour "t5": specials <pad>, </s>, <unk>, and </s> appended to every encoding
    (as T5's own tokenizer does). flavour "gpt2": <pad>, <|endoftext|>, <unk>, and
    nothing appended (as GPT-2's). flavour "llama": <pad>, </s>, <s>, and <s> put in
    front (as Llama's). Every byte is in the vocabulary, so <unk> never occurs.

    >>> byte_tokenizer().encode("Hi!").ids
    [75, 108, 36, 1]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if flavour not in SPECIALS:
        raise ValueError(f"flavour must be one of {sorted(SPECIALS)}, got {flavour!r}")
    # GPT-2's byte-to-character map: printable bytes stand for themselves, the others
    # (space, control bytes, ...) move to the characters from 256 upwards, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) if b in printable else chr(256 + moved.index(b)) for b in range(256)}
    vocab = {token: i for i, token in enumerate(SPECIALS[flavour])}
    vocab.update({char: 3 + b for b, char in chars.items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))   # no merges: one token a byte
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIALS[flavour]))
    if flavour == "t5":
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    elif flavour == "llama":
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    return tokenizer
