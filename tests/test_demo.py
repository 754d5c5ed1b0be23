"""The embedded demo: byte tokenizer, random backbones from embedded configs, synthetic task, demo run."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minidept import demo
from minidept.data import encode_examples, special_ids
from minidept.tasks import format_example


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_is_bytes_plus_three(text):
    assume(not any(token in text for token in ("<pad>", "</s>", "<unk>", "<|endoftext|>")))
    t5, gpt2 = demo.byte_tokenizer("t5"), demo.byte_tokenizer("gpt2")
    byte_ids = [b + 3 for b in text.encode("utf-8")]
    assert t5.encode(text).ids == byte_ids + [demo.EOS_ID]          # T5 flavour appends </s>
    assert gpt2.encode(text).ids == byte_ids                         # GPT-2 flavour appends nothing
    assert t5.decode(t5.encode(text).ids) == text == gpt2.decode(byte_ids)


def test_byte_tokenizer_specials_match_the_data_layer():
    assert special_ids(demo.byte_tokenizer("t5"), "t5") == {"eos": 1, "pad": 0}
    assert special_ids(demo.byte_tokenizer("gpt2"), "gpt2") == {"eos": 1, "pad": 1}
    assert demo.byte_tokenizer().get_vocab_size() == demo.VOCAB_SIZE == 259
    with pytest.raises(ValueError, match="flavour"):
        demo.byte_tokenizer("bert")


@pytest.mark.parametrize("name", ["demo", "demo-gpt2"])
def test_demo_backbone_is_always_the_same_and_leaves_the_global_rng_alone(name):
    state = torch.get_rng_state()
    a, b = demo.build_model(name), demo.build_model(name)
    assert torch.equal(torch.get_rng_state(), state)
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="unknown demo model"):
        demo.build_model("demo-bert")


def test_synthetic_task_is_fixed_balanced_and_consistent():
    splits, again = demo.make_splits(), demo.make_splits()
    assert splits == again
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 200, "test": 200}
    for examples in splits.values():
        assert sum(e["label"] for e in examples) == len(examples) // 2
        for e in examples:
            words = set(e["sentence"].split())
            assert words & set(demo.POSITIVE if e["label"] else demo.NEGATIVE)
            assert not words & set(demo.NEGATIVE if e["label"] else demo.POSITIVE)
    assert format_example(demo.DEMO_TASK, {"sentence": "it was fun", "label": 1}) == ("sentence: it was fun", "1")
    rows, truncated = encode_examples(demo.DEMO_TASK, splits["train"], demo.byte_tokenizer(), "t5",
                                      demo.DEMO_TASK.max_length)
    assert truncated == 0 and rows[0]["labels"] == [ord(rows[0]["target"]) + 3, demo.EOS_ID]


def test_demo_runs_and_says_what_it_shows(capsys, tmp_path):
    assert demo.main(["--steps", "16", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out and "What this shows" in out and "What it cannot show" in out
    assert "near chance" in out and "pretrained" in out
    assert out.count("identical predictions") == 2
    assert "PT (vanilla prompt tuning): l=20" in out and "DePT: m=4, r=8" in out
    for method in ("pt", "dept"):
        assert (tmp_path / method / "adapter.safetensors").is_file()
        assert (tmp_path / method / "results.json").is_file()
    # the loss printed for each method goes down from its first to its last record
    for line in (line for line in out.splitlines() if line.strip().startswith("loss")):
        losses = [float(item.split(": ")[1]) for item in line.split("  ")[1:] if ": " in item]
        assert losses[-1] < losses[0], line
