"""The training loop end to end on real SST-2 text, real tokenizers and tiny random backbones.

Every backbone folder is written by the test into its tmp_path (our save_pretrained
of a tiny config with the real vocabulary size, plus the real tokenizer files).
Runs are few-shot (`--k-shot`) and short so the file stays well under a minute.
A run is started the way a user starts one: `T.main(argv)` on the command line,
`T.train(TrainConfig(...))` from Python (`config_of(argv)` is the same object).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
import os
import shutil
import signal
import threading

import pytest
import torch
import minidept.io.adapters
from hypothesis import given, settings
from hypothesis import strategies as st

from safetensors import safe_open
from safetensors.torch import load_file

from minidept import load_model, load_tokenizer
from minidept.run import train as T
from minidept.io.adapters import read_adapter
from minidept.io.checkpoint import read_safetensors, save_pretrained
from minidept.run.cli import parse
from minidept.data.load import batches, encode_examples, k_shot, load_splits
from test_data import train_batch
from minidept.data.load import collate
from minidept.run.evaluate import evaluate, load_for_inference, predict
from minidept.models.gpt2 import GPT2, GPT2Config
from minidept.models.llama import Llama, LlamaConfig
from minidept.methods import DEFAULT_INIT_TEXT, METHODS, PromptConfig, budget
from minidept.io.backbones import load_backbone
from minidept.prompted import PromptedModel
from minidept.models.t5 import T5, T5Config
from minidept.data.tasks import answer_tokens


@torch.no_grad()
def batch_loss(model, rows) -> float:
    """Mean loss on encoded rows in eval mode (no dropout): a fixed yardstick."""
    was_training = model.training
    model.eval()
    batch = collate(rows, model.pad_id)
    loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    model.train(was_training)
    return loss.item()


def write_tiny_t5(folder, data_dir, dropout=0.1):
    """A tiny random T5 with T5's real vocabulary (32,128) and the real tokenizer.json."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(T5(T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                    dropout_rate=dropout)), folder)
    shutil.copy(data_dir / "t5-tokenizer" / "tokenizer.json", folder)
    return folder


def write_tiny_gpt2(folder, data_dir):
    """A tiny random GPT-2 with GPT-2's real vocabulary (50,257) and the real BPE files."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(GPT2(GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4)), folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(data_dir / "gpt2-tokenizer" / name, folder)
    return folder


def write_tiny_llama(folder, data_dir):
    """A tiny random Llama with Llama 2's vocabulary (32,000), context (4,096) and tokenizer.json.
    Its head is drawn from N(0, 0.3), not 0.02, so that a prompt can move the logits at width 32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Llama(LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                  pad_token_id=0))
        torch.nn.init.normal_(model.lm_head.weight, std=0.3)
        save_pretrained(model, folder)
    shutil.copy(data_dir / "llama2-tokenizer" / "tokenizer.json", folder)
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def backbones(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {"t5": write_tiny_t5(root / "t5", data_dir), "gpt2": write_tiny_gpt2(root / "gpt2", data_dir)}


def options(folder, data_dir, out, method="dept", steps=30, *extra):
    argv = ["--task", "sst2", "--model", str(folder), "--data-dir", str(data_dir), "--method", method,
            "--l", "20", "--k-shot", "32", "--batch-size", "8", "--max-length", "64", "--max-steps", str(steps),
            "--warmup-steps", "3", "--eval-every", "15", "--log-every", "1", "--max-eval-examples", "24",
            "--eval-batch-size", "16", "--lr-prompt", "0.3", "--lr-lowrank", "0.01",
            "--output-dir", str(out), "--quiet", *extra]
    if method != "pt":
        argv += ["--m", "4"]
    return argv


def config_of(argv) -> T.TrainConfig:
    """The TrainConfig that `python -m minidept.train ARGV` builds."""
    return parse(T.TrainConfig, argv, "python -m minidept.train", "")


def quiet(*_):
    pass


def train_and_keep_the_model(monkeypatch, config):
    """T.train(config), keeping what its setup built: (results, model, tokenizer, task, data, loss before)."""
    real, kept = T.setup, {}

    def setup(config, log=print):
        built = real(config, log)
        _, model, tokenizer, task, data, _ = built
        kept.update(model=model, rest=(tokenizer, task, data), before=batch_loss(model, data["train"][:8]))
        return built

    monkeypatch.setattr(T, "setup", setup)
    results = T.train(config, log=quiet)
    monkeypatch.setattr(T, "setup", real)
    return (results, kept["model"], *kept["rest"], kept["before"])


def same_file_content(a, b) -> bool:
    """Bitwise-equal tensors and equal metadata (safetensors orders its header keys arbitrarily)."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return (fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))


def training_losses(out):
    return [record["loss"] for record in map(json.loads, (out / T.LOG_FILE).read_text().splitlines())
            if "loss" in record]


# --------------------------------------------------------------------------- #
# End to end, every backbone x method
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("backbone", ["t5", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_end_to_end(backbone, method, backbones, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = config_of(options(backbones[backbone], data_dir, out, method))
    results, model, tokenizer, task, data, before = train_and_keep_the_model(monkeypatch, config)
    fixed = data["train"][:8]
    assert isinstance(model, PromptedModel) and model.backbone.is_encoder_decoder == (backbone == "t5")

    after = batch_loss(model, fixed)   # the model after training holds the best adapter
    assert results["status"] == "done" and results["steps"] == 30
    assert after < before, f"{backbone}/{method}: loss on a fixed batch {before:.4f} -> {after:.4f}"
    assert set(results["test"]) == {"accuracy"} and 0 <= results["test"]["accuracy"] <= 100
    assert "accuracy" in results["validation"] and results["best_step"] in (15, 30)
    saved = json.loads((out / T.RESULTS_FILE).read_text())
    assert saved["test"] == results["test"]
    records = [json.loads(line) for line in (out / T.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))
    assert [r["step"] for r in records if r.get("split") == "validation"] == [15, 30]
    assert all({"lr_prompt", "lr_lowrank", "elapsed", "grad_norm"} <= set(r) for r in records if "loss" in r)

    # The saved (best) adapter, on a freshly loaded backbone, predicts exactly as the trained model.
    reloaded = minidept.load_adapter(out / T.ADAPTER_FILE, load_model(backbones[backbone]))
    rows = data["validation"]
    assert predict(reloaded, rows, tokenizer) == predict(model, rows, tokenizer)


def resolved_defaults(monkeypatch, tmp_path, argv):
    """The settings `setup` resolves for argv, with the demo T5 and the demo's examples standing in for
    t5-base and the task's files (nothing downloaded; the defaults do not depend on them)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(T, "load_backbone", lambda *args, **kwargs: load_backbone("demo"))
    monkeypatch.setattr(T, "load_splits", lambda task, data_dir=None: T.get_task("demo").make_splits())
    return T.setup(config_of(argv), log=quiet)[0]


def test_config_and_defaults(backbones, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = options(backbones["t5"], data_dir, out, "dept", 4)
    assert T.main(argv) == 0
    config = json.loads((out / T.CONFIG_FILE).read_text())
    run = config["run"]
    assert set(config) == {"run", "model_type", "d_model", "trainable_parameters", "budget_l_times_d",
                           "prompt_config", "examples", "truncated", "device", "world_size", "torch"}
    # every setting but how the run was launched
    assert set(run) == {f.name for f in dataclasses.fields(T.TrainConfig)} - set(T.NOT_SAVED)
    assert (config["model_type"], config["d_model"], config["device"], config["world_size"]) == ("t5", 32, "cpu", 1)
    assert (run["dtype"], run["grad_accum"], run["activation_checkpointing"]) == ("float32", 1, False)
    assert config["prompt_config"]["method"] == "dept" and config["prompt_config"]["r"] == 5
    # r from the budget: floor((l - m) * d / (s + d)) = floor(16 * 32 / 96) = 5
    assert (run["l"], run["m"], run["r"], run["max_length"]) == (20, 4, 5, 64)
    assert config["trainable_parameters"] == 4 * 32 + (64 + 32) * 5 <= config["budget_l_times_d"] == 640
    assert config["examples"] == {"train": 32, "validation": 24, "test": 24}
    # The official init by default: "Classify this text is postive or not:" as 11 T5 ids, </s> (1) included.
    assert (run["init"], run["init_text"]) == ("text", "Classify this text is postive or not:")
    assert (config["prompt_config"]["init"], config["prompt_config"]["init_text_ids"]) == (
        "text", [4501, 4921, 48, 1499, 19, 442, 757, 42, 59, 10, 1])
    assert set(config["truncated"]) == {"train", "validation", "test"}
    # Unset options come from the task's published settings (docs/methods.md section 5).
    defaults = resolved_defaults(monkeypatch, tmp_path, ["--task", "cola"])
    assert (defaults.m, defaults.lr_prompt, defaults.lr_lowrank, defaults.max_steps) == (80, 0.3, 5e-4, 40_000)
    assert (defaults.model, defaults.method, defaults.batch_size, defaults.seed) == ("t5-base", "dept", 32, 42)
    assert (defaults.warmup_steps, defaults.eval_every, defaults.save_every) == (500, 1000, 1000)
    assert (defaults.l, defaults.max_length, defaults.init, defaults.log_every, defaults.eval_batch_size,
            defaults.group_by_length, defaults.output_dir) == (100, 256, "text", 10, 64, False,
                                                              "runs/cola-dept-t5-base-seed42")
    assert defaults.init_text == "Classify this text is postive or not:"
    assert resolved_defaults(monkeypatch, tmp_path, ["--task", "cola", "--init", "vocab"]).init_text is None
    short = resolved_defaults(monkeypatch, tmp_path, ["--task", "cola", "--max-steps", "200"])
    assert short.warmup_steps == 20


def test_the_published_llama_2_command_resolves_with_its_rank_above_the_budget(data_dir, tmp_path, monkeypatch,
                                                                                capsys):
    """`--model meta-llama/Llama-2-7b-hf --method dept --m 60 --r 40` (paper, Appendix B): the Hub download is
    stubbed by a tiny Llama folder with Llama 2's tokenizer; an explicit r above the budget wins, with a note."""
    import huggingface_hub

    hub = write_tiny_llama(tmp_path / "hub", data_dir)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **_: asked.append(name) or str(hub))
    out = tmp_path / "run"
    argv = ["--task", "sst2", "--model", "meta-llama/Llama-2-7b-hf", "--method", "dept", "--m", "60", "--r", "40",
            "--data-dir", str(data_dir), "--k-shot", "4", "--batch-size", "4", "--max-steps", "1",
            "--max-eval-examples", "4", "--output-dir", str(out), "--quiet"]
    with pytest.warns(UserWarning, match="more than PT's l\\*d"):
        assert T.main(argv) == 0
    assert asked == ["meta-llama/Llama-2-7b-hf"]
    config = json.loads((out / T.CONFIG_FILE).read_text())
    assert (config["model_type"], config["run"]["m"], config["run"]["r"], config["run"]["max_length"]) == \
        ("llama", 60, 40, 256)
    assert config["trainable_parameters"] == 60 * 32 + (256 + 32) * 40 > config["budget_l_times_d"] == 100 * 32
    assert "note: 13,440 trainable parameters, above PT's l*d = 3,200" in capsys.readouterr().out
    # at Llama 2 7B's width: the budget rule gives r = 37; r = 40 costs 419,840 against l*d = 409,600
    assert budget("dept", 100, 60, 256, 4096) == 37
    assert PromptConfig("dept", m=60, r=40).count(4096) == 419_840 > 100 * 4096


@pytest.mark.parametrize("backbone, eos", [("t5", 1), ("gpt2", 50256)])
def test_the_text_init_takes_the_texts_ids_and_end_of_sequence(backbone, eos, backbones, data_dir, tmp_path):
    """As the official code: the text tokenised with end-of-sequence (T5's tokenizer adds </s>; GPT-2's adds
    nothing, so minidept appends <|endoftext|>), cycled to the prompt's length."""
    argv = options(backbones[backbone], data_dir, tmp_path / "run", "pt", 1, "--max-eval-examples", "2")
    _, model, tokenizer, *_ = T.setup(config_of(argv), log=quiet)
    ids = tokenizer.encode(DEFAULT_INIT_TEXT, add_special_tokens=False).ids + [eos]
    assert len(ids) == 11 and model.config.init_text_ids == tuple(ids)
    cycled = torch.tensor([ids[i % 11] for i in range(20)])   # l = 20 rows: the 11 ids, then 9 of them again
    assert torch.equal(model.prompt.P, model.backbone.get_input_embeddings().weight[cycled])


def test_k_shot_takes_k_examples_in_all(backbones, data_dir, tmp_path):
    """--k-shot 16 --task cb: 16 training examples, five of each of the 3 classes and one more."""
    argv = ["--task", "cb", "--model", str(backbones["t5"]), "--data-dir", str(data_dir), "--k-shot", "16",
            "--l", "20", "--m", "4", "--max-length", "64", "--max-eval-examples", "2", "--output-dir",
            str(tmp_path / "run")]
    _, _, _, _, data, facts = T.setup(config_of(argv), log=quiet)
    assert facts["examples"]["train"] == 16
    assert sorted(Counter(row["target"] for row in data["train"]).values()) == [5, 5, 6]


# --------------------------------------------------------------------------- #
# Bigger backbones: bfloat16, gradient accumulation, activation checkpointing
# --------------------------------------------------------------------------- #

def state_tensors(out):
    return load_file(str(out / T.STATE_FILE))


def max_param_diff(a, b):
    sa, sb = state_tensors(a), state_tensors(b)
    return max((sa[k] - sb[k]).abs().max().item() for k in sa if k.startswith("param."))


@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_grad_accum_equals_one_batch(backbone, data_dir, tmp_path):
    """--batch-size 8 --grad-accum 2 (micro-batches of 4 rows; with T5 their labelled tokens differ, SST-2's
    targets being 2 or 3 tokens) equals --batch-size 8: same losses and adapters (no dropout)."""
    folder = write_tiny_t5(tmp_path / "t5", data_dir, dropout=0.0) if backbone == "t5" else \
        write_tiny_llama(tmp_path / "llama", data_dir)
    runs = {k: tmp_path / f"k{k}" for k in (1, 2)}
    for k, out in runs.items():
        assert T.main(options(folder, data_dir, out, "dept", 6, "--grad-accum", str(k), "--eval-every", "6")) == 0
    for a, b in zip(training_losses(runs[1]), training_losses(runs[2])):
        assert abs(a - b) <= 1e-6 * a, (a, b)      # float32 rounding of a sum taken in another order
    # Llama's 1-2e-6: its gradients agree to float32 rounding (2e-7 on entries of 1.7), which AdamW's
    # division by sqrt(v) enlarges in small entries over the 6 steps at lr 0.3
    assert max_param_diff(runs[1], runs[2]) <= (1e-6 if backbone == "t5" else 5e-6)
    if backbone == "t5":   # not vacuous: the micro-batches hold different numbers of labelled tokens per row
        rows = encode_examples("sst2", k_shot("sst2", load_splits("sst2", data_dir)["train"], 32, 42),
                               load_tokenizer(folder), 64, False, 1)[0]
        per_row = [len(rows[j]["labels"]) for j in batches(32, 8, 42, 0)[0]]
        means = [sum(part) / len(part) for part in (per_row[:4], per_row[4:])]
        assert len(set(means)) > 1, means


def test_grad_accum_with_a_last_batch_smaller_than_k(data_dir, tmp_path):
    """32 examples in batches of 10: the fourth step trains on the 2 left over, as 2 micro-batches of 1
    although --grad-accum is 4, and gives the losses of --grad-accum 1 (no dropout)."""
    folder, runs = write_tiny_t5(tmp_path / "t5", data_dir, dropout=0.0), {k: tmp_path / f"k{k}" for k in (1, 4)}
    for k, out in runs.items():
        assert T.main(options(folder, data_dir, out, "pt", 4, "--batch-size", "10", "--grad-accum", str(k),
                              "--eval-every", "4")) == 0
    assert training_losses(runs[4]) == pytest.approx(training_losses(runs[1]), rel=1e-5)


@pytest.mark.parametrize("backbone", ["t5", "gpt2", "llama"])
def test_activation_checkpointing_gives_the_same_run(backbone, backbones, data_dir, tmp_path, monkeypatch):
    """The blocks are recomputed in the backward pass (the calls are counted), with the dropout masks
    of the forward pass: the same losses and adapters, with dropout on (T5, GPT-2: 0.1)."""
    import minidept.models.layers   # layers.run_block: every backbone's blocks go through it

    folder = backbones[backbone] if backbone != "llama" else write_tiny_llama(tmp_path / "llama", data_dir)
    calls = []
    monkeypatch.setattr(minidept.models.layers, "checkpoint",
                        lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(*a, **k))
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    assert T.main(options(folder, data_dir, plain, "dept", 4, "--eval-every", "4")) == 0
    assert not calls
    assert T.main(options(folder, data_dir, recomputed, "dept", 4, "--eval-every", "4",
                          "--activation-checkpointing")) == 0
    assert len(calls) >= 4 * 2                     # every block of every training step (none in evaluation)
    assert training_losses(plain) == training_losses(recomputed)
    assert max_param_diff(plain, recomputed) <= 1e-6


def test_bfloat16_trains_in_float32_and_reaches_float32_loss(data_dir, tmp_path):
    """The backbone in bfloat16; the adapter, AdamW's moments and the loss in float32. 300 SST-2 steps
    on a tiny Llama: the mean loss of the last 50 steps within 2 % of float32's."""
    folder = write_tiny_llama(tmp_path / "llama", data_dir)
    runs = {dtype: tmp_path / dtype for dtype in ("float32", "bfloat16")}
    for dtype, out in runs.items():
        argv = options(folder, data_dir, out, "dept", 300, "--dtype", dtype, "--k-shot", "200",
                       "--eval-every", "300", "--log-every", "50", "--max-eval-examples", "8")
        assert T.main(argv) == 0
    losses = {dtype: training_losses(out)[-1] for dtype, out in runs.items()}
    print(f"mean loss of steps 251-300: {losses}")
    assert abs(losses["bfloat16"] - losses["float32"]) <= 0.02 * losses["float32"], losses
    assert training_losses(runs["bfloat16"])[0] > 1.1 * losses["bfloat16"]      # it did learn (8.1 -> 6.6)
    state = state_tensors(runs["bfloat16"])
    assert {t.dtype for k, t in state.items() if k.startswith(("param.", "optimizer."))} == {torch.float32}
    assert {t.dtype for t in read_adapter(runs["bfloat16"] / T.ADAPTER_FILE)[1].values()} == {torch.float32}
    model, _, run = load_for_inference(runs["bfloat16"])     # evaluate / predict take the run's dtype
    assert run["dtype"] == "bfloat16" and model.backbone.embed_tokens.weight.dtype == torch.bfloat16
    assert model.prompt.P.dtype == torch.float32


def test_float16_is_refused_on_the_cpu(backbones, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(options(backbones["t5"], data_dir, out, "dept", 2, "--dtype", "float16", "--device", "cpu")) == 2
    error = capsys.readouterr().err.strip()
    assert "--dtype float16 needs a GPU" in error and "bfloat16" in error and len(error.splitlines()) == 1
    assert not out.exists()


# --------------------------------------------------------------------------- #
# Faults lose nothing
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("grouping", [[], ["--group-by-length"]])
def test_resume_gives_the_same_run(backbones, data_dir, tmp_path, grouping):
    """12 steps straight == 5 steps, stop, --resume, 7 more: same losses, bit-identical tensors.
    32 examples in batches of 12: each epoch ends with a batch of 8, and the resumed run starts with it."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = ["--eval-every", "4", "--save-every", "3", "--batch-size", "12", *grouping]
    assert T.main(options(backbones["t5"], data_dir, straight, "dept", 12, *extra)) == 0
    assert T.main(options(backbones["t5"], data_dir, split, "dept", 12, *extra, "--stop-at", "5")) == 0
    assert not (split / T.RESULTS_FILE).exists()
    assert len(training_losses(split)) == 5
    assert T.main(options(backbones["t5"], data_dir, split, "dept", 12, *extra, "--resume")) == 0

    assert training_losses(split) == training_losses(straight)
    assert len(set(training_losses(straight))) > 1          # dropout and data order really vary
    assert same_file_content(split / T.ADAPTER_FILE, straight / T.ADAPTER_FILE)
    states = [load_file(str(d / T.STATE_FILE)) for d in (straight, split)]   # tensors; the metadata has times
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    a, b = (json.loads((d / T.RESULTS_FILE).read_text()) for d in (straight, split))
    assert (a["test"], a["validation"], a["best_step"]) == (b["test"], b["validation"], b["best_step"])
    assert json.loads((split / T.CONFIG_FILE).read_text())["run"]["group_by_length"] == bool(grouping)


def test_group_by_length_is_fixed_on_resume(backbones, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(options(backbones["t5"], data_dir, out, "dept", 4, "--stop-at", "2", "--group-by-length")) == 0
    capsys.readouterr()
    # argparse cannot switch a store_true flag off, so compare with a saved run that had it off
    config = json.loads((out / T.CONFIG_FILE).read_text())
    config["run"]["group_by_length"] = False
    (out / T.CONFIG_FILE).write_text(json.dumps(config))
    assert T.main(options(backbones["t5"], data_dir, out, "dept", 4, "--resume", "--group-by-length")) == 2
    assert "--group-by-length False -> True" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["ctrl_c_in_a_step", "sigterm_from_a_thread"])
def test_a_signal_saves_the_state_at_a_step_boundary_and_resume_continues_exactly(backbones, data_dir, tmp_path,
                                                                                   monkeypatch, how):
    """Ctrl-C (SIGINT) or SIGTERM during step 7: the step finishes, the state is saved at step 7 although
    --save-every is 100, the exit code is 130, and --resume gives the losses of the uninterrupted run."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = ["--eval-every", "5", "--save-every", "100"]
    assert T.main(options(backbones["gpt2"], data_dir, straight, "adept", 10, *extra)) == 0

    calls, unhandled = [], []

    def collate_with_a_signal(*args, **kwargs):   # the loop collates one batch per step
        calls.append(1)
        if len(calls) == 7:
            if how == "ctrl_c_in_a_step":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                sent = threading.Event()
                threading.Thread(target=lambda: (os.kill(os.getpid(), signal.SIGTERM), sent.set())).start()
                assert sent.wait(30)
        return collate(*args, **kwargs)

    # Should the loop not catch SIGTERM, this records it instead of ending pytest.
    before = {sig: signal.signal(sig, lambda *_: unhandled.append(1)) for sig in (signal.SIGTERM,)}
    before[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        theirs = {sig: signal.getsignal(sig) for sig in before}
        monkeypatch.setattr(T, "collate", collate_with_a_signal)
        code = T.main(options(backbones["gpt2"], data_dir, split, "adept", 10, *extra))
        monkeypatch.setattr(T, "collate", collate)
        assert {sig: signal.getsignal(sig) for sig in before} == theirs   # the loop's handlers are gone again
    finally:
        signal.signal(signal.SIGTERM, before[signal.SIGTERM])
    assert not unhandled and code == 130
    assert len(calls) == 7 and len(training_losses(split)) == 7   # step 7 finished, nothing after it
    state_step = json.loads(read_safetensors(split / T.STATE_FILE)[0]["progress"])["step"]
    assert state_step == 7
    assert not (split / T.RESULTS_FILE).exists()
    assert T.main(options(backbones["gpt2"], data_dir, split, "adept", 10, *extra, "--resume")) == 0
    assert training_losses(split) == training_losses(straight)
    assert same_file_content(split / T.ADAPTER_FILE, straight / T.ADAPTER_FILE)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(backbones, data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_forward, calls = PromptedModel.forward, []

    def nan_at_step_8(self, *args, **kwargs):
        loss = real_forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 8:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(PromptedModel, "forward", nan_at_step_8)
    code = T.main(options(backbones["t5"], data_dir, out, "pt", 20, "--eval-every", "5", "--save-every", "5"))
    assert code == 1 and len(calls) == 8
    message = capsys.readouterr().out
    assert "non-finite" in message and "loss nan" in message and "step 8" in message
    state_step = json.loads(safe_open(str(out / T.STATE_FILE), "pt").metadata()["progress"])["step"]
    assert state_step == 5                       # the last good state, not step 7
    assert (out / T.ADAPTER_FILE).is_file() and not (out / T.RESULTS_FILE).exists()


@pytest.mark.parametrize("grouping", [[], ["--group-by-length"]])
def test_the_loop_takes_the_batch_of_seed_and_step(backbones, data_dir, tmp_path, monkeypatch, grouping):
    """Step s trains on batches(n, batch_size, seed, epoch)[i], epoch, i = divmod(s, ceil(n / batch)):
    the last, partial batch of an epoch is trained on (as the official runs)."""
    seen, real_collate = [], T.collate

    def recording_collate(rows, pad_id):
        seen.append([id(row) for row in rows])
        return real_collate(rows, pad_id)

    monkeypatch.setattr(T, "collate", recording_collate)   # the loop's collate only (evaluation has its own)
    config = config_of(options(backbones["t5"], data_dir, tmp_path / "run", "pt", 10, "--seed", "5",
                               "--batch-size", "12", *grouping))
    results, _, _, _, data, _ = train_and_keep_the_model(monkeypatch, config)
    rows = data["train"]
    assert results["status"] == "done" and len(rows) == 32   # batches of 12, 12, 8 an epoch: 10 steps cross 3
    lengths = [len(row["input_ids"]) for row in rows] if grouping else None
    expected = [[id(rows[i]) for i in train_batch(len(rows), 12, 5, step, lengths)] for step in range(10)]
    assert seen == expected
    assert [len(batch) for batch in seen] == [12, 12, 8] * 3 + [12]
    assert sorted(i for batch in seen[3:6] for i in batch) == sorted(id(row) for row in rows)   # every example
    assert seen[3:6] != seen[:3]                              # each epoch a new order


# --------------------------------------------------------------------------- #
# The Python API: train(TrainConfig(...))
# --------------------------------------------------------------------------- #

def test_train_from_python_writes_a_run_that_opens_for_inference(backbones, data_dir, tmp_path, monkeypatch):
    """train() itself writes config.json, so a run started from Python needs no --model later."""
    out = tmp_path / "run"
    config = T.TrainConfig(task="sst2", model=str(backbones["t5"]), data_dir=str(data_dir), l=20, m=4, k_shot=16,
                           batch_size=8, max_length=64, max_steps=2, eval_every=1, max_eval_examples=8,
                           output_dir=str(out), quiet=True)
    assert config == config_of(["--task", "sst2", "--model", str(backbones["t5"]), "--data-dir", str(data_dir),
                                "--l", "20", "--m", "4", "--k-shot", "16", "--batch-size", "8", "--max-length", "64",
                                "--max-steps", "2", "--eval-every", "1", "--max-eval-examples", "8",
                                "--output-dir", str(out), "--quiet"])   # the command line builds the same object
    results, model, tokenizer, task, data, _ = train_and_keep_the_model(monkeypatch, config)
    assert results["status"] == "done" and results["steps"] == 2
    assert {p.name for p in out.iterdir()} >= set(T.RUN_FILES)
    saved = json.loads((out / T.CONFIG_FILE).read_text())
    assert saved["run"]["model"] == str(backbones["t5"]) and saved["run"]["method"] == "dept"
    assert set(saved["truncated"]) == {"train", "validation", "test"}
    reloaded, _, run_settings = load_for_inference(out)
    assert (run_settings["method"], run_settings["task"]) == ("dept", "sst2") and not reloaded.training
    assert reloaded.config == model.config
    for (name, a), b in zip(model.adapter_state_dict().items(), reloaded.adapter_state_dict().values()):
        assert torch.equal(a, b), name
    rows = data["validation"]
    assert predict(reloaded, rows, tokenizer) == predict(model, rows, tokenizer)


def test_train_on_the_demo_from_python(tmp_path):
    out = tmp_path / "demo"
    results = T.train(T.TrainConfig(task="demo", model="demo", max_steps=20, max_eval_examples=40,
                                    output_dir=str(out), quiet=True), log=quiet)
    assert results["status"] == "done" and results["steps"] == 20 and results["best_step"] == 20
    run = json.loads((out / T.CONFIG_FILE).read_text())["run"]
    assert (run["model"], run["method"], run["l"], run["m"], run["r"], run["max_length"]) == ("demo", "dept", 20, 4, 8, 64)
    model, _, run_settings = load_for_inference(out)
    assert run_settings["task"] == "demo" and model.config.r == 8
    _, tensors = read_adapter(out / T.ADAPTER_FILE)
    assert all(torch.equal(p, tensors[name]) for name, p in model.adapter_state_dict().items())
    # --stop-at from Python: "stopped", continued with resume
    out2 = tmp_path / "stopped"
    config = T.TrainConfig(task="demo", model="demo", max_steps=6, stop_at=3, max_eval_examples=20,
                           output_dir=str(out2), quiet=True)
    assert T.train(config, log=quiet) == {"status": "stopped", "step": 3}
    resumed = T.train(dataclasses.replace(config, stop_at=None, resume=True), log=quiet)
    assert resumed["status"] == "done" and resumed["steps"] == 6


def test_train_from_python_in_a_worker_thread(tmp_path):
    """The Python API where the caller is not the main thread (a web server, a notebook's worker)."""
    outcome = {}

    def work():
        try:
            outcome["results"] = T.train(T.TrainConfig(task="demo", model="demo", max_steps=2, max_eval_examples=10,
                                                       output_dir=str(tmp_path / "run"), quiet=True), log=quiet)
        except Exception as error:   # reported below, in the test's own thread
            outcome["error"] = error

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(300)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["results"]["status"] == "done"


# --------------------------------------------------------------------------- #
# Learning-rate schedule
# --------------------------------------------------------------------------- #

def test_schedule_fixed_points():
    # transformers' linear schedule: step / warmup, so the first update has learning rate 0
    assert [T.lr_factor(s, 4, 12) for s in (0, 1, 3, 4, 8, 11)] == [0.0, 0.25, 0.75, 1.0, 0.5, 0.125]
    assert T.lr_factor(0, 0, 10) == 1.0 and T.lr_factor(9, 0, 10) == 0.1


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 600), st.integers(1, 3000))
def test_schedule_rises_then_falls(warmup, max_steps):
    factors = [T.lr_factor(s, warmup, max_steps) for s in range(max_steps)]
    assert factors[0] == (0.0 if warmup else 1.0) and all(0 < f <= 1 for f in factors[1:])
    peak = factors.index(max(factors))
    assert all(a <= b for a, b in zip(factors[:peak], factors[1:peak + 1]))
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1:]))


# --------------------------------------------------------------------------- #
# Evaluation: up to 19 new tokens on T5, 20 on GPT-2
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("model_name", ["demo", "demo-gpt2"])
def test_evaluation_decodes_up_to_the_official_limit_and_a_long_output_is_wrong(model_name, monkeypatch):
    """A model that writes "1 is my answer" and no end-of-sequence is wrong for the reference "1": decoding
    is not cut after the longest label. GPT-2 stops at s = max_length positions (DePT's rows)."""
    backbone, tokenizer = load_backbone(model_name)
    model = PromptedModel(backbone, T.PromptConfig("dept", l=20, m=4, max_length=64))
    task = T.get_task("demo")
    examples = [{"sentence": "the film was superb", "label": 1}, {"sentence": "it was fun and the plot was ok", "label": 1}]
    rows, _ = encode_examples(task, examples, tokenizer, 64, model_name == "demo-gpt2", model.eos_id)
    answer, asked = tokenizer.encode("1 is my answer", add_special_tokens=False).ids, []

    def generate(ids, mask, max_new_tokens):
        asked.append((ids.shape[1], max_new_tokens))
        return torch.tensor([answer[:max_new_tokens]] * ids.shape[0])

    monkeypatch.setattr(model, "generate", generate)
    assert evaluate(model, rows, task, tokenizer) == {"accuracy": 0.0}
    if model_name == "demo":
        assert [n for _, n in asked] == [answer_tokens(True)] == [19]   # max_length 20 counts the start token
    else:   # each batch: at most 20, and no position past s = 64
        longest = max(row["prompt_length"] for row in rows)
        assert asked == [(longest, 64 - longest)] and 64 - longest < 20
