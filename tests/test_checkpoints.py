"""The file layer: tokenizers, Hub fallback, weight formats, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

import minidept
from minidept.io import CheckpointError, atomic_path, read_state_dict, resolve_model_dir, write_json


def test_real_tokenizers_give_documented_ids(data_dir):
    t5 = minidept.load_tokenizer(data_dir / "t5-tokenizer")
    assert t5.encode("Hello world").ids == [8774, 296, 1]
    assert t5.encode("Attention rocks!").ids == [20748, 12288, 55, 1]
    gpt2 = minidept.load_tokenizer(data_dir / "gpt2-tokenizer")
    assert gpt2.encode("Hello world").ids == [15496, 995]
    assert gpt2.token_to_id("<|endoftext|>") == 50256
    assert gpt2.decode([15496, 995]) == "Hello world"


def test_folder_without_tokenizer_names_expected_files(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.json, or vocab.json"):
        minidept.load_tokenizer(tmp_path)


def test_missing_local_folder_says_how_to_pass_one(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*--model"):
        resolve_model_dir(str(tmp_path / "nope"))


def test_offline_hub_id_fails_fast_with_hint(tmp_path):
    """No network here: a Hub id must fail within seconds and say how to pass a folder."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    code = ("import minidept\n"
            "try:\n    minidept.load_model('t5-small')\n"
            "except minidept.CheckpointError as e:\n    print('ERR', e)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - start
    assert "ERR could not get 't5-small'" in out.stdout, out.stdout + out.stderr
    assert "--model ./t5-base" in out.stdout
    assert elapsed < 60, f"offline failure took {elapsed:.1f}s"


def test_sharded_safetensors_are_merged(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    tensors = read_state_dict(tmp_path)
    assert sorted(tensors) == ["a", "b"] and tensors["b"].shape == (3,)


def test_missing_shard_is_named(tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors is listed"):
        read_state_dict(tmp_path)


def test_pickled_objects_are_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        read_state_dict(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_hub_download_fetches_only_model_files_and_falls_back_to_bin(tmp_path, monkeypatch):
    """The Hub path asks for config, safetensors and tokenizer files; pickled weights only if no safetensors."""
    import huggingface_hub

    asked = []

    def fake_snapshot_download(repo_id, allow_patterns):
        asked.append((repo_id, list(allow_patterns)))
        (tmp_path / "config.json").write_text("{}")
        if allow_patterns == ["pytorch_model.bin"]:
            torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_dir("some-user/old-model") == tmp_path
    assert asked[0][0] == "some-user/old-model" and "*.safetensors" in asked[0][1]
    assert "*.bin" not in asked[0][1] and "pytorch_model.bin" not in asked[0][1]
    assert asked[1] == ("some-user/old-model", ["pytorch_model.bin"])
    assert torch.equal(read_state_dict(tmp_path)["w"], torch.ones(2))

    asked.clear()
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    resolve_model_dir("t5-small")
    assert len(asked) == 1, "with safetensors present, no pickled weights are fetched"
