"""Adapters: one .safetensors file with only the trainable tensors, refused by the wrong backbone."""

import json

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_t5
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import minidept
from minidept.io import CheckpointError, save_tensors
from minidept.prompts import PromptConfig, PromptedModel

METHODS = ["pt", "dept", "adept", "ept"]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    make_hf_t5(root / "t5")
    make_hf_t5(root / "t5_wide", d_model=48)
    make_hf_t5(root / "t5_deeper", num_layers=3)
    make_hf_gpt2(root / "gpt2")
    return {name: minidept.load_model(root / name) for name in ("t5", "t5_wide", "t5_deeper", "gpt2")}


def build(backbone, method, seed=0, **overrides):
    values = dict(l=6) if method == "pt" else dict(l=20, m=4)
    values.update(max_length=16, seed=seed, **overrides)
    return PromptedModel(backbone, PromptConfig(method, **values)).eval()


@torch.no_grad()
def perturb(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for p in model.trainable_parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


@torch.no_grad()
def logits(model):
    ids = torch.tensor([[5, 9, 20, 31, 0], [7, 8, 9, 10, 11]])
    mask = (ids != 0).long()
    if model.model_type == "t5":
        return model(ids, mask, decoder_input_ids=torch.tensor([[0, 4], [0, 6]]))
    return model(ids, mask)


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
@settings(max_examples=12, deadline=None)
@given(method=st.sampled_from(METHODS), seed=st.integers(0, 2**16))
def test_adapter_round_trips_bit_exactly(backbones, tmp_path_factory, kind, method, seed):
    model = perturb(build(backbones[kind], method, seed=seed), seed=seed + 1)
    path = tmp_path_factory.mktemp("adapter") / "adapter.safetensors"
    model.save_adapter(path)
    assert [p.name for p in path.parent.iterdir()] == ["adapter.safetensors"]   # no temporary file left
    loaded = PromptedModel.from_adapter(path, backbones[kind])
    assert loaded.config == model.config
    saved, back = model.adapter_state_dict(), loaded.adapter_state_dict()
    assert saved.keys() == back.keys()
    for name in saved:
        assert torch.equal(saved[name], back[name]), name
    assert torch.equal(logits(loaded), logits(model))


def test_adapter_holds_only_the_trainable_tensors_and_the_identity(backbones, tmp_path):
    model = build(backbones["t5"], "ept")
    model.save_adapter(tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as handle:
        names, metadata = set(handle.keys()), handle.metadata()
    assert names == {"prompt.P", "update.A", "update.B", "projection.U", "projection.V", "projection.W_g"}
    assert not any(name.startswith("backbone") for name in names)
    assert metadata["model_type"] == "t5" and metadata["d_model"] == "32"
    assert json.loads(metadata["config"])["method"] == "ept" and json.loads(metadata["config"])["r"] == 2
    assert len(metadata["backbone_config_hash"]) == 16


def test_load_adapter_into_an_existing_model(backbones, tmp_path):
    source = perturb(build(backbones["gpt2"], "dept"))
    source.save_adapter(tmp_path / "a.safetensors")
    target = build(backbones["gpt2"], "dept")
    reference = logits(target)  # also fills the GPT-2 prompt cache, which loading must invalidate
    target.load_adapter(tmp_path / "a.safetensors")
    assert torch.equal(logits(target), logits(source))
    assert not torch.equal(logits(target), reference)
    other = build(backbones["gpt2"], "dept", m=5)
    with pytest.raises(CheckpointError, match="from_adapter"):
        other.load_adapter(tmp_path / "a.safetensors")


@pytest.mark.parametrize("source, target, message", [
    ("t5", "gpt2", "trained on a t5 with d_model=32; this backbone is a gpt2"),
    ("gpt2", "t5", "trained on a gpt2 with d_model=32; this backbone is a t5"),
    ("t5", "t5_wide", "trained on a t5 with d_model=32; this backbone is a t5 with d_model=48"),
])
def test_adapter_on_the_wrong_backbone_fails_clearly(backbones, tmp_path, source, target, message):
    build(backbones[source], "dept").save_adapter(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=message):
        PromptedModel.from_adapter(tmp_path / "a.safetensors", backbones[target])


def test_adapter_on_a_differently_configured_backbone_warns(backbones, tmp_path):
    build(backbones["t5"], "dept").save_adapter(tmp_path / "a.safetensors")
    with pytest.warns(UserWarning, match="different config"):
        PromptedModel.from_adapter(tmp_path / "a.safetensors", backbones["t5_deeper"])


def test_broken_adapter_files_fail_clearly(backbones, tmp_path):
    model = build(backbones["t5"], "dept")
    with pytest.raises(CheckpointError, match="does not exist"):
        PromptedModel.from_adapter(tmp_path / "missing.safetensors", backbones["t5"])
    save_tensors({"x": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="not a minidept adapter"):
        PromptedModel.from_adapter(tmp_path / "weights.safetensors", backbones["t5"])
    model.save_adapter(tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read"):
        PromptedModel.from_adapter(tmp_path / "cut.safetensors", backbones["t5"])
    # right metadata, wrong tensors: named in the error
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["update.B"] = torch.zeros(3, 32)
    del tensors["update.A"]
    tensors["extra"] = torch.zeros(1)
    save_tensors(tensors, tmp_path / "bad.safetensors", metadata)
    with pytest.raises(CheckpointError, match=r"missing: update.A(.|\n)*unexpected: extra(.|\n)*update.B: \(3, 32\)"):
        PromptedModel.from_adapter(tmp_path / "bad.safetensors", backbones["t5"])
