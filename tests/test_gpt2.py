"""Our hand-written GPT-2 against transformers' GPT2LMHeadModel, on tiny random checkpoints.

Everything is offline: conftest.make_hf_gpt2 writes a random 2-layer model, and we
load the same file. Weights are redrawn larger than GPT-2's N(0, 0.02) init so
greedy decoding does not just repeat one token and the comparisons mean something.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_hf_gpt2
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from minidept.models.gpt2 import ACTIVATIONS, GPT2, GPT2Config
from minidept.io.checkpoint import CheckpointError, load_folder, save_pretrained

TOL = 1e-4
VOCAB, EOS = 128, 127


def lively_gpt2(folder, seed=0, **overrides):
    """A tiny random GPT2LMHeadModel saved to `folder`, with weights ~N(0, 0.3) (layer-norm gains ~1)."""
    hf = make_hf_gpt2(folder, seed, **overrides)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # lm_head.weight is wte's Parameter: redrawn once
            gain = name.endswith("weight") and (".ln_" in name or "ln_f" in name)
            p.copy_(float(gain) + 0.3 * torch.randn(p.shape, generator=gen))
    hf.save_pretrained(folder, safe_serialization=True)
    return hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, our model, folder) for the default tiny config."""
    folder = tmp_path_factory.mktemp("gpt2")
    hf = lively_gpt2(folder)
    return hf, load_folder(folder), folder


def right_padded_batch(lengths, T, seed=0, pad=0):
    """Random ids (B, T) with row b real for its first lengths[b] positions, and the mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 1, (len(lengths), T), generator=gen)  # never EOS inside a prompt
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


def max_diff_at(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


def hf_greedy(hf, ids, max_new_tokens=20):
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                      max_new_tokens=max_new_tokens, pad_token_id=hf.config.eos_token_id)
    return out[:, ids.shape[1]:]


# --------------------------------------------------------------------------- #
# Parity with transformers
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("overrides", [
    {},                                   # n_inner None -> 4 * n_embd, gelu_new
    {"n_inner": 48},
    {"activation_function": "relu"},
    {"activation_function": "gelu_new", "n_inner": 80, "layer_norm_epsilon": 1e-3},
    {"activation_function": "gelu"},
], ids=["default", "n_inner", "relu", "gelu_new_eps", "gelu"])
def test_logits_match_transformers_on_right_padded_batch(tmp_path, overrides):
    hf = lively_gpt2(tmp_path, seed=1, **overrides)
    ours = load_folder(tmp_path)
    ids, mask = right_padded_batch([12, 7, 3, 1], T=12)
    with torch.no_grad():
        diff = max_diff_at(ours(ids, mask), hf(input_ids=ids, attention_mask=mask).logits, mask)
    print(f"{overrides}: max |logit diff| = {diff:.2e}")
    assert diff <= TOL, f"max |logit diff| {diff:.2e} > {TOL} for {overrides}"


def test_every_activation_matches_transformers():
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    for name, fn in ACTIVATIONS.items():
        diff = (fn(x) - ACT2FN[name](x)).abs().max().item()
        assert diff <= 1e-5, f"activation {name!r}: max diff {diff:.2e}"


def test_inputs_embeds_equal_input_ids(pair):
    _, ours, _ = pair
    ids, mask = right_padded_batch([9, 5], T=9)
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask)
        b = ours(inputs_embeds=ours.get_input_embeddings()(ids), attention_mask=mask)
    assert torch.equal(a, b)


def test_explicit_position_ids_match_transformers(pair):
    hf, ours, _ = pair
    ids, _ = right_padded_batch([10, 10], T=10, seed=3)
    position_ids = torch.stack([torch.arange(5, 15), torch.tensor([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])])
    with torch.no_grad():
        ours_logits = ours(ids, position_ids=position_ids)
        diff = (ours_logits - hf(input_ids=ids, position_ids=position_ids).logits).abs().max().item()
        default_diff = (ours_logits - ours(ids)).abs().max().item()
    assert diff <= TOL, f"max |logit diff| {diff:.2e} with explicit position_ids"
    assert default_diff > 1e-3, "position_ids were ignored"


def test_left_padding_with_position_ids_matches_transformers(pair):
    hf, ours, _ = pair
    ids, _ = right_padded_batch([8, 8], T=8, seed=4)
    mask = torch.tensor([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]])
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(ids, mask, position_ids)
        b = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    diff = max_diff_at(a, b, mask)
    assert diff <= TOL, f"max |logit diff| {diff:.2e} on a left-padded batch"
    assert not a.isnan().any(), "pad queries with nothing to attend to must not produce NaN"


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 10), min_size=1, max_size=4), pad=st.integers(0, VOCAB - 1))
def test_pads_do_not_change_real_outputs(pair, lengths, pad):
    _, ours, _ = pair
    ids, mask = right_padded_batch(lengths, T=10, seed=sum(lengths), pad=pad)
    with torch.no_grad():
        batch = ours(ids, mask)
        for b, n in enumerate(lengths):
            alone = ours(ids[b:b + 1, :n])
            diff = (batch[b, :n] - alone[0]).abs().max().item()
            assert diff <= 1e-5, f"row {b} (length {n}) changed by padding: {diff:.2e}"


# --------------------------------------------------------------------------- #
# Key/value cache
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "padding_mask"])
@pytest.mark.parametrize("split", [1, 4, 9])
def test_cache_prefix_then_rest_equals_one_pass(pair, padded, split):
    _, ours, _ = pair
    T = 10
    ids, mask = right_padded_batch([10, 10, 10], T=T, seed=5)
    if padded:  # row 1 left-padded (pads in the cached prefix), row 2 right-padded
        mask = torch.tensor([[1] * T, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 7 + [0] * 3])
    else:
        mask = None
    with torch.no_grad():
        full, _ = ours.hidden_states(ids, mask)
        _, past = ours.hidden_states(ids[:, :split], None if mask is None else mask[:, :split], use_cache=True)
        assert len(past) == ours.config.n_layer and past[0][0].shape == (3, 4, split, 8)
        rest, new_past = ours.hidden_states(ids[:, split:], mask, past_key_values=past, use_cache=True)
    assert new_past[0][0].shape[2] == T
    real = torch.ones(3, T, dtype=torch.bool) if mask is None else mask.bool()
    diff = (rest - full[:, split:])[real[:, split:]].abs().max().item()
    assert diff <= 1e-5, f"cached run differs from one pass by {diff:.2e}"


# --------------------------------------------------------------------------- #
# Greedy generation
# --------------------------------------------------------------------------- #

def test_generate_matches_transformers_without_eos(pair):
    hf, ours, _ = pair
    ids, _ = right_padded_batch([6, 6, 6], T=6, seed=6)
    expected = hf_greedy(hf, ids)
    got = ours.generate(ids, max_new_tokens=20)
    assert expected.shape == (3, 20) and not (expected == EOS).any(), "eos unexpectedly produced"
    assert torch.equal(got, expected), f"\nours {got}\nhf   {expected}"


@pytest.mark.parametrize("finishing", ["one_row", "all_rows"])
def test_generate_matches_transformers_when_eos_is_hit(tmp_path, pair, finishing):
    hf, ours, _ = pair
    ids, _ = right_padded_batch([6, 6], T=6, seed=7)
    # Declare a token that greedy decoding produces the end-of-sequence token, then compare.
    free = ours.generate(ids, max_new_tokens=20)
    row0, row1 = set(free[0, :10].tolist()), set(free[1].tolist())
    eos = min(row0 & row1) if finishing == "all_rows" else min(row0 - row1)
    hf_eos = lively_gpt2(tmp_path, eos_token_id=eos, bos_token_id=eos)
    ours_eos = load_folder(tmp_path)
    expected = hf_greedy(hf_eos, ids)
    got = ours_eos.generate(ids, max_new_tokens=20)
    if finishing == "all_rows":
        assert expected.shape[1] < 20 and (expected[:, -1] == eos).all(), expected
    else:
        assert expected.shape[1] == 20 and expected[0, -1] == eos and not (expected[1] == eos).any(), expected
    assert torch.equal(got, expected), f"\nours {got}\nhf   {expected}"


@pytest.mark.parametrize("eos_step", [None, 2], ids=["no_eos", "eos_hit"])
def test_generate_right_padded_rows_equal_generating_each_alone(tmp_path, eos_step):
    lengths = [7, 3, 5, 1]
    ids, mask = right_padded_batch(lengths, T=7, seed=8, pad=EOS)
    lively_gpt2(tmp_path)
    ours = load_folder(tmp_path)
    if eos_step is not None:  # row 2 stops at eos_step; other rows may or may not
        eos = ours.generate(ids[2:3, :lengths[2]], max_new_tokens=20)[0, eos_step].item()
        lively_gpt2(tmp_path, eos_token_id=eos, bos_token_id=eos)
        ours = load_folder(tmp_path)
    eos = ours.config.eos_token_id
    batch = ours.generate(ids, mask, max_new_tokens=20)
    for b, n in enumerate(lengths):
        alone = ours.generate(ids[b:b + 1, :n], max_new_tokens=20)[0]
        alone = torch.cat([alone, alone.new_full((batch.shape[1] - len(alone),), eos)])  # eos-filled after stop
        assert torch.equal(batch[b], alone), f"row {b}: batch {batch[b]} vs alone {alone}"
    if eos_step is not None:
        assert (batch[2] == eos).any()


def test_generate_continues_a_cached_prefix(pair):
    """A cached prefix passed as past_key_values (as a soft prompt will be) works like prepending it."""
    _, ours, _ = pair
    prefix = torch.tensor([[5, 9, 14]]).expand(3, 3)
    lengths = [6, 2, 4]
    ids, mask = right_padded_batch(lengths, T=6, seed=9)
    with torch.no_grad():
        _, past = ours.hidden_states(prefix, use_cache=True)
    full_mask = torch.cat([torch.ones(3, 3, dtype=torch.long), mask], dim=1)
    batch = ours.generate(ids, full_mask, max_new_tokens=10, past_key_values=past)
    for b, n in enumerate(lengths):
        alone = ours.generate(torch.cat([prefix[b], ids[b, :n]])[None], max_new_tokens=10)[0]
        assert torch.equal(batch[b, :len(alone)], alone), f"row {b}: {batch[b]} vs {alone}"


def test_generate_from_inputs_embeds_equals_input_ids(pair):
    _, ours, _ = pair
    ids, mask = right_padded_batch([5, 3], T=5, seed=10)
    a = ours.generate(ids, mask, max_new_tokens=8)
    b = ours.generate(inputs_embeds=ours.wte(ids).detach(), attention_mask=mask, max_new_tokens=8)
    assert torch.equal(a, b)


def test_generate_zero_tokens(pair):
    _, ours, _ = pair
    assert ours.generate(torch.tensor([[1, 2]]), max_new_tokens=0).shape == (1, 0)


# --------------------------------------------------------------------------- #
# Saving and loading
# --------------------------------------------------------------------------- #

def test_save_pretrained_round_trips_through_both_loaders(tmp_path, pair):
    from transformers import GPT2LMHeadModel

    _, ours, _ = pair
    save_pretrained(ours, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]
    keys = load_file(tmp_path / "saved" / "model.safetensors")
    assert all(k.startswith("transformer.") for k in keys) and "lm_head.weight" not in keys
    assert keys["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D layout (in, out)
    again = load_folder(tmp_path / "saved")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "saved").eval()
    ids, mask = right_padded_batch([8, 4], T=8, seed=11)
    with torch.no_grad():
        expected = ours(ids, mask)
        assert torch.equal(again(ids, mask), expected)
        diff = max_diff_at(hf(input_ids=ids, attention_mask=mask).logits, expected, mask)
    assert diff <= TOL, f"transformers on our saved model: max |logit diff| {diff:.2e}"
    assert again.config == ours.config


def test_loads_bare_keys_with_mask_buffers_and_tied_head(tmp_path, pair):
    """The original `gpt2` Hub checkpoint: keys "h.0...", attn.bias buffers, an lm_head copy."""
    _, ours, folder = pair
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(folder / "model.safetensors").items()}
    n = ours.config.n_positions
    for i in range(ours.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    (tmp_path / "bare").mkdir()
    save_file(tensors, tmp_path / "bare" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "bare" / "config.json").write_text((folder / "config.json").read_text())
    bare = load_folder(tmp_path / "bare")
    ids, mask = right_padded_batch([6, 2], T=6, seed=12)
    with torch.no_grad():
        assert torch.equal(bare(ids, mask), ours(ids, mask))


def test_backbone_interface(pair):
    """What minidept.prompted relies on: family, width, context, hidden states and the head apart."""
    _, ours, _ = pair
    assert (ours.model_type, ours.is_encoder_decoder, ours.d_model, ours.context_length) == ("gpt2", False, 32, 64)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        hidden, past = ours.hidden_states(ids)
        assert past is None and hidden.shape == (2, 3, 32)
        assert torch.equal(ours.lm_logits(hidden), ours(ids))


def test_from_pretrained_dtype_and_tied_head(pair):
    _, _, folder = pair
    model = load_folder(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.requires_grad for p in model.parameters())
    assert not model.training
    names = [name for name, _ in model.named_parameters()]
    assert "wte.weight" in names and not any("lm_head" in name for name in names)
    logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, VOCAB) and logits.dtype == torch.bfloat16


# --------------------------------------------------------------------------- #
# Bad input: each a clear message
# --------------------------------------------------------------------------- #

def edit_config(folder, **changes):
    file = folder / "config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def edit_weights(folder, change):
    file = folder / "model.safetensors"
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.fixture
def checkpoint(tmp_path):
    make_hf_gpt2(tmp_path)
    return tmp_path


@pytest.mark.parametrize("field, value", [
    ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
    ("scale_attn_weights", False), ("add_cross_attention", True), ("tie_word_embeddings", False),
])
def test_unsupported_config_option_is_rejected(checkpoint, field, value):
    edit_config(checkpoint, **{field: value})
    with pytest.raises(CheckpointError, match=rf"config.json: GPT-2 config: {field}={value!r} is not supported"):
        load_folder(checkpoint)


def test_unknown_activation_is_rejected(checkpoint):
    edit_config(checkpoint, activation_function="swiglu")
    with pytest.raises(CheckpointError) as error:
        load_folder(checkpoint)
    message = str(error.value)
    assert "activation_function='swiglu'" in message and "gelu_new" in message and "relu" in message, message


@pytest.mark.parametrize("field, value, wanted", [
    ("n_head", 0, "a positive integer"), ("n_positions", -5, "a positive integer"),
    ("n_embd", "32", "a positive integer"), ("n_embd", 1e9, "a positive integer"),
    ("layer_norm_epsilon", "x", "a number > 0"), ("resid_pdrop", 2.0, r"a number in \[0, 1\)"),
    ("attn_pdrop", float("nan"), r"a number in \[0, 1\)"), ("eos_token_id", -1, "a non-negative integer or null"),
])
def test_a_bad_config_value_is_named_before_anything_is_built(checkpoint, field, value, wanted):
    edit_config(checkpoint, **{field: value})
    with pytest.raises(CheckpointError, match=rf"config.json: GPT-2 config field '{field}' must be {wanted}, got "):
        load_folder(checkpoint)


def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(checkpoint):
    edit_config(checkpoint, n_embd=2**20, n_head=1)   # 50 GB of parameters for a tiny checkpoint
    with pytest.raises(CheckpointError, match=r"describes a model of [\d,]+ parameters, but the weights hold "
                                              r"[\d,]+ values: check that config.json belongs to these weights"):
        load_folder(checkpoint)


def test_other_model_type_and_missing_field_are_rejected():
    with pytest.raises(ValueError, match="model_type='t5'"):
        GPT2Config.from_hf_config({"model_type": "t5"})
    with pytest.raises(ValueError, match="'n_head' is missing"):
        GPT2Config.from_hf_config({"vocab_size": 8, "n_positions": 8, "n_embd": 8, "n_layer": 1})


@pytest.mark.parametrize("change, pattern", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), r"missing \(not in the file\): h\.1\.mlp\.c_fc\.bias"),
    (lambda t: t.update({"transformer.h.0.attn.rotary": torch.zeros(3)}),
     r"unexpected \(not in the model\): h\.0\.attn\.rotary"),
    (lambda t: t.update({"transformer.wpe.weight": torch.zeros(60, 32)}),
     r"shape mismatch: wpe\.weight: \(60, 32\) in the file, \(64, 32\) in the model"),
    (lambda t: t.update({"transformer.h.0.attn.c_attn.weight": t["transformer.h.0.attn.c_attn.weight"].t().contiguous()}),
     r"(?s)h\.0\.attn\.c_attn\.weight: \(96, 32\) in the file, \(32, 96\) in the model"
     r".*\(Conv1D weights are stored \(in, out\), the transpose of nn\.Linear's\)"),
    (lambda t: t.update({"lm_head.weight": torch.zeros(128, 32)}), "lm_head.weight differs from wte.weight"),
], ids=["missing", "extra", "wrong_shape", "unflipped_conv1d", "untied_head"])
def test_checkpoint_that_does_not_fit_is_rejected(checkpoint, change, pattern):
    edit_weights(checkpoint, change)
    with pytest.raises(CheckpointError, match=pattern):
        load_folder(checkpoint)


def test_bad_call_arguments_are_rejected(pair):
    _, ours, _ = pair
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"expected \(B, n_past \+ T\) = \(1, 3\)"):
        ours(ids, attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="longer than the model's context n_positions=64"):
        ours(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        ours(ids, inputs_embeds=ours.wte(ids))
    with pytest.raises(ValueError, match="goes past the model's context"):
        ours.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
            ours.generate(ids, max_new_tokens=bad)


# --------------------------------------------------------------------------- #
# Dropout
# --------------------------------------------------------------------------- #

def test_dropout_active_in_train_mode_only():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4))
    assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0.1
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model.train()
    assert not torch.equal(model(ids), model(ids)), "dropout should make train-mode outputs differ"
    model.eval()
    assert torch.equal(model(ids), model(ids))
