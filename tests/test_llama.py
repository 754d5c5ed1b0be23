"""Our hand-written Llama against transformers' LlamaForCausalLM, on tiny random checkpoints.

conftest.make_hf_llama writes a random 2-layer model (weights drawn larger than the
N(0, 0.02) init so that greedy decoding does not repeat one token) and we load the
same folder. The real Llama configs in the data folder are mapped and built on the
meta device (shapes only), and their parameter counts compared with transformers'.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_hf_llama
from safetensors.torch import load_file, save_file

from minidept import load_model
from minidept.io.checkpoint import CheckpointError, load_folder, save_pretrained
from minidept.models.llama import Llama, LlamaConfig, rope_frequencies

TOL = 1e-4
VOCAB, EOS = 128, 127
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CONFIGS = {                                         # conftest's default: 4 query heads, 2 key/value heads
    "multi_head": {"num_key_value_heads": 4},
    "grouped_query": {},
    "llama3_rope": {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0},
    "linear_rope": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "tied": {"tie_word_embeddings": True},
    "biases_head_dim": {"attention_bias": True, "mlp_bias": True, "head_dim": 16},
}


def right_padded_batch(lengths, T, seed=0, pad=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB - 1, (len(lengths), T), generator=gen)   # never eos inside a prompt
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """{config name: (transformers model, our model)} for every config of CONFIGS."""
    built = {}
    for name, overrides in CONFIGS.items():
        folder = tmp_path_factory.mktemp(name)
        built[name] = make_hf_llama(folder, seed=1, **overrides), load_folder(folder)
    return built


# --------------------------------------------------------------------------- #
# Parity with transformers
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_greedy_tokens_match_transformers(pairs, name):
    hf, ours = pairs[name]
    lengths = [40, 23, 5, 1]                        # past the llama3 config's original context of 16
    ids, mask = right_padded_batch(lengths, T=40)
    with torch.no_grad():
        ours_logits, hf_logits = ours(ids, mask), hf(input_ids=ids, attention_mask=mask).logits
    diff = (ours_logits - hf_logits)[mask.bool()].abs().max().item()
    print(f"{name}: max |logit diff| = {diff:.2e}")
    assert diff <= TOL, f"max |logit diff| {diff:.2e} > {TOL} for {name}"
    generated = ours.generate(ids, mask, max_new_tokens=10)   # right-padded batch, one call
    for row in (0, 2):                                         # against transformers on each row alone
        n = lengths[row]
        expected = hf.generate(ids[row:row + 1, :n], attention_mask=mask[row:row + 1, :n], do_sample=False,
                               num_beams=1, max_new_tokens=10, pad_token_id=EOS)[0, n:]
        assert generated[row, :len(expected)].tolist() == expected.tolist(), (name, row)
    assert len(set(generated[0].tolist())) > 2, "greedy decoding should not just repeat a token"


def test_rope_scaling_changes_the_frequencies_as_specified():
    base = LlamaConfig(hidden_size=64, num_attention_heads=4)
    plain = rope_frequencies(base)
    assert torch.allclose(rope_frequencies(LlamaConfig(hidden_size=64, num_attention_heads=4,
                                                       rope_scaling={"rope_type": "linear", "factor": 4.0})),
                          plain / 4)
    scaled = rope_frequencies(LlamaConfig(hidden_size=64, num_attention_heads=4, rope_scaling=LLAMA3_ROPE))
    wavelength = 2 * torch.pi / plain
    assert torch.equal(scaled[wavelength < 16 / 4], plain[wavelength < 16 / 4])          # short waves kept
    assert torch.allclose(scaled[wavelength > 16], plain[wavelength > 16] / 8)             # long ones slowed 8x
    middle = (wavelength > 4) & (wavelength < 16)
    assert middle.any() and ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8)).all()


def test_cache_prefix_then_rest_equals_one_pass(pairs):
    _, ours = pairs["grouped_query"]
    ids, mask = right_padded_batch([10, 10, 7], T=10, seed=5)
    with torch.no_grad():
        full, _ = ours.hidden_states(ids, mask)
        _, past = ours.hidden_states(ids[:, :4], mask[:, :4], use_cache=True)
        rest, _ = ours.hidden_states(ids[:, 4:], mask, past_key_values=past)
    assert past[0][0].shape == (3, 2, 4, 8)           # (B, H_kv, P, head_dim): the cache of 2 key/value heads
    diff = (rest - full[:, 4:])[mask[:, 4:].bool()].abs().max().item()
    assert diff <= 1e-5, f"cached run differs from one pass by {diff:.2e}"


@pytest.mark.parametrize("fast", [False, True])
def test_grouped_query_attention_equals_repeated_key_value_heads(fast):
    """layers.attention with 2 key/value heads for 4 query heads: SDPA's grouped path, and in CPU training with
    dropout SDPA or the fast path's written-out one, equal attention over each key/value head repeated for its group."""
    from minidept.models.layers import attention
    from minidept.run import fastpath

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    with fastpath.switched(fast):
        repeated = attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
        assert torch.allclose(attention(q, k, v), repeated, atol=1e-6)
        torch.manual_seed(0)
        dropped = attention(q, k, v, dropout_p=0.5)                # training: masks drawn, heads repeated
        torch.manual_seed(0)
        again = attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), dropout_p=0.5)
    assert dropped.shape == (2, 4, 5, 8) and torch.allclose(dropped, again, atol=1e-6)
    assert not torch.allclose(dropped, attention(q, k, v), atol=1e-3)   # dropout did act


def test_backbone_interface(pairs):
    _, ours = pairs["grouped_query"]
    assert (ours.model_type, ours.is_encoder_decoder, ours.d_model, ours.context_length) == ("llama", False, 32, 128)
    assert ours.get_input_embeddings() is ours.embed_tokens and ours.config.eos_token_id == EOS
    _, tied = pairs["tied"]
    assert not hasattr(tied, "lm_head")               # the head is embed_tokens itself
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        ours.hidden_states()
    with pytest.raises(ValueError, match="position_ids has shape"):
        ours.hidden_states(torch.ones(1, 3, dtype=torch.long), position_ids=torch.arange(4)[None])


# --------------------------------------------------------------------------- #
# Configs: every real Llama config maps; what we cannot honour is refused by name
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", ["llama-2-7b", "llama-2-13b", "tinyllama-1.1b", "llama-3.2-1b"])
def test_real_configs_map_and_build_with_transformers_parameter_count(data_dir, name):
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

    hf_config = json.loads((data_dir / "configs" / f"{name}.config.json").read_text())
    config = LlamaConfig.from_hf_config(hf_config)
    assert config.hidden_size == hf_config["hidden_size"] and config.vocab_size == hf_config["vocab_size"]
    assert config.num_key_value_heads == hf_config["num_key_value_heads"]
    assert config.tie_word_embeddings == hf_config["tie_word_embeddings"]
    assert (config.rope_scaling or {}).get("rope_type") == (hf_config["rope_scaling"] or {}).get("rope_type")
    with torch.device("meta"):
        ours = sum(p.numel() for p in Llama(config).parameters())
        theirs = sum(p.numel() for p in LlamaForCausalLM(HFConfig(**hf_config)).parameters())
    assert ours == theirs, (name, ours, theirs)
    if name == "llama-2-7b":
        assert ours == 6_738_415_616 and config.max_position_embeddings == 4096


@pytest.mark.parametrize("field, value, pattern", [
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}, "rope_scaling type 'dynamic' is not supported"),
    ("rope_scaling", {"type": "yarn", "factor": 2.0}, "rope_scaling type 'yarn' is not supported"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "needs low_freq_factor"),
    ("hidden_act", "gelu", "hidden_act='gelu' is not supported"),
    ("sliding_window", 4096, "sliding_window=4096"),
    ("eos_token_id", [1, 2], "several end tokens"),
    ("model_type", "gemma", "model_type='gemma'"),
    ("num_key_value_heads", 3, "not a multiple of num_key_value_heads=3"),
    ("num_attention_heads", 0, "'num_attention_heads' must be a positive integer, got 0"),
    ("hidden_size", "64", "'hidden_size' must be a positive integer, got '64'"),
    ("rms_norm_eps", -1.0, "'rms_norm_eps' must be a number > 0"),
    ("attention_dropout", 1.0, r"'attention_dropout' must be a number in \[0, 1\)"),
    ("rope_theta", "x", "'rope_theta' must be a number > 0"),
    ("rope_scaling", {"rope_type": "linear", "factor": "2"}, r"needs factor \(numbers > 0\)"),
    ("rope_scaling", [2.0], "'rope_scaling' must be null or an object"),
])
def test_what_cannot_be_honoured_is_refused_by_name(field, value, pattern):
    d = {**LlamaConfig(hidden_size=64, num_attention_heads=4).to_hf_config(), field: value}
    with pytest.raises(ValueError, match=pattern):
        LlamaConfig.from_hf_config(d)


def test_mistral_without_sliding_window_and_transformers_5_rope_parameters_load():
    mistral = {"model_type": "mistral", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": None,
               "rope_theta": 1e6, "head_dim": None}
    config = LlamaConfig.from_hf_config(mistral)
    assert (config.rope_theta, config.head_dim, config.num_key_value_heads) == (1e6, 16, 1)
    v5 = {**mistral, "model_type": "llama", "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                 "rope_theta": 500.0}}
    assert LlamaConfig.from_hf_config(v5).rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert LlamaConfig.from_hf_config(v5).rope_theta == 500.0


# --------------------------------------------------------------------------- #
# Loading and saving
# --------------------------------------------------------------------------- #

def test_save_pretrained_round_trips_through_both_loaders(tmp_path, pairs):
    from transformers import LlamaForCausalLM

    _, ours = pairs["llama3_rope"]
    save_pretrained(ours, tmp_path)
    assert "model.layers.0.self_attn.k_proj.weight" in load_file(tmp_path / "model.safetensors")
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    again = load_model(tmp_path)
    assert isinstance(again, Llama) and again.config == ours.config
    ids, mask = right_padded_batch([9, 4], T=9)
    with torch.no_grad():
        assert torch.equal(again(ids, mask), ours(ids, mask))
        assert (hf(input_ids=ids, attention_mask=mask).logits - ours(ids, mask))[mask.bool()].abs().max() <= TOL


def test_loading_is_strict_skips_old_rope_buffers_and_checks_a_tied_head(tmp_path):
    make_hf_llama(tmp_path, tie_word_embeddings=True)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)     # saved by older conversions
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()       # a tied head written out
    save_file(state, tmp_path / "model.safetensors")
    model = load_folder(tmp_path, dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight differs from embed_tokens.weight"):
        load_folder(tmp_path)
    del state["lm_head.weight"], state["model.norm.weight"]
    state["model.layers.0.mlp.extra.weight"] = torch.ones(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing.*norm\.weight(.|\n)*unexpected.*layers\.0\.mlp\.extra"):
        load_folder(tmp_path)


def test_sharded_checkpoint_loads(tmp_path, pairs):
    _, ours = pairs["grouped_query"]
    save_pretrained(ours, tmp_path / "one")
    state = load_file(tmp_path / "one" / "model.safetensors")
    shards = {name: {} for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")}
    for i, (key, t) in enumerate(sorted(state.items())):
        list(shards.values())[i % 2][key] = t
    (tmp_path / "two").mkdir()
    for name, tensors in shards.items():
        save_file(tensors, tmp_path / "two" / name)
    index = {"weight_map": {key: name for name, tensors in shards.items() for key in tensors}}
    (tmp_path / "two" / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(tmp_path / "one" / "config.json", tmp_path / "two")
    ids, _ = right_padded_batch([6], T=6)
    with torch.no_grad():
        assert torch.equal(load_folder(tmp_path / "two")(ids), ours(ids))
