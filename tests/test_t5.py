"""minidept.t5 against transformers' T5ForConditionalGeneration, on tiny random checkpoints.

All offline: each checkpoint is written by transformers itself (conftest.make_hf_t5).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import make_hf_t5
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import minidept
from minidept.io.checkpoint import CheckpointError, load_folder, read_state_dict, save_pretrained
from minidept.models.t5 import CHECKPOINT_TO_MODULE, T5, T5Config, rename_table

VARIANTS = ["v1", "v1_1", "wide_heads"]
NO_EOS = 10_000  # an eos id no model here can produce: generation always runs the full length


def padded_batch(seed=0, vocab=128):
    """Three rows, right-padded with 0: lengths 9, 6 and 3."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request, tmp_path_factory):
    """(variant, transformers model, our model, folder) with the same weights."""
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_hf_t5(folder, request.param)
    return request.param, hf, load_folder(folder), folder


# --------------------------------------------------------------------------- #
# Parity with transformers
# --------------------------------------------------------------------------- #

def test_logits_match_transformers(pair):
    variant, hf, ours, _ = pair
    ids, mask = padded_batch()
    decoder_ids = torch.randint(2, 128, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = ours(ids, mask, decoder_ids)
    diff = max_diff(got, expected)
    print(f"{variant}: max |logit diff| = {diff:.3g}")
    assert got.shape == expected.shape
    assert diff <= 1e-4, f"{variant}: max |logit diff| = {diff:.3g} > 1e-4"


def test_encode_matches_transformers_encoder(pair):
    variant, hf, ours, _ = pair
    ids, mask = padded_batch(seed=2)
    with torch.no_grad():
        expected = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.encode(ids, mask)
    diff = max_diff(got, expected)
    assert diff <= 1e-5, f"{variant}: max |encoder output diff| = {diff:.3g}"


def test_decode_hidden_matches_transformers_decoder(pair):
    variant, hf, ours, _ = pair
    ids, mask = padded_batch(seed=3)
    decoder_ids = torch.randint(2, 128, (3, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        encoder_hidden = ours.encode(ids, mask)
        expected = hf.decoder(input_ids=decoder_ids, encoder_hidden_states=encoder_hidden,
                              encoder_attention_mask=mask).last_hidden_state
        got, past = ours.decode(decoder_ids, encoder_hidden, mask)
    assert max_diff(got, expected) <= 1e-5, f"{variant}: {max_diff(got, expected):.3g}"
    assert len(past) == ours.config.num_decoder_layers and past[0][0].shape[2] == 4


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generate_matches_transformers_without_eos(variant, tmp_path):
    hf = make_hf_t5(tmp_path, variant, eos_token_id=NO_EOS)
    ours = load_folder(tmp_path)
    ids, mask = padded_batch(seed=4)
    expected = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=20)
    got = ours.generate(ids, mask, max_new_tokens=20)
    assert expected[:, 0].eq(ours.config.decoder_start_token_id).all()
    assert got.shape == (3, 20)
    assert got.tolist() == expected[:, 1:].tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generate_matches_transformers_with_eos(variant, tmp_path):
    ids, mask = padded_batch(seed=4)
    # First run without eos, then declare the 4th token of row 0 to be eos (same weights: same seed).
    make_hf_t5(tmp_path, variant, eos_token_id=NO_EOS)
    eos = int(load_folder(tmp_path).generate(ids, mask, max_new_tokens=20)[0, 3])
    hf = make_hf_t5(tmp_path / "eos", variant, eos_token_id=eos)
    ours = load_folder(tmp_path / "eos")
    expected = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=20)
    got = ours.generate(ids, mask, max_new_tokens=20)
    assert got.tolist() == expected[:, 1:].tolist()
    row = got[0].tolist()
    first_eos = row.index(eos)
    assert first_eos <= 3 and all(t == ours.config.pad_token_id for t in row[first_eos + 1:])
    # a batch of the first row alone stops right at its eos
    alone = ours.generate(ids[:1], mask[:1], max_new_tokens=20)
    assert alone.tolist() == [row[:first_eos + 1]]


def test_generate_with_cache_equals_full_recompute(pair):
    """Each cached greedy step gives what a full decode of the prefix gives."""
    _, _, ours, _ = pair
    ids, mask = padded_batch(seed=5)
    with torch.no_grad():
        new = ours.generate(ids, mask, max_new_tokens=6)
        start = torch.full((3, 1), ours.config.decoder_start_token_id)
        prefix = torch.cat([start, new[:, :-1]], dim=1)
        full = ours(ids, mask, prefix).argmax(-1)
    done_before = torch.cumsum(new == ours.config.eos_token_id, dim=1) - (new == ours.config.eos_token_id).long()
    live = done_before == 0  # positions before (and at) each row's eos
    assert torch.equal(full[live], new[live])


def test_decode_step_by_step_equals_one_pass(pair):
    _, _, ours, _ = pair
    ids, mask = padded_batch(seed=6)
    decoder_ids = torch.randint(2, 128, (3, 5), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        encoder_hidden = ours.encode(ids, mask)
        one_pass, _ = ours.decode(decoder_ids, encoder_hidden, mask)
        past, steps = None, []
        for t in range(5):
            hidden, past = ours.decode(decoder_ids[:, t:t + 1], encoder_hidden, mask, past)
            steps.append(hidden)
        # two positions at once on top of a cache also works
        _, past2 = ours.decode(decoder_ids[:, :3], encoder_hidden, mask)
        last_two, _ = ours.decode(decoder_ids[:, 3:], encoder_hidden, mask, past2)
    assert max_diff(torch.cat(steps, dim=1), one_pass) <= 1e-5
    assert max_diff(last_two, one_pass[:, 3:]) <= 1e-5


def test_position_bias_with_an_offset_is_a_slice_of_the_full_bias(pair):
    """The decoder's cached steps ask for queries P.. only: the rows P.. of the full (causal) bias."""
    _, _, ours, _ = pair
    full = ours.position_bias(ours.decoder, 7, 7)                  # (1, H, 7, 7)
    assert full.shape == (1, ours.config.num_heads, 7, 7)
    for P in range(7):
        assert torch.equal(ours.position_bias(ours.decoder, 7 - P, 7, offset=P), full[:, :, P:])
    encoder = ours.position_bias(ours.encoder, 7, 7)               # bidirectional: its own table, both halves
    assert not torch.equal(encoder, full)
    assert not torch.equal(encoder[0, :, 0, 3], encoder[0, :, 3, 0])   # key after vs before the query


def test_inputs_embeds_equals_input_ids(pair):
    _, _, ours, _ = pair
    ids, mask = padded_batch(seed=7)
    embeds = ours.get_input_embeddings()(ids)
    decoder_ids = torch.randint(2, 128, (3, 4), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(ours(ids, mask, decoder_ids), ours(None, mask, decoder_ids, inputs_embeds=embeds))
        assert torch.equal(ours.encode(ids, mask), ours.encode(attention_mask=mask, inputs_embeds=embeds))
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=8),
                       ours.generate(attention_mask=mask, max_new_tokens=8, inputs_embeds=embeds))


def test_default_decoder_input_is_one_start_token(pair):
    _, hf, ours, _ = pair
    ids, mask = padded_batch(seed=8)
    start = torch.zeros(3, 1, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(ours(ids, mask), ours(ids, mask, start))
        assert max_diff(ours(ids, mask), hf(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits) <= 1e-4


def test_backbone_interface(pair):
    """What minidept.prompted relies on: family, width, no fixed context, encode / decode / head apart."""
    _, _, ours, _ = pair
    assert (ours.model_type, ours.is_encoder_decoder, ours.d_model, ours.context_length) == ("t5", True, 32, None)
    ids, mask = padded_batch(seed=16)
    decoder_ids = torch.randint(2, 128, (3, 4), generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        hidden, _ = ours.decode(decoder_ids, ours.encode(ids, mask), mask)
        assert torch.equal(ours.lm_logits(hidden), ours(ids, mask, decoder_ids))


def test_shift_right_matches_transformers(pair):
    _, hf, ours, _ = pair
    labels = torch.tensor([[5, 6, 7, 1], [8, 1, -100, -100]])
    assert ours.shift_right(labels).tolist() == hf._shift_right(labels).tolist() == [[0, 5, 6, 7], [0, 8, 1, 0]]


@settings(max_examples=20, deadline=None)
@given(extra=st.integers(1, 6), row=st.integers(0, 2))
def test_padding_does_not_change_real_outputs(extra, row, tmp_path_factory):
    """Appending pad positions to a batch leaves every real position's encoder output and logits unchanged."""
    ours = _tiny_model(tmp_path_factory)
    ids, mask = padded_batch(seed=9)
    pad = torch.zeros(3, extra, dtype=torch.long)
    longer_ids, longer_mask = torch.cat([ids, pad], dim=1), torch.cat([mask, pad], dim=1)
    decoder_ids = torch.randint(2, 128, (3, 3), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        short = ours.encode(ids, mask)[row][mask[row] == 1]
        long = ours.encode(longer_ids, longer_mask)[row][longer_mask[row] == 1]
        logits_short = ours(ids, mask, decoder_ids)
        logits_long = ours(longer_ids, longer_mask, decoder_ids)
    assert max_diff(short, long) <= 1e-5
    assert max_diff(logits_short, logits_long) <= 1e-5


_TINY: dict[str, T5] = {}


def _tiny_model(tmp_path_factory) -> T5:
    if "v1" not in _TINY:
        folder = tmp_path_factory.mktemp("tiny_v1")
        make_hf_t5(folder, "v1")
        _TINY["v1"] = load_folder(folder)
    return _TINY["v1"]


def test_dropout_active_in_train_mode_and_off_in_eval(tmp_path):
    hf = make_hf_t5(tmp_path, "v1_1", dropout_rate=0.1)
    ours = load_folder(tmp_path)
    assert ours.config.dropout_rate == 0.1 and not ours.training
    ids, mask = padded_batch(seed=10)
    decoder_ids = torch.randint(2, 128, (3, 4), generator=torch.Generator().manual_seed(10))
    ours.train()
    torch.manual_seed(0)
    a, b = ours(ids, mask, decoder_ids), ours(ids, mask, decoder_ids)
    assert max_diff(a, b) > 1e-3, "dropout should make two train-mode passes differ"
    ours.eval()
    with torch.no_grad():
        c, d = ours(ids, mask, decoder_ids), ours(ids, mask, decoder_ids)
        expected = hf.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert torch.equal(c, d)
    assert max_diff(c, expected) <= 1e-4


def test_bfloat16_load(tmp_path):
    make_hf_t5(tmp_path, "v1")
    full, half = load_folder(tmp_path), load_folder(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    ids, mask = padded_batch(seed=11)
    with torch.no_grad():
        diff = max_diff(half(ids, mask).float(), full(ids, mask))
    assert diff < 0.1, f"bfloat16 vs float32 logits differ by {diff:.3g}"
    with pytest.raises(ValueError, match="floating torch dtype"):
        load_folder(tmp_path, dtype=torch.int64)


# --------------------------------------------------------------------------- #
# Config and rename table
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("variant", VARIANTS)
def test_rename_table_maps_every_parameter_once(variant, tmp_path):
    make_hf_t5(tmp_path, variant)
    ours = load_folder(tmp_path)
    table = rename_table(ours.config)
    names = [name for name, _ in ours.named_parameters()]
    assert sorted(table.values()) == sorted(names)
    assert "shared.weight" in table and "encoder.embed_tokens.weight" not in table
    assert len(CHECKPOINT_TO_MODULE) < 20  # the table stays one readable screen


def test_hf_config_round_trip_and_variants(pair):
    variant, hf, ours, folder = pair
    config = ours.config
    assert T5Config.from_hf_config(config.to_hf_config()) == config
    assert config.feed_forward_proj == ("gated-gelu" if variant == "v1_1" else "relu")
    # v1.1 is never rescaled; transformers >= 5 writes it with a tied head, which we load as a copy
    assert config.tie_word_embeddings == (variant != "v1_1")
    if variant == "v1_1":
        assert torch.equal(ours.lm_head.weight, ours.shared.weight)
    if variant == "wide_heads":
        assert config.num_heads * config.d_kv != config.d_model


def test_real_t5_small_config_maps(data_dir):
    config = T5Config.from_hf_config(json.loads((data_dir / "configs" / "t5-small.config.json").read_text()))
    assert (config.d_model, config.d_kv, config.num_heads, config.num_layers, config.vocab_size) == (512, 64, 8, 6, 32128)
    assert config.tie_word_embeddings and config.feed_forward_proj == "relu" and config.dropout_rate == 0.1


def test_flan_style_untied_config():
    d = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    config = T5Config.from_hf_config(d)
    assert not config.tie_word_embeddings and config.num_decoder_layers == 2
    assert T5Config.from_hf_config({**d, "eos_token_id": [1]}).eos_token_id == 1


@pytest.mark.parametrize("field, value, message", [
    ("feed_forward_proj", "gated-silu", r"'feed_forward_proj' must be one of \['relu', 'gated-gelu'\], got 'gated-silu'"),
    ("num_heads", 0, "'num_heads' must be a positive integer"),
    ("d_model", "512", "'d_model' must be a positive integer"),
    ("dropout_rate", 1.5, r"'dropout_rate' must be a number in \[0, 1\), got 1.5"),
    ("layer_norm_epsilon", "tiny", "'layer_norm_epsilon' must be a number > 0"),
    ("tie_word_embeddings", "yes", "'tie_word_embeddings' must be true or false"),
    ("eos_token_id", [1, 2], "'eos_token_id'.*single id"),
    ("model_type", "bart", "'model_type' is 'bart'"),
    ("is_decoder", True, "is_decoder"),
])
def test_bad_config_values_are_named(field, value, message):
    d = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    with pytest.raises(ValueError, match=message):
        T5Config.from_hf_config({**d, field: value})


def test_config_missing_required_field():
    with pytest.raises(ValueError, match=r"missing required T5 field\(s\) \['d_ff'\]"):
        T5Config.from_hf_config(dict(vocab_size=128, d_model=32, d_kv=8, num_layers=2, num_heads=4))


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #

def test_save_pretrained_round_trips_through_both_loaders(pair, tmp_path):
    from transformers import T5ForConditionalGeneration

    variant, _, ours, _ = pair
    save_pretrained(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "encoder.embed_tokens.weight" not in keys and ("lm_head.weight" in keys) == (variant == "v1_1")
    again = load_folder(tmp_path)
    theirs = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(seed=12)
    decoder_ids = torch.randint(2, 128, (3, 4), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        logits = ours(ids, mask, decoder_ids)
        assert torch.equal(again(ids, mask, decoder_ids), logits)
        diff = max_diff(theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits, logits)
    assert diff <= 1e-4, f"{variant}: transformers on our save: max |logit diff| = {diff:.3g}"


def test_untied_head_with_its_own_weights_round_trips(tmp_path):
    """A FLAN-T5-like model whose lm_head differs from the embedding, through transformers and back."""
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                      dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ours = T5(config).eval()
    assert not torch.equal(ours.lm_head.weight, ours.shared.weight)
    save_pretrained(ours, tmp_path / "ours")
    theirs = T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids, mask = padded_batch(seed=13)
    with torch.no_grad():
        diff = max_diff(theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4]).logits,
                        ours(ids, mask, ids[:, :4]))
    assert diff <= 1e-4, f"untied head: max |logit diff| = {diff:.3g}"
    theirs.save_pretrained(tmp_path / "theirs")
    back = load_folder(tmp_path / "theirs")
    assert torch.equal(back.lm_head.weight, ours.lm_head.weight)
    assert torch.equal(back.shared.weight, ours.shared.weight)


# --------------------------------------------------------------------------- #
# Bad input: each failure names the file or value
# --------------------------------------------------------------------------- #

@pytest.fixture
def folder(tmp_path) -> Path:
    make_hf_t5(tmp_path / "t5", "v1")
    return tmp_path / "t5"


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_folder(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*model\.safetensors"):
        load_folder(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_folder(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors(folder, damage):
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(CheckpointError, match=r"model\.safetensors could not be read.*truncated or corrupt"):
        load_folder(folder)


def test_unknown_model_type_via_load_model(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"model_type='bert'.*supports"):
        minidept.load_model(folder)


def test_load_model_gives_our_t5(folder):
    model = minidept.load_model(folder)
    assert isinstance(model, T5) and not model.training


def test_wrong_model_type_in_t5_loader(folder):
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"config\.json: config field 'model_type' is 'gpt2'"):
        T5.from_checkpoint({**config, "model_type": "gpt2"}, read_state_dict(folder))


def test_unknown_feed_forward_proj(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "gated-silu"}))
    with pytest.raises(CheckpointError, match=r"config\.json: .*'feed_forward_proj' must be one of \['relu', 'gated-gelu'\], got 'gated-silu'"):
        load_folder(folder)


def _edit_weights(folder: Path, edit) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_checkpoint_missing_key(folder):
    _edit_weights(folder, lambda t: t.pop("decoder.block.1.layer.2.DenseReluDense.wo.weight"))
    with pytest.raises(CheckpointError, match=r"missing \(not in the file\): decoder\.block\.1\.layer\.2\.DenseReluDense\.wo\.weight"):
        load_folder(folder)


def test_checkpoint_extra_key(folder):
    _edit_weights(folder, lambda t: t.update({"encoder.block.0.layer.0.SelfAttention.extra.weight": torch.ones(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected \(not in the model\): encoder\.block\.0\.layer\.0\.SelfAttention\.extra\.weight"):
        load_folder(folder)


def test_checkpoint_gated_weights_in_relu_model(folder):
    _edit_weights(folder, lambda t: t.update({"encoder.block.0.layer.1.DenseReluDense.wi_0.weight": torch.ones(64, 32)}))
    with pytest.raises(CheckpointError, match=r"unexpected.*wi_0"):
        load_folder(folder)


def test_checkpoint_wrong_shape(folder):
    _edit_weights(folder, lambda t: t.update({"encoder.block.1.layer.0.SelfAttention.q.weight": torch.ones(16, 32)}))
    with pytest.raises(CheckpointError, match=r"shape mismatch: encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight: "
                                              r"\(16, 32\) in the file, \(32, 32\) in the model") as caught:
        load_folder(folder)
    assert "missing" not in str(caught.value)  # a mismatched key is reported once, as a mismatch
    assert str(caught.value).startswith(f"checkpoint {folder} does not fit the model:")
    assert str(caught.value).endswith("check that config.json belongs to these weights")


def test_skippable_keys_are_skipped(folder):
    """Tied copies and the unused cross-attention bias, as old checkpoints carry them, load fine."""
    def add(t):
        t["encoder.embed_tokens.weight"] = t["shared.weight"].clone()
        t["decoder.embed_tokens.weight"] = t["shared.weight"].clone()
        t["lm_head.weight"] = t["shared.weight"].clone()
        t["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    before = load_folder(folder)
    _edit_weights(folder, add)
    after = load_folder(folder)
    ids, mask = padded_batch(seed=14)
    with torch.no_grad():
        assert torch.equal(before(ids, mask), after(ids, mask))


@pytest.mark.parametrize("variant", ["v1", "v1_1"])
def test_pytorch_model_bin_loads_via_weights_only(variant, tmp_path):
    hf = make_hf_t5(tmp_path / "src", variant)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # holds the tied copies too
    ours = load_folder(tmp_path / "bin")
    ids, mask = padded_batch(seed=15)
    with torch.no_grad():
        diff = max_diff(ours(ids, mask), hf(input_ids=ids, attention_mask=mask,
                                            decoder_input_ids=torch.zeros(3, 1, dtype=torch.long)).logits)
    assert diff <= 1e-4, f"{variant} from pytorch_model.bin: max |logit diff| = {diff:.3g}"


class NotATensor:
    def __init__(self):
        self.payload = "would run code on unpickling in an unsafe loader"


def test_pytorch_model_bin_with_pickled_object_is_rejected(folder):
    (folder / "model.safetensors").unlink()
    torch.save({"shared.weight": NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"(?s)pytorch_model\.bin could not be loaded safely.*NotATensor.*never unpickles"):
        load_folder(folder)


def test_pytorch_model_bin_with_non_tensor_value_is_rejected(folder):
    (folder / "model.safetensors").unlink()
    torch.save({"shared.weight": 3}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin does not hold a plain dict of tensors"):
        load_folder(folder)


def test_bad_call_arguments(pair):
    _, _, ours, _ = pair
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        ours(ids, mask, inputs_embeds=ours.shared(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        ours.encode()
    with pytest.raises(ValueError, match=r"ids outside \[0, vocab_size=128\).*max 500"):
        ours(ids.clone().fill_(500))
    with pytest.raises(ValueError, match=r"decoder_input_ids holds ids outside.*min -100"):
        ours(ids, mask, torch.full((3, 2), -100))
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, length\) = \(3, 9\), got \(3, 8\)"):
        ours(ids, mask[:, :8])
    with pytest.raises(ValueError, match=r"inputs_embeds must be \(batch, length, d_model=32\)"):
        ours.encode(inputs_embeds=torch.zeros(3, 9, 16))
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        ours.generate(ids, mask, max_new_tokens=-1)
    assert ours.generate(ids, mask, max_new_tokens=0).shape == (3, 0)


# --------------------------------------------------------------------------- #
# Real t5-small (only where a user points MINIDEPT_T5_SMALL at a downloaded folder)
# --------------------------------------------------------------------------- #

def test_real_t5_small_reference_outputs(data_dir):
    weights = os.environ.get("MINIDEPT_T5_SMALL")
    if not weights:
        pytest.skip("no real t5-small weights: set MINIDEPT_T5_SMALL to a downloaded t5-small folder")
    reference = data_dir / "t5-reference-outputs"
    ids = torch.tensor([[8774, 296, 1, 0], [20748, 12288, 55, 1]])
    mask = (ids != 0).long()
    model = load_folder(weights)
    with torch.no_grad():
        encoder_hidden = model.encode(ids, mask)
        hidden, _ = model.decode(torch.zeros(2, 1, dtype=torch.long), encoder_hidden, mask)
        logits = model.lm_logits(hidden)
    for name, got in [("encoder", encoder_hidden), ("model", hidden), ("generation", logits)]:
        expected = torch.load(reference / f"t5.small.{name}.output.pt", weights_only=True)
        assert max_diff(got, expected) <= 1e-4, f"{name}: max diff {max_diff(got, expected):.3g}"
