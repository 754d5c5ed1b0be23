"""Shared test fixtures: the real data folder, and tiny random Hugging Face checkpoints.

Tests that need `../shared/data` (or `$MINIDEPT_DATA`) skip with a reason when it is
absent, and fail instead when `MINIDEPT_REQUIRE_DATA=1` (as in CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["mounts"]   # the full_disk and read_only fixtures (tmpfs mounts)

# The tokenizers library starts a thread pool for batches; on a loaded machine that can fail (EAGAIN) and kill a
# test's training subprocess. The tests, and the commands they start, tokenize on the calling thread.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def data_candidates() -> list[Path]:
    """Where the real data is looked for: $MINIDEPT_DATA, then ../shared/data beside the repository."""
    return [Path(p) for p in (os.environ.get("MINIDEPT_DATA"), REPO.parent / "shared" / "data") if p]


def find_data_dir() -> Path | None:
    return next((path for path in data_candidates() if (path / "glue").is_dir()), None)


NO_DATA = "real data not found"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the test machines are shared (`pytestmark = usefixtures`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        tried = ", ".join(str(path.resolve() / "glue") for path in data_candidates())
        message = (f"{NO_DATA} (no {tried}): set MINIDEPT_DATA to a folder with glue/, superglue/ and the "
                   "tokenizers")
        if os.environ.get("MINIDEPT_REQUIRE_DATA") == "1":
            pytest.fail(message + " (MINIDEPT_REQUIRE_DATA=1)")
        pytest.skip(message)
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Every skip for missing data is reported at one place, so the summary folds them into one line."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and NO_DATA in report.longrepr[2]:
        lines = Path(__file__).read_text().splitlines()
        line = next(i for i, text in enumerate(lines, 1) if "pytest.skip(message)" in text)
        report.longrepr = (__file__, line, report.longrepr[2])
    return report


# --------------------------------------------------------------------------- #
# Tiny random checkpoints in the Hugging Face layout, written by transformers.
# --------------------------------------------------------------------------- #

T5_VARIANTS = {
    # original T5: relu FFN, tied embeddings (decoder output rescaled by d_model**-0.5)
    "v1": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    # T5 v1.1 / FLAN-T5: gated-gelu FFN, untied lm_head
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # num_heads * d_kv != d_model, as in t5-3b
    "wide_heads": dict(feed_forward_proj="relu", tie_word_embeddings=True, d_kv=24, num_heads=4),
}


def make_hf_t5(folder: Path, variant: str = "v1", seed: int = 0, **overrides):
    """Write a tiny random T5ForConditionalGeneration to `folder`; return the transformers model."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                  num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                  dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    kwargs.update(T5_VARIANTS[variant])
    kwargs.update(overrides)
    model = T5ForConditionalGeneration(T5Config(**kwargs)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def make_hf_gpt2(folder: Path, seed: int = 0, **overrides):
    """Write a tiny random GPT2LMHeadModel to `folder`; return the transformers model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=127, eos_token_id=127)
    kwargs.update(overrides)
    model = GPT2LMHeadModel(GPT2Config(**kwargs)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def make_hf_llama(folder: Path, seed: int = 0, **overrides):
    """Write a tiny random LlamaForCausalLM to `folder`; return the transformers model.

    Default: grouped-query attention (4 query heads, 2 key/value heads), separate head.
    Weights are redrawn from N(0, 0.3) (norm gains 1 + N(0, 0.3)) so that greedy decoding
    does not repeat one token and the comparisons mean something.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=127, pad_token_id=0)
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():   # a tied lm_head is embed_tokens' Parameter: drawn once
            p.copy_(float(name.endswith("norm.weight")) + 0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture
def hf_t5(tmp_path):
    """(transformers model, folder) for the original tiny T5."""
    return make_hf_t5(tmp_path / "t5"), tmp_path / "t5"


@pytest.fixture
def hf_gpt2(tmp_path):
    """(transformers model, folder) for a tiny GPT-2."""
    return make_hf_gpt2(tmp_path / "gpt2"), tmp_path / "gpt2"


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished runs of the demo task on the demo T5, PT and DePT (6 steps, 20 examples scored)."""
    from minidept.run.train import TrainConfig, train

    root, runs = tmp_path_factory.mktemp("demo-runs"), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for method in ("pt", "dept"):
        runs[method] = root / method
        train(TrainConfig(task="demo", model="demo", method=method, max_steps=6, eval_every=3, log_every=2,
                          max_eval_examples=20, output_dir=str(runs[method]), quiet=True), log=lambda *_: None)
    torch.set_num_threads(threads)
    return runs
