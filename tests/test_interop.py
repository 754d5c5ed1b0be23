"""Adapters that travel: PEFT prompt tuning both ways, the base model in the adapter, Hub pull and push
(the Hub stubbed: no network), run folders that work from any directory."""

from __future__ import annotations

import fnmatch
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import minidept
import minidept.io.checkpoint
import minidept.io.adapters
from minidept import PromptConfig, PromptedModel
from minidept.run import evaluate as E
from minidept.tools import export, push
from minidept.run import predict as P
from minidept.run import train as T
from minidept.io.adapters import PEFT_CONFIG, read_adapter
from minidept.io.checkpoint import CheckpointError
from conftest import make_hf_gpt2, make_hf_t5
from mounts import fill

IDS = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
DECODER_IDS = torch.tensor([[0, 3], [0, 4]])
pytestmark = pytest.mark.usefixtures("one_thread")


def hf_backbone(kind: str, folder: Path):
    """(transformers model, our model) on the same tiny random weights."""
    hf = make_hf_t5(folder) if kind == "t5" else make_hf_gpt2(folder, n_positions=300)   # room for max_length 256
    return hf, minidept.load_model(folder)


def ours_logits(model, kind):
    with torch.no_grad():
        return model(IDS, MASK, decoder_input_ids=DECODER_IDS) if kind == "t5" else model(IDS, MASK)


def peft_logits(peft_model, kind, n):
    with torch.no_grad():
        if kind == "t5":
            return peft_model(input_ids=IDS, attention_mask=MASK, decoder_input_ids=DECODER_IDS).logits
        return peft_model(input_ids=IDS, attention_mask=MASK).logits[:, n:]   # drop the prompt's positions


# --------------------------------------------------------------------------- #
# PEFT prompt tuning, both ways
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_pt_adapter_exported_to_peft_gives_the_same_logits_in_peft(kind, tmp_path, capsys):
    from peft import PeftModel

    hf, backbone = hf_backbone(kind, tmp_path / kind)
    ours = PromptedModel(backbone, PromptConfig("pt", l=7)).eval()
    with torch.no_grad():
        ours.prompt.P.normal_()
    minidept.save_adapter(ours, tmp_path / "a.safetensors")
    assert export.main([str(tmp_path / "a.safetensors"), "--format", "peft", str(tmp_path / "peft")]) == 0
    assert "7 virtual tokens of width 32" in capsys.readouterr().out
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG).read_text())
    task_type = "SEQ_2_SEQ_LM" if kind == "t5" else "CAUSAL_LM"
    assert (config["peft_type"], config["task_type"]) == ("PROMPT_TUNING", task_type)
    assert (config["num_virtual_tokens"], config["token_dim"], config["num_transformer_submodules"]) == (7, 32, 1)
    assert config["base_model_name_or_path"] == str((tmp_path / kind).resolve())
    reference = peft_logits(PeftModel.from_pretrained(hf, tmp_path / "peft").eval(), kind, 7)
    diff = (ours_logits(ours, kind) - reference).abs().max().item()
    print(f"minidept PT vs PeftModel.from_pretrained ({kind}): max abs diff {diff:.3g}")
    assert diff < 1e-5
    # and back: the PEFT folder is an adapter for minidept, bit for bit
    back = minidept.load_adapter(tmp_path / "peft", backbone)
    assert torch.equal(back.prompt.P, ours.prompt.P) and back.config == ours.config


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_a_folder_saved_by_peft_loads_into_minidept(kind, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    hf, backbone = hf_backbone(kind, tmp_path / kind)
    task = TaskType.SEQ_2_SEQ_LM if kind == "t5" else TaskType.CAUSAL_LM
    peft_model = get_peft_model(hf, PromptTuningConfig(task_type=task, num_virtual_tokens=5,
                                                       num_transformer_submodules=1)).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_()
    peft_model.save_pretrained(tmp_path / "peft")
    ours = minidept.load_adapter(tmp_path / "peft", backbone).eval()
    assert ours.config.method == "pt" and ours.config.l == 5
    diff = (ours_logits(ours, kind) - peft_logits(peft_model, kind, 5)).abs().max().item()
    assert diff < 1e-5, f"max abs diff {diff}"


def test_only_what_fits_pt_crosses_over(demo_runs, tmp_path, capsys):
    # DePT has no PEFT type: refused in one line naming the document, nothing written
    assert export.main([str(demo_runs["dept"]), "--format", "peft", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "PEFT has no adapter type for dept" in err and "docs/adapter-format.md" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and (Path(__file__).parents[1] / "docs" / "adapter-format.md").is_file()
    # PEFT folders of another kind, or with a decoder prompt too, are refused naming what was found
    assert export.main([str(demo_runs["pt"]), str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG).read_text())
    for change, found in (({"num_transformer_submodules": 2}, "num_transformer_submodules 2"),
                          ({"peft_type": "LORA"}, "peft_type 'LORA'")):
        (tmp_path / "peft" / PEFT_CONFIG).write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=found):
            read_adapter(tmp_path / "peft")


def test_a_peft_folder_with_text_sizes_or_integer_embeddings_is_refused_saying_so(demo_runs, tmp_path, capsys):
    """"num_virtual_tokens": "20" printed as "must hold shape (20, 64); found (20, 64)"; integer or bool
    embeddings were cast to float silently."""
    from safetensors.torch import load_file, save_file
    assert export.main([str(demo_runs["pt"]), str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG).read_text())
    for change, found in (({"num_virtual_tokens": str(config["num_virtual_tokens"])},
                           f'num_virtual_tokens must be a whole number above 0, found "{config["num_virtual_tokens"]}"'),
                          ({"token_dim": True}, "token_dim must be a whole number above 0, found true"),
                          ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a whole number above 0, found 0")):
        (tmp_path / "peft" / PEFT_CONFIG).write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=found + "; re-export the adapter"):
            read_adapter(tmp_path / "peft")
    (tmp_path / "peft" / PEFT_CONFIG).write_text(json.dumps(config))
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    P = load_file(str(weights))["prompt_embeddings"]
    for dtype in (torch.int64, torch.bool):
        save_file({"prompt_embeddings": P.to(dtype)}, str(weights))
        with pytest.raises(CheckpointError, match=f"prompt_embeddings are {dtype}, not floating point"):
            read_adapter(tmp_path / "peft")


def test_a_peft_folder_is_accepted_wherever_an_adapter_is(demo_runs, tmp_path, capsys):
    run = demo_runs["pt"]
    assert export.main([str(run), str(tmp_path / "peft")]) == 0
    capsys.readouterr()
    # evaluate and predict: the backbone comes from the PEFT folder's base_model_name_or_path ("demo")
    assert E.main(["--adapter", str(run), "--max-examples", "20"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert E.main(["--adapter", str(tmp_path / "peft"), "--task", "demo", "--max-examples", "20"]) == 0
    assert json.loads(capsys.readouterr().out) == from_run
    assert P.main(["--adapter", str(run), "--raw", "it was fun"]) == 0
    label = capsys.readouterr().out
    assert P.main(["--adapter", str(tmp_path / "peft"), "--task", "demo", "--raw", "it was fun"]) == 0
    assert capsys.readouterr().out == label
    # --init-from: the prompt is copied, the shape taken from the PEFT folder
    config, model, *_ = T.setup(T.TrainConfig(task="demo", model="demo", init_from=str(tmp_path / "peft"),
                                              output_dir=str(tmp_path / "t")), log=lambda *_: None)
    assert (config.method, config.l) == ("pt", 20)
    assert torch.equal(model.prompt.P, read_adapter(run)[1]["prompt.P"])


def other_pt_adapter(run: Path, path: Path) -> Path:
    """A second PT adapter on the same backbone: the first 5 of the run's 20 prompt vectors."""
    metadata, tensors = read_adapter(run)
    config = {**json.loads(metadata["config"]), "l": 5, "m": 5}
    minidept.io.checkpoint.save_tensors({"prompt.P": tensors["prompt.P"][:5]}, path,
                                     {**metadata, "config": json.dumps(config)})
    return path


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_export_writes_its_folder_whole_or_not_at_all(demo_runs, tmp_path, monkeypatch, capsys):
    out, other = tmp_path / "peft", other_pt_adapter(demo_runs["pt"], tmp_path / "other.safetensors")
    assert export.main([str(demo_runs["pt"]), str(out)]) == 0
    first = snapshot(out)
    # a kill after the config was written: OUT still holds the first export, config and weights together
    real = minidept.io.adapters.save_tensors

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(minidept.io.adapters, "save_tensors", killed)
    assert export.main([str(other), str(out)]) == 130               # Ctrl-C: one line, exit code 130
    assert snapshot(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["other.safetensors", "peft"]
    monkeypatch.setattr(minidept.io.adapters, "save_tensors", real)
    # exporting over an earlier export replaces it whole
    assert export.main([str(other), str(out)]) == 0
    assert read_adapter(out)[1]["prompt.P"].shape[0] == 5 and json.loads(
        (out / PEFT_CONFIG).read_text())["num_virtual_tokens"] == 5
    capsys.readouterr()
    # a run folder (the run's own adapter would be shadowed) or a folder holding other files: refused
    run_files = snapshot(demo_runs["pt"])
    for target in (demo_runs["pt"], tmp_path):
        assert export.main([str(demo_runs["pt"]), str(target)]) == 2
        err = capsys.readouterr().err
        assert "holds other files than an export" in err and err.count("\n") == 1, err
    assert snapshot(demo_runs["pt"]) == run_files


def test_export_to_a_full_disk_or_a_read_only_folder_is_one_line_and_keeps_what_was_there(
        demo_runs, full_disk, read_only, capsys):
    (full_disk / "filler").unlink()
    assert export.main([str(demo_runs["pt"]), str(full_disk / "peft")]) == 0
    fill(full_disk)   # the disk full again
    before = snapshot(full_disk)
    capsys.readouterr()
    for out in (full_disk / "peft", read_only / "peft"):
        assert export.main([str(demo_runs["pt"]), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m minidept.export: error: ") and err.count("\n") == 1, err
    assert snapshot(full_disk) == before and list(read_only.iterdir()) == []


def test_a_pt_run_on_a_short_context_reads_back_from_its_peft_export(tmp_path, capsys):
    """demo-gpt2's context holds the prompt and max_length 64, not PEFT's default-free 256."""
    run = tmp_path / "run"
    assert T.main(["--task", "demo", "--model", "demo-gpt2", "--method", "pt", "--max-steps", "2", "--eval-every",
                   "2", "--max-eval-examples", "4", "--output-dir", str(run), "--quiet"]) == 0
    max_length = json.loads(read_adapter(run)[0]["config"])["max_length"]
    assert export.main([str(run), str(tmp_path / "peft")]) == 0
    assert json.loads(read_adapter(tmp_path / "peft")[0]["config"])["max_length"] == max_length < 256
    capsys.readouterr()
    assert P.main(["--adapter", str(run), "--raw", "it was fun"]) == 0
    label = capsys.readouterr().out
    assert P.main(["--adapter", str(tmp_path / "peft"), "--task", "demo", "--model", "demo-gpt2", "--raw",
                   "it was fun"]) == 0
    assert capsys.readouterr().out == label
    config, model, *_ = T.setup(T.TrainConfig(task="demo", model="demo-gpt2", init_from=str(tmp_path / "peft"),
                                              output_dir=str(tmp_path / "t")), log=lambda *_: None)
    assert config.max_length == max_length


# --------------------------------------------------------------------------- #
# The base model in the adapter
# --------------------------------------------------------------------------- #

def test_adapter_records_its_base_model_and_evaluate_uses_it(demo_runs, tmp_path, capsys, monkeypatch):
    metadata = read_adapter(demo_runs["dept"])[0]
    assert metadata["base_model"] == "demo" and "base_model_revision" not in metadata
    # the adapter file alone, no run config beside it: the backbone still comes from the adapter
    shutil.copy(demo_runs["dept"] / T.ADAPTER_FILE, tmp_path / "alone.safetensors")
    assert E.main(["--adapter", str(tmp_path / "alone.safetensors"), "--task", "demo", "--max-examples", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 20
    # another --model is used, with a warning naming both
    with pytest.warns(UserWarning, match="trained on demo; this backbone is demo-t5"):
        assert E.main(["--adapter", str(demo_runs["dept"]), "--model", "demo-t5", "--max-examples", "4"]) == 0


def test_base_model_of_a_folder_and_of_a_hub_download(tmp_path):
    make_hf_t5(tmp_path / "t5")
    backbone = minidept.load_model(tmp_path / "t5")
    assert (backbone.name_or_path, backbone.revision) == (str((tmp_path / "t5").resolve()), None)
    # huggingface_hub's cache layout: models--owner--name/snapshots/COMMIT
    snapshot = tmp_path / "hub" / "models--someone--tiny-t5" / "snapshots" / "0123abc"
    shutil.copytree(tmp_path / "t5", snapshot)
    model = PromptedModel(minidept.load_model(snapshot), PromptConfig("pt", l=3))
    minidept.save_adapter(model, tmp_path / "a.safetensors")
    metadata = read_adapter(tmp_path / "a.safetensors")[0]
    assert (metadata["base_model"], metadata["base_model_revision"]) == ("someone/tiny-t5", "0123abc")
    with pytest.warns(UserWarning, match="trained on someone/tiny-t5 at revision 0123abc; this backbone is /"):
        minidept.load_adapter(tmp_path / "a.safetensors", backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the same backbone: no warning
        minidept.load_adapter(tmp_path / "a.safetensors", minidept.load_model(snapshot))


# --------------------------------------------------------------------------- #
# The Hub, stubbed: push uploads a folder, --adapter / --init-from owner/name download it
# --------------------------------------------------------------------------- #

@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub's upload and download replaced by folders on disk; returns {repo_id: folder}."""
    import huggingface_hub

    remote, cache = {}, tmp_path / "hub-cache"

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            remote.setdefault(repo_id, tmp_path / "hub-remote" / repo_id.replace("/", "--")).mkdir(parents=True,
                                                                                                  exist_ok=True)

        def upload_folder(self, folder_path, repo_id, commit_message):
            shutil.copytree(folder_path, remote[repo_id], dirs_exist_ok=True)

    def snapshot_download(repo_id, allow_patterns=None):
        if repo_id not in remote:
            raise FileNotFoundError(f"404 Client Error: repository {repo_id} not found")
        target = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "feedc0de"
        target.mkdir(parents=True, exist_ok=True)
        for file in remote[repo_id].iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                shutil.copy(file, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return remote


def test_push_uploads_adapter_config_results_and_a_model_card(demo_runs, fake_hub, capsys):
    run = demo_runs["dept"]
    assert push.main([str(run), "someone/demo-dept"]) == 0
    assert "use it with --adapter someone/demo-dept" in capsys.readouterr().out
    uploaded = fake_hub["someone/demo-dept"]
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "adapter.safetensors", "config.json",
                                                          "results.json"]
    assert (uploaded / "adapter.safetensors").read_bytes() == (run / "adapter.safetensors").read_bytes()
    shared = json.loads((uploaded / "config.json").read_text())["run"]
    assert "output_dir" not in shared and shared["task"] == "demo"      # no paths of this machine
    card = (uploaded / "README.md").read_text()
    assert str(run) not in card and "--output-dir" not in card                # nor in the model card
    results = json.loads((run / "results.json").read_text())
    for fact in ("# DePT adapter for demo on demo", "m=4, r=8", "1,280 (PT's budget l*d = 1,280)",
                 "| base model | demo |", "| task | demo |",
                 f"accuracy {results['validation']['accuracy']:.2f} on 20 examples",
                 f"accuracy {results['test']['accuracy']:.2f} on 20 examples",
                 "python -m minidept.evaluate --adapter someone/demo-dept",
                 "python -m minidept.train --task demo --model demo --l 20 --m 4 --r 8", "--max-steps 6"):
        assert fact in card, fact


def test_hub_adapters_work_wherever_an_adapter_is(demo_runs, fake_hub, tmp_path, capsys):
    run = demo_runs["dept"]
    assert push.main([str(run), "someone/demo-dept"]) == 0
    capsys.readouterr()
    assert E.main(["--adapter", str(run), "--max-examples", "20"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert E.main(["--adapter", "someone/demo-dept", "--max-examples", "20"]) == 0   # task and model from the Hub
    assert json.loads(capsys.readouterr().out) == local
    config, model, *_ = T.setup(T.TrainConfig(task="demo", model="demo", init_from="someone/demo-dept",
                                              output_dir=str(tmp_path / "t")), log=lambda *_: None)
    assert (config.method, config.m, config.r) == ("dept", 4, 8)
    assert all(torch.equal(p, read_adapter(run)[1][name]) for name, p in model.adapter_state_dict().items())
    # a repository the Hub does not have: one line, naming it and the local reading of the name
    assert P.main(["--adapter", "someone/missing", "text"]) == 2
    err = capsys.readouterr().err
    assert "could not get 'someone/missing' from the Hugging Face Hub" in err and "local path" in err


def test_push_of_a_run_on_a_local_model_folder_uploads_no_path_of_this_machine(tmp_path, fake_hub, capsys):
    make_hf_t5(tmp_path / "models" / "my-t5", vocab_size=300)
    shutil.copytree(tmp_path / "models" / "my-t5", tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text(minidept.io.backbones.byte_tokenizer().to_str())
    run = tmp_path / "run"
    assert T.main(["--task", "demo", "--model", str(tmp_path / "models" / "my-t5"), "--tokenizer", str(tmp_path / "tok"),
                   "--method", "pt", "--l", "4", "--max-steps", "2", "--eval-every", "2", "--max-eval-examples", "4",
                   "--output-dir", str(run), "--quiet"]) == 0
    assert str(tmp_path) in read_adapter(run)[0]["base_model"]   # the adapter on this machine names its folder
    assert push.main([str(run), "someone/local-pt"]) == 0
    uploaded = snapshot(fake_hub["someone/local-pt"])
    for name, data in uploaded.items():
        assert str(tmp_path).encode() not in data, name
    assert "| base model | my-t5 (a local folder" in uploaded["README.md"].decode()
    metadata, tensors = minidept.io.checkpoint.read_safetensors(fake_hub["someone/local-pt"] / T.ADAPTER_FILE)
    assert "base_model" not in metadata and torch.equal(tensors["prompt.P"], read_adapter(run)[1]["prompt.P"])


@pytest.mark.parametrize("error, fix", [
    ("offline", "HF_HUB_OFFLINE is set: unset it to upload"),
    ("network", "the Hub cannot be reached: check the network connection"),
    ("login", "log in with `hf auth login` or set HF_TOKEN")])
def test_push_says_whether_the_network_or_the_login_failed(error, fix, demo_runs, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    class Api:
        def create_repo(self, *args, **kwargs):
            if error == "offline":
                raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode")
            if error == "network":
                raise ConnectionError("[Errno -2] Name or service not known")
            raise HfHubHTTPError("401 Client Error: Unauthorized", response=type("R", (), {"status_code": 401,
                                                                                        "headers": {}})())
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    assert push.main([str(demo_runs["pt"]), "someone/x"]) == 2
    err = capsys.readouterr().err
    assert fix in err and err.count("\n") == 1, err
    assert error == "login" or "log in" not in err


def test_push_refuses_what_is_not_a_run(tmp_path, fake_hub, capsys):
    assert push.main([str(tmp_path), "someone/x"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert push.main([str(tmp_path), "not a repo/x/y"]) == 2
    assert "give it as owner/name" in capsys.readouterr().err and not fake_hub
    assert push.main([str(tmp_path)]) == 2
    assert "the following arguments are required: owner/name" in capsys.readouterr().err


@pytest.mark.parametrize("file, content, message", [
    ("config.json", {"run": {"task": "demo"}}, "does not name the run's method"),
    ("config.json", {"run": {"task": "demo", "method": "dept"}, "model_type": ["t5"]}, "model_type must be text"),
    ("config.json", "[" * 100_000, "cannot be read as a run's config.json (RecursionError"),
    ("results.json", {"validation": ["accuracy", 90]}, '"validation" must be an object of metric -> number'),
    ("results.json", {"test": {"accuracy": "90"}}, '"test" must be an object of metric -> number'),
    ("results.json", {"examples": [20]}, '"examples" must be an object of split -> count'),
    ("results.json", {"best_step": "6"}, '"best_step" must be a step number, found text'),
    ("results.json", "[" * 100_000, "cannot be read as a run's results.json (RecursionError"),
], ids=["no method", "model_type a list", "config too deep", "validation a list", "score as text", "examples a list",
        "best_step as text", "results too deep"])
def test_push_refuses_a_malformed_run_in_one_line(demo_runs, tmp_path, fake_hub, capsys, file, content, message):
    run = tmp_path / "run"
    shutil.copytree(demo_runs["dept"], run)
    (run / file).write_text(content if isinstance(content, str) else json.dumps(content))
    assert push.main([str(run), "someone/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(run / file) in err, err
    assert not fake_hub                                                     # nothing uploaded


# --------------------------------------------------------------------------- #
# Run folders hold absolute paths: evaluate works from any directory
# --------------------------------------------------------------------------- #

def test_run_folder_stores_absolute_paths_and_works_from_elsewhere(tmp_path, monkeypatch, capsys):
    make_hf_t5(tmp_path / "work" / "t5", vocab_size=300)
    shutil.copytree(tmp_path / "work" / "t5", tmp_path / "work" / "tok")
    (tmp_path / "work" / "tok" / "tokenizer.json").write_text(minidept.io.backbones.byte_tokenizer().to_str())
    monkeypatch.chdir(tmp_path / "work")
    assert T.main(["--task", "demo", "--model", "t5", "--tokenizer", "./tok", "--method", "pt", "--l", "4",
                   "--max-steps", "2", "--eval-every", "2", "--max-eval-examples", "4", "--output-dir", "run",
                   "--quiet"]) == 0
    saved = json.loads((tmp_path / "work" / "run" / "config.json").read_text())["run"]
    assert saved["model"] == str((tmp_path / "work" / "t5").resolve())
    assert saved["tokenizer"] == str((tmp_path / "work" / "tok").resolve())
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert E.main(["--adapter", str(tmp_path / "work" / "run"), "--max-examples", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 4
    # a data folder given relative is stored absolute too
    config, *_ = T.setup(T.TrainConfig(task="demo", model="demo", data_dir=".", output_dir="x"), log=lambda *_: None)
    assert config.data_dir == str(tmp_path.resolve())
