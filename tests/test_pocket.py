"""The pocket models shipped with minidept (`--model pocket-t5`, `--model pocket-gpt2`, docs/pocket.md) and
the command that makes them.

- each shipped folder loads in transformers with our logits and greedy tokens;
- each is small, its recipe is recorded, and every command finds it by name;
- prompt tuning on each, frozen, learns real SST-2 (from the data folder) far above chance
  in a few hundred steps, where a random backbone would not;
- `python -m minidept.pretrain` makes a model the same way on a tiny budget, deterministically.
"""

from __future__ import annotations

import json

import pytest
import torch

from minidept import load_model, load_tokenizer
from minidept.data.load import collate
from minidept.data.tasks import format_example
from minidept.io.backbones import BUILT_IN_MODELS, SHIPPED_MODELS, load_backbone
from minidept.run.train import TrainConfig, train
from minidept.tools import pretrain as P

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FOLDER = SHIPPED_MODELS["pocket-t5"]
SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés from start to "
             "finish, and the script assumes that not only would subtlety be lost on the target audience, but "
             "that it's also too stupid to realize that they've already seen this exact same movie a hundred times"]


def encoded(tokenizer, prefix="sst2 "):
    rows = [{"input_ids": tokenizer.encode(prefix + format_example("sst2", {"sentence": s, "label": 0})[0]).ids,
             "labels": [1]} for s in SENTENCES]
    batch = collate(rows, 0)
    return batch["input_ids"], batch["attention_mask"]


def test_the_shipped_folder_is_small_and_records_its_recipe():
    files = {path.name: path.stat().st_size for path in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.json"} <= set(files)
    assert sum(files.values()) <= 10 * 2**20, files
    recipe = json.loads((FOLDER / "recipe.json").read_text())
    assert recipe["command"].startswith("python -m minidept.pretrain")
    assert "sst2" in recipe["held_in"] and recipe["held_out"]
    assert not set(recipe["held_out"]) & set(recipe["held_in"] + recipe["text_only"])
    assert set(recipe["mixture"]) == {"span_corruption", *recipe["held_in"]}
    assert recipe["dtype"] == "bfloat16" and {"torch", "tokenizers"} <= set(recipe["versions"])
    model = load_model("pocket-t5")
    assert sum(p.numel() for p in model.parameters()) == recipe["parameters"]
    assert model.shared.weight.dtype == torch.float32        # stored in bfloat16, loaded as asked


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_a_non_editable_install_includes_every_file_of_it(name):
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["minidept"]
    for path in SHIPPED_MODELS[name].iterdir():
        relative = path.relative_to(root / "minidept").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), f"{relative} is not package data"


def test_every_command_finds_it_by_name():
    assert "pocket-t5" in BUILT_IN_MODELS
    model, tokenizer = load_backbone("pocket-t5")
    assert model.name_or_path == "pocket-t5" and model.revision is None   # what an adapter records
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.token_to_id("<pad>") == 0 and tokenizer.token_to_id("</s>") == 1
    assert tokenizer.token_to_id("<extra_id_0>") == model.config.vocab_size - 1   # T5's sentinels, at the end
    assert load_tokenizer("pocket-t5").to_str() == tokenizer.to_str()


def test_transformers_loads_it_with_our_logits_and_greedy_tokens():
    transformers = pytest.importorskip("transformers")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(FOLDER, dtype=torch.float32).eval()
    ours = load_model("pocket-t5")
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(FOLDER / "tokenizer.json"))
    tokenizer = load_tokenizer("pocket-t5")
    assert hf_tokenizer(SENTENCES[0])["input_ids"] == tokenizer.encode(SENTENCES[0]).ids
    ids, mask = encoded(tokenizer)
    decoder_ids = torch.tensor([[0, 3, 7, 9], [0, 5, 11, 4]])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = ours(ids, mask, decoder_ids)
    diff = (got - expected).abs().max().item()
    assert diff < 1e-4, f"max abs logit difference {diff:.2e}"
    generated = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=8)
    ours_generated = ours.generate(ids, mask, max_new_tokens=8)
    width = ours_generated.shape[1]
    assert ours_generated.tolist() == generated[:, 1:1 + width].tolist()


# --------------------------------------------------------------------------- #
# The pocket GPT-2: the same recipe in decoder-only form (--family gpt2)
# --------------------------------------------------------------------------- #

GPT2_FOLDER = SHIPPED_MODELS["pocket-gpt2"]


def test_the_shipped_gpt2_is_small_and_records_its_recipe():
    files = {path.name: path.stat().st_size for path in GPT2_FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.json"} <= set(files)
    assert files["model.safetensors"] <= 5_000_000 and sum(files.values()) <= 5 * 2**20, files
    recipe = json.loads((GPT2_FOLDER / "recipe.json").read_text())
    assert recipe["command"].startswith("python -m minidept.pretrain") and "--family gpt2" in recipe["command"]
    assert recipe["settings"]["family"] == "gpt2" and "sentinels" not in recipe["settings"]
    assert "sst2" in recipe["held_in"] and recipe["held_out"]
    assert not set(recipe["held_out"]) & set(recipe["held_in"] + recipe["text_only"])
    assert set(recipe["mixture"]) == {"language_modelling", *recipe["held_in"]}
    assert recipe["dtype"] == "bfloat16" and {"torch", "tokenizers"} <= set(recipe["versions"])
    model = load_model("pocket-gpt2")
    assert model.model_type == "gpt2" and sum(p.numel() for p in model.parameters()) == recipe["parameters"]


def test_every_command_finds_the_gpt2_by_name_with_gpt2s_special_tokens():
    from minidept.data.load import encode_examples

    assert "pocket-gpt2" in BUILT_IN_MODELS
    model, tokenizer = load_backbone("pocket-gpt2")
    assert model.name_or_path == "pocket-gpt2" and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.token_to_id("<|endoftext|>") == model.config.eos_token_id == model.config.bos_token_id == 1
    assert tokenizer.get_vocab_size() == model.config.vocab_size
    assert tokenizer.encode("a witty movie").ids[-1] != 1          # nothing appended, as GPT-2's tokenizer
    # minidept's decoder-only casting: the source, the cue and the target tokenised apart are the joined text
    rows, _ = encode_examples("sst2", [{"sentence": SENTENCES[0], "label": 1}], tokenizer, 64, decoder_only=True,
                              eos_id=1)
    assert rows[0]["input_ids"] == tokenizer.encode(f"sentence: {SENTENCES[0]} Label : 1").ids + [1]
    assert rows[0]["labels"][-2:] == rows[0]["input_ids"][-2:] and set(rows[0]["labels"][:-2]) == {-100}


def test_transformers_loads_the_gpt2_with_our_logits_and_greedy_tokens():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(GPT2_FOLDER, dtype=torch.float32).eval()
    ours = load_model("pocket-gpt2")
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(GPT2_FOLDER / "tokenizer.json"))
    tokenizer = load_tokenizer("pocket-gpt2")
    assert hf_tokenizer(SENTENCES[0])["input_ids"] == tokenizer.encode(SENTENCES[0]).ids
    prompts = [tokenizer.encode(f"sst2 sentence: {s} Label : ").ids for s in SENTENCES]
    batch = collate([{"input_ids": ids, "labels": ids} for ids in prompts], 1)   # right-padded with eos, masked
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    diff = ((got - expected).abs() * mask[..., None]).max().item()   # the pads' logits are not compared
    assert diff < 1e-4, f"max abs logit difference {diff:.2e}"
    for row in prompts:   # one row at a time: transformers' generate wants left padding, ours right
        generated = hf.generate(input_ids=torch.tensor([row]), do_sample=False, num_beams=1, max_new_tokens=8,
                                pad_token_id=1)[0, len(row):]
        ours_generated = ours.generate(torch.tensor([row]), max_new_tokens=8)[0]
        assert ours_generated.tolist() == generated[:len(ours_generated)].tolist()


# --------------------------------------------------------------------------- #
# Prompt tuning learns a real task on it
# --------------------------------------------------------------------------- #

# Small enough for a test (1 thread, about 20 s a method): l = 20, DePT m = 10 (r = 8 at s = 64),
# 200 steps of 16, scored on 200 validation examples of SST-2. The random prompt init
# (--init vocab) starts the prompt far from any task.
LEARN = dict(task="sst2", l=20, max_length=64, batch_size=16, max_steps=200, eval_every=100, init="vocab",
             max_eval_examples=200, threads=1, quiet=True)
LEARNS = 80.0   # accuracy (%) that shows the task was learned: measured 85.0 (PT), 85.5 (DePT); chance 50


def learn(model, method, data_dir, out, **changes) -> tuple[float, float]:
    """(best validation accuracy, loss of the last 10 steps / loss of the first 10) of one short run."""
    settings = {**LEARN, "m": 10 if method == "dept" else None, **changes}
    results = train(TrainConfig(model=str(model), method=method, data_dir=str(data_dir), output_dir=str(out),
                                **settings), log=lambda *_: None)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    return results["validation"]["accuracy"], losses[-1] / losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pt", "dept"])
def test_prompt_tuning_learns_sst2_on_the_frozen_pocket_model(method, data_dir, tmp_path):
    accuracy, loss_ratio = learn("pocket-t5", method, data_dir, tmp_path)
    assert accuracy >= LEARNS, f"{method}: best validation accuracy {accuracy:.1f} < {LEARNS}"
    assert loss_ratio < 0.7, f"{method}: the loss fell only to {loss_ratio:.2f} of its start"


# The same on the pocket GPT-2 in 100 steps (about 15 s a method), and the check that this test can fail: the
# same run on a GPT-2 of the same shape with random weights (GPT-2's initialisation) stays below the threshold.
GPT2_LEARN = dict(max_steps=100, eval_every=100)
GPT2_LEARNS = 75.0   # measured 80.0 (PT), 83.0 (DePT); a random backbone 0.0 (it never answers a label); the
                     # majority class 56.0 of these 200 examples


def random_gpt2(folder):
    """A GPT-2 of the pocket GPT-2's shape with random weights, beside its tokenizer, in `folder`."""
    import shutil

    from minidept.io.checkpoint import save_pretrained
    from minidept.models import GPT2, GPT2Config

    config = GPT2Config.from_hf_config(json.loads((GPT2_FOLDER / "config.json").read_text()))
    torch.manual_seed(0)
    folder.mkdir()
    save_pretrained(GPT2(config), folder)
    shutil.copy(GPT2_FOLDER / "tokenizer.json", folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pt", "dept"])
def test_prompt_tuning_learns_sst2_on_the_frozen_pocket_gpt2(method, data_dir, tmp_path):
    accuracy, loss_ratio = learn("pocket-gpt2", method, data_dir, tmp_path, **GPT2_LEARN)
    assert accuracy >= GPT2_LEARNS, f"{method}: best validation accuracy {accuracy:.1f} < {GPT2_LEARNS}"
    assert loss_ratio < 0.7, f"{method}: the loss fell only to {loss_ratio:.2f} of its start"


@pytest.mark.slow
def test_the_gpt2_learning_test_fails_on_a_random_backbone(data_dir, tmp_path):
    accuracy, _ = learn(random_gpt2(tmp_path / "random"), "pt", data_dir, tmp_path / "run", **GPT2_LEARN)
    assert accuracy < GPT2_LEARNS, f"a random GPT-2 reached {accuracy:.1f}: the threshold shows nothing"


# --------------------------------------------------------------------------- #
# The command that makes it
# --------------------------------------------------------------------------- #

def test_span_corruption_keeps_every_token_once():
    import numpy as np

    tokens = np.arange(10, 74)
    inputs, targets = P.span_corruption(tokens, np.random.default_rng(0), 0.15, 3.0, vocab_size=1000)
    sentinels = [t for t in inputs if t >= 900]
    assert sentinels == [999 - i for i in range(len(sentinels))] == [t for t in targets if t >= 900]
    assert inputs[-1] == targets[-1] == 1
    assert len(targets) - 1 - len(sentinels) == round(64 * 0.15)          # the dropped tokens
    # filling each sentinel of the input with its span gives the text back
    spans, current = {}, None
    for t in targets[:-1]:
        if t >= 900:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    restored = [x for t in inputs[:-1] for x in (spans[t] if t >= 900 else [t])]
    assert restored == tokens.tolist()


def test_mixing_rates_are_proportional_to_size_up_to_the_cap():
    rates = P.mixing_rates({"a": 100, "b": 300, "c": 10_000}, span_share=0.5, cap=1000)
    assert rates == pytest.approx({"span_corruption": 0.5, "a": 0.5 * 100 / 1400, "b": 0.5 * 300 / 1400,
                                   "c": 0.5 * 1000 / 1400})


@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_pretrain_makes_a_folder_deterministically(family, data_dir, tmp_path):
    tiny = dict(data_dir=str(data_dir), held_in="sst2,rte", held_out="mrpc", text_only="", limit=300,
                vocab_size=600, sentinels=20, d_model=32, num_heads=2, d_ff=64, num_layers=1, num_decoder_layers=1,
                steps=6, batch_size=8, warmup_steps=2, eval_every=3, eval_examples=20, quiet=True, family=family)
    recipe = P.pretrain(P.PretrainConfig(output_dir=str(tmp_path / "a"), **tiny), log=lambda *_: None)
    P.pretrain(P.PretrainConfig(output_dir=str(tmp_path / "b"), **tiny), log=lambda *_: None)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    model, tokenizer = load_backbone(str(tmp_path / "a"))
    assert model.model_type == family and model.config.vocab_size == tokenizer.get_vocab_size() == 600
    assert recipe["held_in"] == ["sst2", "rte"] and recipe["held_out"] == ["mrpc"]
    text = {"t5": "span_corruption", "gpt2": "language_modelling"}[family]
    assert sum(recipe["mixture"][name]["rows"] for name in ("sst2", "rte", text)) == 6 * 8
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "validation"] == [3, 6]
    assert "--steps 6" in recipe["command"] and "--output-dir a" in recipe["command"]
    assert ("--family gpt2" in recipe["command"]) == (family == "gpt2")


def test_pretrain_refuses_a_task_both_held_out_and_used(data_dir, tmp_path):
    with pytest.raises(P.UsageError, match="both held out and used"):
        P.pretrain(P.PretrainConfig(data_dir=str(data_dir), output_dir=str(tmp_path), held_in="sst2,mrpc",
                                    held_out="mrpc"))
