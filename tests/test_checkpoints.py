"""minidept.checkpoints: every file minidept reads or writes.

Model folders (Hub fallback, weight formats, pickles refused), atomic writes,
the one strict copy into a model (`copy_into`), adapters (only the trainable
tensors, refused by the wrong backbone) and training states.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_t5
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import minidept
import minidept.io.adapters
from minidept.io.adapters import ADAPTER_FORMAT, read_adapter
from minidept.io.state import STATE_FORMAT, load_state, save_state
from minidept.io.checkpoint import (CheckpointError, atomic_write, copy_into, read_safetensors, read_state_dict, save_tensors, write_json)
from minidept.io.hub import resolve_model_dir
from minidept.methods import PromptConfig
from minidept.prompted import PromptedModel

METHODS = ["pt", "dept", "adept", "ept"]


# --------------------------------------------------------------------------- #
# Model folders: local, from the Hub, in every weight format
# --------------------------------------------------------------------------- #

def test_load_model_builds_the_demo_models_offline(monkeypatch):
    """`minidept.load_model("demo")` is the model `--model demo` trains, not a Hub lookup."""
    from minidept.io import backbones
    monkeypatch.setattr(backbones, "resolve_model_dir", lambda name: pytest.fail(f"looked up {name}"))
    model = minidept.load_model("demo-gpt2")
    assert model.model_type == "gpt2" and model.name_or_path == "demo-gpt2" and not model.training
    same = backbones.load_backbone("demo-gpt2")[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert minidept.load_model("demo", dtype=torch.bfloat16).shared.weight.dtype == torch.bfloat16


def test_another_models_tokenizer_is_refused_at_load(tmp_path):
    """A tokenizer with ids past the embedding table (GPT-2's on T5) or without the model's special ids (T5's
    on GPT-2) is refused when the backbone loads, not with an IndexError, nor accepted silently."""
    from minidept.io.backbones import byte_tokenizer, load_backbone
    make_hf_t5(tmp_path / "t5")                                        # 128 ids; the byte tokenizer has 259
    byte_tokenizer("gpt2").save(str(tmp_path / "t5" / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="has ids up to 258, but the model's vocabulary has 128: it is "
                                              "another model's tokenizer; pass the model's own with --tokenizer"):
        load_backbone(str(tmp_path / "t5"))
    make_hf_gpt2(tmp_path / "gpt2", vocab_size=300, bos_token_id=299, eos_token_id=299)
    byte_tokenizer("t5").save(str(tmp_path / "gpt2" / "tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"has no token for the model's eos_token_id=299, bos_token_id=299"):
        load_backbone(str(tmp_path / "gpt2"))


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
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors"):
        read_state_dict(tmp_path)


def test_missing_shard_says_the_index_lists_it_and_how_to_fix_it(tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors is listed in "
                                              r"model\.safetensors\.index\.json.*re-download"):
        read_state_dict(tmp_path)


def test_pickled_objects_are_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        read_state_dict(tmp_path)


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


def test_read_safetensors_gives_metadata_and_tensors(tmp_path):
    save_tensors({"x": torch.arange(3.0)}, tmp_path / "f.safetensors", {"format": "something", "n": "3"})
    metadata, tensors = read_safetensors(tmp_path / "f.safetensors")
    assert metadata == {"format": "something", "n": "3"} and torch.equal(tensors["x"], torch.arange(3.0))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x07" * 64)
    with pytest.raises(CheckpointError, match="could not be read as safetensors.*truncated or corrupt"):
        read_safetensors(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- #
# Atomic writes: the old file or the new one, never half of one
# --------------------------------------------------------------------------- #

def test_atomic_write_writes_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic_write(tmp_path / "sub" / "f.bin", b"new bytes")        # the folder is made
    assert (tmp_path / "sub" / "f.bin").read_bytes() == b"new bytes"
    assert calls == ["fsync", "replace"]                          # on disk before the name points at it
    atomic_write(tmp_path / "sub" / "f.bin", b"newer")
    assert (tmp_path / "sub" / "f.bin").read_bytes() == b"newer"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.bin"]


@pytest.mark.parametrize("writer", ["atomic_write", "write_json", "save_tensors"])
def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch, writer):
    """A crash at the rename (the last step) keeps the old file and removes the temporary one."""
    target = tmp_path / "state.json"
    write_json(target, {"step": 1})
    before = target.read_bytes()

    def crash(src, dst):
        assert os.path.exists(src) and os.path.dirname(src) == str(tmp_path)   # the temporary file, same folder
        raise OSError("disk full mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        if writer == "atomic_write":
            atomic_write(target, b"half")
        elif writer == "write_json":
            write_json(target, {"step": 2})
        else:
            save_tensors({"x": torch.ones(3)}, target)
    assert target.read_bytes() == before and json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_removes_the_temporary_file_on_interrupt(tmp_path, monkeypatch):
    """Any exception, KeyboardInterrupt included, removes the temporary file and re-raises."""
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "link to a device"])
def test_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    """A rename would put a regular file where a device node (as root: `evaluate --predictions /dev/null`), a
    pipe or a folder was: refused with one line, and the node is still there afterwards."""
    import stat
    target = tmp_path / "out"
    made = tmp_path / "node" if kind == "link to a device" else target
    if kind in ("device", "link to a device"):
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(made, stat.S_IFCHR | 0o666, os.makedev(1, 3))    # the numbers of /dev/null
    elif kind == "fifo":
        os.mkfifo(made)
    else:
        made.mkdir()
    if kind == "link to a device":
        target.symlink_to(made)
    mode = made.stat().st_mode
    with pytest.raises(CheckpointError, match="is not a regular file.*choose another path") as error:
        atomic_write(target, b"new")
    assert "\n" not in str(error.value)
    assert made.stat().st_mode == mode and not stat.S_ISREG(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out", made.name})   # no temporary file left


def test_atomic_write_follows_a_symlink_and_keeps_it(tmp_path):
    real = tmp_path / "real" / "results.json"
    real.parent.mkdir()
    real.write_bytes(b"old")
    (tmp_path / "link.json").symlink_to(real)
    atomic_write(tmp_path / "link.json", b"new")
    assert (tmp_path / "link.json").is_symlink() and real.read_bytes() == b"new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["results.json"]


# --------------------------------------------------------------------------- #
# The one strict copy into a model
# --------------------------------------------------------------------------- #

def test_copy_into_copies_when_everything_fits():
    params = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    copy_into(params, {"a": torch.ones(2, 3), "b": torch.arange(4.0)}, "file f")
    assert torch.equal(params["a"], torch.ones(2, 3)) and torch.equal(params["b"], torch.arange(4.0))


def test_copy_into_names_every_problem_and_copies_nothing():
    params = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    tensors = {"a": torch.ones(2, 3), "b": torch.ones(5), "extra": torch.ones(1)}
    with pytest.raises(CheckpointError) as caught:
        copy_into(params, tensors, "adapter x.safetensors", hint="use the right file")
    message = str(caught.value)
    assert message == ("adapter x.safetensors does not fit the model: missing (not in the file): c; "
                       "unexpected (not in the model): extra; shape mismatch: b: (5,) in the file, (4,) in the "
                       "model; use the right file")
    assert params["a"].eq(0).all()                                # nothing copied, not even what fitted
    with pytest.raises(CheckpointError, match=r"not floating point \(quantized weights are not supported\): "
                                              r"b: torch\.int8; check that the file belongs to this model"):
        copy_into(params, {**params, "b": torch.ones(4, dtype=torch.int8)}, "file f")
    many = {f"p{i}": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointError, match=r"missing \(not in the file\): p0, p1, .*p19, \.\.\. \(25 in all\)"):
        copy_into(many, {}, "file f")


# --------------------------------------------------------------------------- #
# Adapters: one .safetensors file with only the trainable tensors
# --------------------------------------------------------------------------- #

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
    if model.backbone.model_type == "t5":
        return model(ids, mask, decoder_input_ids=torch.tensor([[0, 4], [0, 6]]))
    return model(ids, mask)


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
@settings(max_examples=12, deadline=None)
@given(method=st.sampled_from(METHODS), seed=st.integers(0, 2**16))
def test_adapter_round_trips_bit_exactly(backbones, tmp_path_factory, kind, method, seed):
    model = perturb(build(backbones[kind], method, seed=seed), seed=seed + 1)
    path = tmp_path_factory.mktemp("adapter") / "adapter.safetensors"
    minidept.save_adapter(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["adapter.safetensors"]   # no temporary file left
    loaded = minidept.load_adapter(path, backbones[kind])
    assert loaded.config == model.config
    saved, back = model.adapter_state_dict(), loaded.adapter_state_dict()
    assert saved.keys() == back.keys()
    for name in saved:
        assert torch.equal(saved[name], back[name]), name
    assert torch.equal(logits(loaded), logits(model))


def test_adapter_holds_only_the_trainable_tensors_and_the_identity(backbones, tmp_path):
    model = build(backbones["t5"], "ept")
    minidept.save_adapter(model, tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as handle:
        names, metadata = set(handle.keys()), handle.metadata()
    assert names == {"prompt.P", "offset.A", "offset.B", "projection.U", "projection.V", "projection.W_g"}
    assert not any(name.startswith("backbone") for name in names)
    assert metadata["format"] == ADAPTER_FORMAT
    assert metadata["model_type"] == "t5" and metadata["d_model"] == "32"
    assert json.loads(metadata["config"])["method"] == "ept" and json.loads(metadata["config"])["r"] == 2
    assert len(metadata["backbone_config_hash"]) == 16
    assert read_adapter(tmp_path / "a.safetensors")[0] == metadata


def test_load_adapter_into_an_existing_model(backbones, tmp_path):
    source = perturb(build(backbones["gpt2"], "dept"))
    minidept.save_adapter(source, tmp_path / "a.safetensors")
    target = build(backbones["gpt2"], "dept")
    reference = logits(target)  # a forward before loading: nothing of it may stick
    minidept.io.adapters.load_adapter_into(target, tmp_path / "a.safetensors")
    assert torch.equal(logits(target), logits(source))
    assert not torch.equal(logits(target), reference)
    other = build(backbones["gpt2"], "dept", m=5)
    with pytest.raises(CheckpointError, match="minidept.load_adapter"):
        minidept.io.adapters.load_adapter_into(other, tmp_path / "a.safetensors")


@pytest.mark.parametrize("source, target, message", [
    ("t5", "gpt2", "trained on a t5 with d_model=32; this backbone is a gpt2"),
    ("gpt2", "t5", "trained on a gpt2 with d_model=32; this backbone is a t5"),
    ("t5", "t5_wide", "trained on a t5 with d_model=32; this backbone is a t5 with d_model=48"),
])
def test_adapter_on_the_wrong_backbone_fails_clearly(backbones, tmp_path, source, target, message):
    minidept.save_adapter(build(backbones[source], "dept"), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=message):
        minidept.load_adapter(tmp_path / "a.safetensors", backbones[target])


def test_adapter_on_a_differently_configured_backbone_warns(backbones, tmp_path):
    minidept.save_adapter(build(backbones["t5"], "dept"), tmp_path / "a.safetensors")
    with pytest.warns(UserWarning, match="different config"):
        minidept.load_adapter(tmp_path / "a.safetensors", backbones["t5_deeper"])


def test_broken_adapter_files_fail_clearly(backbones, tmp_path):
    model = build(backbones["t5"], "dept")
    with pytest.raises(CheckpointError, match="no adapter at"):
        minidept.load_adapter(tmp_path / "missing.safetensors", backbones["t5"])
    save_tensors({"x": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="not a minidept adapter"):
        minidept.load_adapter(tmp_path / "weights.safetensors", backbones["t5"])
    minidept.save_adapter(model, tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read"):
        minidept.load_adapter(tmp_path / "cut.safetensors", backbones["t5"])
    # right metadata, wrong tensors: refused before a model is built, naming the settings and every tensor
    # (r = 10 here: B is (10, 32)); with as many values as the settings make, copy_into names each misfit
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["offset.B"] = torch.zeros(3, 32)
    del tensors["offset.A"]
    tensors["extra"] = torch.zeros(1)
    save_tensors(tensors, tmp_path / "bad.safetensors", metadata)
    with pytest.raises(CheckpointError, match=r"adapter .*bad\.safetensors: its settings \(dept, m=4, r=10, "
                                              r"max_length=16, d=32\) make 608 trainable values, its tensors "
                                              r"\(extra \(1,\), offset\.B \(3, 32\), prompt\.P \(4, 32\)\) hold 225"):
        minidept.load_adapter(tmp_path / "bad.safetensors", backbones["t5"])
    tensors["extra"] = torch.zeros(608 - 4 * 32 - 3 * 32)   # as many values in all as the settings make
    save_tensors(tensors, tmp_path / "bad.safetensors", metadata)
    with pytest.raises(CheckpointError, match=r"adapter .*bad\.safetensors does not fit the model: "
                                              r"missing \(not in the file\): offset\.A; "
                                              r"unexpected \(not in the model\): extra; "
                                              r"shape mismatch: offset\.B: \(3, 32\) in the file, "
                                              r"\(10, 32\) in the model"):
        minidept.load_adapter(tmp_path / "bad.safetensors", backbones["t5"])


# --------------------------------------------------------------------------- #
# Training states: tensors and moments as safetensors, progress as JSON metadata
# --------------------------------------------------------------------------- #

def test_state_round_trip(backbones, tmp_path):
    model = perturb(build(backbones["t5"], "ept")).train()
    optimizer = torch.optim.AdamW(model.param_groups(0.3, 0.01))
    model(torch.tensor([[5, 6, 1]]), labels=torch.tensor([[7, 1]])).backward()
    optimizer.step()
    progress = {"step": 3, "best": float("nan"), "note": [1, 2]}
    rng = {"cpu": torch.get_rng_state()}
    save_state(tmp_path / "s.safetensors", model.adapter_state_dict(), optimizer, progress, rng)
    assert read_safetensors(tmp_path / "s.safetensors")[0]["format"] == STATE_FORMAT

    other = build(backbones["t5"], "ept", seed=7)
    other_optimizer = torch.optim.AdamW(other.param_groups(0.5, 0.02))
    loaded, loaded_rng = load_state(tmp_path / "s.safetensors", other.adapter_state_dict(), other_optimizer)
    assert loaded["step"] == 3 and loaded["best"] != loaded["best"] and loaded["note"] == [1, 2]   # NaN kept
    assert torch.equal(loaded_rng["cpu"], rng["cpu"])
    for a, b in zip(model.trainable_parameters(), other.trainable_parameters()):
        assert torch.equal(a, b)
    assert len(optimizer.state) == len(other_optimizer.state) == 6
    for a, b in zip(optimizer.state.values(), other_optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    # the hyper-parameters come from this run, only the moments from the file
    assert [g["lr"] for g in other_optimizer.param_groups] == [0.5, 0.02]


def test_state_of_another_run_is_refused(backbones, tmp_path):
    model = build(backbones["t5"], "dept")
    optimizer = torch.optim.AdamW(model.param_groups(0.3, 0.01))
    save_state(tmp_path / "s.safetensors", model.adapter_state_dict(), optimizer, {"step": 0},
               {"cpu": torch.get_rng_state()})
    other = build(backbones["t5"], "dept", m=5)
    with pytest.raises(CheckpointError, match=r"shape mismatch: prompt\.P: \(4, 32\) in the file, \(5, 32\) in the "
                                              r"model(.|\n)*resume with the settings the run was started with"):
        load_state(tmp_path / "s.safetensors", other.adapter_state_dict(), torch.optim.AdamW(other.param_groups(1, 1)))
    minidept.save_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="is not a training state of this run: its format is 'minidept-adapter-2'"):
        load_state(tmp_path / "a.safetensors", model.adapter_state_dict(), optimizer)
