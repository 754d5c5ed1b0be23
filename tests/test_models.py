"""minidept.models: backbones by name (Hub id, local folder, demo), tokenizers, the demo models built in code."""

from __future__ import annotations

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_llama, make_hf_t5
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minidept
from minidept.io.checkpoint import CheckpointError
from minidept.models.gpt2 import GPT2
from minidept.models.llama import Llama
from minidept.io.backbones import (BOS_ID, DEMO_GPT2, DEMO_MODELS, DEMO_T5, EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer, load_backbone, load_model, load_tokenizer)
from minidept.models import MODEL_CLASSES
from minidept.prompted import PromptedModel
from minidept.models.t5 import T5


# --------------------------------------------------------------------------- #
# Tokenizers
# --------------------------------------------------------------------------- #

def test_real_tokenizers_give_documented_ids(data_dir):
    t5 = minidept.load_tokenizer(data_dir / "t5-tokenizer")
    assert t5.encode("Hello world").ids == [8774, 296, 1]
    assert t5.encode("Attention rocks!").ids == [20748, 12288, 55, 1]
    gpt2 = minidept.load_tokenizer(data_dir / "gpt2-tokenizer")
    assert gpt2.encode("Hello world").ids == [15496, 995]
    assert gpt2.token_to_id("<|endoftext|>") == 50256
    assert gpt2.decode([15496, 995]) == "Hello world"


def test_folder_without_tokenizer_names_expected_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"tokenizer.json, or vocab.json.*--tokenizer DIR"):
        minidept.load_tokenizer(tmp_path)
    assert (minidept.load_tokenizer, minidept.load_model) == (load_tokenizer, load_model)   # the package's names


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_is_bytes_plus_three(text):
    assume(not any(token in text for token in ("<pad>", "</s>", "<unk>", "<|endoftext|>")))
    t5, gpt2 = byte_tokenizer("t5"), byte_tokenizer("gpt2")
    byte_ids = [b + 3 for b in text.encode("utf-8")]
    assert t5.encode(text).ids == byte_ids + [EOS_ID]               # T5 flavour appends </s>
    assert gpt2.encode(text).ids == byte_ids                         # GPT-2 flavour appends nothing
    assert t5.decode(t5.encode(text).ids) == text == gpt2.decode(byte_ids)


def test_byte_tokenizer_specials_match_the_models():
    """The demo's ids: eos 1 and pad 0 in the T5 flavour; GPT-2 has no pad token, so pad = eos = 1."""
    t5, gpt2 = byte_tokenizer("t5"), byte_tokenizer("gpt2")
    assert (t5.token_to_id("</s>"), t5.token_to_id("<pad>")) == (EOS_ID, PAD_ID) == (1, 0)
    assert gpt2.token_to_id("<|endoftext|>") == EOS_ID
    assert (DEMO_T5.eos_token_id, DEMO_T5.pad_token_id, DEMO_GPT2.eos_token_id) == (1, 0, 1)
    t5_model = PromptedModel(load_backbone("demo")[0], minidept.PromptConfig("pt", l=4, max_length=16))
    gpt2_model = PromptedModel(load_backbone("demo-gpt2")[0], minidept.PromptConfig("pt", l=4, max_length=16))
    assert (t5_model.eos_id, t5_model.pad_id) == (1, 0)
    assert (gpt2_model.eos_id, gpt2_model.pad_id) == (1, 1)
    assert byte_tokenizer().get_vocab_size() == VOCAB_SIZE == 259
    with pytest.raises(ValueError, match="flavour"):
        byte_tokenizer("bert")


# --------------------------------------------------------------------------- #
# The demo models: always the same random weights, built in code
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", ["demo", "demo-t5", "demo-gpt2", "demo-llama"])
def test_demo_backbone_is_always_the_same_and_leaves_the_global_rng_alone(name):
    state = torch.get_rng_state()
    (a, tokenizer), (b, _) = load_backbone(name), load_backbone(name)
    assert torch.equal(torch.get_rng_state(), state)
    assert not a.training and not any(p.requires_grad for p in a.parameters())   # frozen, eval mode
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert isinstance(a, {"demo-gpt2": GPT2, "demo-llama": Llama}.get(name, T5)) and a.config == DEMO_MODELS[name]
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    # T5 appends </s>, GPT-2 adds nothing, Llama puts <s> in front
    assert tokenizer.encode("a").ids == {"demo-gpt2": [100], "demo-llama": [BOS_ID, 100]}.get(name, [100, EOS_ID])


def test_demo_and_demo_t5_are_the_same_model():
    a, b = load_backbone("demo")[0], load_backbone("demo-t5")[0]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_name_is_a_hub_id_that_fails_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="'demo-bert'.*--model"):
        load_backbone("demo-bert")


# --------------------------------------------------------------------------- #
# load_backbone and load_model on folders
# --------------------------------------------------------------------------- #

def test_load_model_picks_the_class_from_model_type(tmp_path):
    make_hf_t5(tmp_path / "t5")
    make_hf_gpt2(tmp_path / "gpt2")
    make_hf_llama(tmp_path / "llama")
    assert MODEL_CLASSES == {"t5": T5, "gpt2": GPT2, "llama": Llama, "mistral": Llama}
    t5, gpt2 = load_model(tmp_path / "t5"), load_model(tmp_path / "gpt2", dtype=torch.bfloat16)
    assert isinstance(t5, T5) and isinstance(gpt2, GPT2) and not t5.training and not gpt2.training
    assert gpt2.wte.weight.dtype == torch.bfloat16
    assert isinstance(load_model(tmp_path / "llama"), Llama)


def test_load_backbone_from_a_folder_is_frozen_with_its_tokenizer(tmp_path):
    make_hf_gpt2(tmp_path / "gpt2", vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID)   # the tokenizer's
    byte_tokenizer("gpt2").save(str(tmp_path / "gpt2" / "tokenizer.json"))
    model, tokenizer = load_backbone(str(tmp_path / "gpt2"), dtype=torch.bfloat16)
    assert isinstance(model, GPT2) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert tokenizer.encode("a").ids == [100]
    # a tokenizer from another folder
    make_hf_t5(tmp_path / "t5", vocab_size=VOCAB_SIZE)
    (tmp_path / "tok").mkdir()
    byte_tokenizer("t5").save(str(tmp_path / "tok" / "tokenizer.json"))
    model, tokenizer = load_backbone(str(tmp_path / "t5"), tokenizer=str(tmp_path / "tok"))
    assert isinstance(model, T5) and tokenizer.encode("a").ids == [100, EOS_ID]
    with pytest.raises(CheckpointError, match="no tokenizer in"):
        load_backbone(str(tmp_path / "t5"))


def test_a_folder_called_demo_wins_over_the_demo_model(tmp_path, monkeypatch):
    make_hf_gpt2(tmp_path / "demo", vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID)
    byte_tokenizer("gpt2").save(str(tmp_path / "demo" / "tokenizer.json"))
    monkeypatch.chdir(tmp_path)
    model, _ = load_backbone("demo")
    assert isinstance(model, GPT2) and model.name_or_path == str(tmp_path / "demo")   # the folder's, not the demo T5


def test_devices():
    model, _ = load_backbone("demo-gpt2", device="cpu")
    assert model.wte.weight.device.type == "cpu"
    if not torch.cuda.is_available():
        model, _ = load_backbone("demo-gpt2", device="auto")   # no GPU here: MPS or the CPU
        assert model.wte.weight.device.type in ("mps", "cpu")
        with pytest.raises(ValueError, match="--device cuda is not available on this machine; use --device cpu or auto"):
            load_backbone("demo-gpt2", device="cuda")
    else:
        model, _ = load_backbone("demo-gpt2", device="auto")
        assert model.wte.weight.device.type == "cuda"


# --------------------------------------------------------------------------- #
# The core: what a student reads first
# --------------------------------------------------------------------------- #

def core_files():
    """The core: the files directly in minidept/ longer than 15 lines (not the command shims), and models/."""
    from pathlib import Path

    package = Path(minidept.__file__).parent
    top = [file for file in package.glob("*.py") if len(file.read_text(encoding="utf-8").splitlines()) > 15]
    return sorted(top + list((package / "models").glob("*.py")))


def imported_modules(file):
    """Every module `file` imports, relative imports resolved to absolute names."""
    import ast

    package = "minidept" + "".join("." + part for part in file.parent.relative_to(
        __import__("pathlib").Path(minidept.__file__).parent).parts)
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            if node.module:
                yield ".".join(base + [node.module])
            else:
                yield from (".".join(base + [alias.name]) for alias in node.names)


def test_the_core_imports_torch_safetensors_and_the_core_only():
    import sys

    core = {"minidept." + ".".join(file.with_suffix("").relative_to(file.parents[1] if file.parent.name == "models"
                                                                     else file.parent).parts)
            for file in core_files()} | {"minidept.models"}
    assert {"minidept.methods", "minidept.prompted", "minidept.loop", "minidept.models.loading",
            "minidept.models.layers", "minidept.models.t5"} <= core
    for file in core_files():
        for name in imported_modules(file):
            top = name.split(".")[0]
            if top == "minidept":
                assert name in core or name.rsplit(".", 1)[0] in core - {"minidept"}, (file.name, name)
            else:
                assert top in sys.stdlib_module_names or top in ("torch", "safetensors"), (file.name, name)


def test_the_core_is_read_in_one_sitting():
    """At most 2,000 lines: the methods, the prompted model, the models and the loop; files go to minidept/io/."""
    lines = {file.name: len(file.read_text(encoding="utf-8").splitlines()) for file in core_files()}
    assert sum(lines.values()) <= 2000, lines


def test_the_models_name_the_past_length_n_past_and_their_docstrings_what_exists():
    """`P` is the prompt everywhere; the cache's length is `n_past`. A model is built from a config.json dict and
    tensors (files are minidept/io/), and every minidept/ path a core docstring or comment names exists."""
    import ast
    import inspect
    import re
    from pathlib import Path

    root = Path(minidept.__file__).parent.parent
    for file in core_files():
        text = file.read_text(encoding="utf-8")
        if file.parent.name == "models":
            names = {node.id for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Name)}
            names |= {node.arg for node in ast.walk(ast.parse(text)) if isinstance(node, ast.arg)}
            assert "P" not in names, file.name
        for path in re.findall(r"minidept/[\w/]+\.py", text):
            assert (root / path).is_file(), (file.name, path)
        assert not re.search(r"\bcheckpoints\.[a-z_]|minidept\.layers|EncoderDecoderPrompted|PromptedModel\.save_adapter",
                             text), file.name
    for model in (T5, GPT2, Llama):   # the core reads no files: a model is built from what io/ read
        assert list(inspect.signature(model.from_checkpoint).parameters)[:2] == ["hf_config", "state"], model
        assert not hasattr(model, "from_pretrained") and not hasattr(model, "save_pretrained"), model
