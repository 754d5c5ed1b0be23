"""minidept.models.layers: dropout and attention (plain PyTorch unless the fast path is on), and the one
greedy loop of the decoder-only models. The fast path itself: tests/test_fastpath.py."""
import pytest
import torch
import torch.nn.functional as F

from minidept.models import layers
from minidept.models.gpt2 import GPT2, GPT2Config
from minidept.models.layers import attention, dropout, greedy_decode
from minidept.run import fastpath


@pytest.fixture
def plain():
    """The plain path, whatever an earlier test or import left switched on."""
    with fastpath.switched(False):
        yield


def test_plain_dropout_is_f_dropout(plain):
    x = torch.randn(4, 50)
    assert dropout(x, 0.3, training=False) is x
    assert torch.equal(dropout(x, 0.0, training=True), x)
    for p in (0.1, 0.5):
        torch.manual_seed(3)
        y = dropout(x, p, training=True)
        torch.manual_seed(3)
        assert torch.equal(y, F.dropout(x, p, training=True))
    assert not torch.equal(y, x)                               # it does act in training


@pytest.mark.parametrize("gqa", [False, True])
def test_plain_attention_is_sdpa_in_training_too(plain, gqa):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2 if gqa else 4, 7, 8), torch.randn(2, 2 if gqa else 4, 7, 8)
    mask = torch.randn(2, 1, 5, 7)
    assert torch.equal(attention(q, k, v, mask, scale=1.0),
                       F.scaled_dot_product_attention(q, k, v, mask, scale=1.0, enable_gqa=gqa))
    torch.manual_seed(1)
    out = attention(q, k, v, mask, dropout_p=0.25)
    torch.manual_seed(1)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.25, enable_gqa=gqa))


def test_enable_and_disable_switch_the_path(plain):
    """Enabled, CPU training draws its masks with the fast path's drop_mask; disabled, F.dropout again.
    Inference and p = 0 never take the fast path."""
    x = torch.randn(1000)
    q = torch.randn(1, 2, 6, 4)

    def drawn_by(p_fn):
        torch.manual_seed(5)
        return p_fn()

    fastpath.enable()
    assert fastpath.enabled() and layers.FAST_PATH is not None
    fast = drawn_by(lambda: dropout(x, 0.5, training=True))
    assert torch.equal(fast, drawn_by(lambda: fastpath.dropout(x, 0.5)))
    assert not torch.equal(fast, drawn_by(lambda: F.dropout(x, 0.5, training=True)))
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(drawn_by(lambda: attention(q, q, q, is_causal=True, dropout_p=0.5)),
                       drawn_by(lambda: fastpath.attention(q, q, q, is_causal=True, dropout_p=0.5)))
    assert torch.equal(attention(q, q, q, is_causal=True), F.scaled_dot_product_attention(q, q, q, is_causal=True))
    fastpath.disable()
    assert not fastpath.enabled() and layers.FAST_PATH is None
    assert torch.equal(drawn_by(lambda: dropout(x, 0.5, training=True)),
                       drawn_by(lambda: F.dropout(x, 0.5, training=True)))
    with fastpath.switched(True):                             # a with block, then back to what it was
        assert fastpath.enabled()
    assert not fastpath.enabled()


# --------------------------------------------------------------------------- #
# greedy_decode: the one decoder-only greedy loop
# --------------------------------------------------------------------------- #

def lively_gpt2(eos=None, seed=2):
    """A tiny random GPT-2 with large weights (greedy decoding then varies its tokens); no dropout."""
    config = GPT2Config(vocab_size=64, n_positions=40, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos)
    model = GPT2(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith("weight") and ("ln_" in name)
            p.copy_(float(gain) + 0.3 * torch.randn(p.shape, generator=generator))
    return model


def embed_with_position(model):
    """An `embed` that uses both arguments (as DePT's does): the token's embedding plus a position term."""
    return lambda token, position: model.wte(token) * 1.5 + 0.05 * position[..., None].float()


@torch.no_grad()
def naive_greedy(model, embeds, positions, n_new, embed, prefix=None):
    """One row, no cache: the whole sequence [prefix ; embeds ; generated] through the model at every step."""
    eos = model.config.eos_token_id
    x, pos = embeds[None], positions[None]
    if prefix is not None:
        x = torch.cat([model.wte(prefix)[None], x], dim=1)
        pos = torch.cat([torch.arange(len(prefix))[None], pos], dim=1)
    new = []
    for _ in range(n_new):
        hidden, _ = model.hidden_states(inputs_embeds=x, position_ids=pos)
        token = model.lm_logits(hidden[:, -1]).argmax(-1)          # (1,)
        new.append(token.item())
        if token.item() == eos:
            break
        next_pos = pos[:, -1:] + 1
        x = torch.cat([x, embed(token[:, None], next_pos)], dim=1)
        pos = torch.cat([pos, next_pos], dim=1)
    return new


def right_padded(model, lengths, seed=2):
    generator = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(0, 63, (len(lengths), T), generator=generator)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return model.wte(ids.masked_fill(mask == 0, 0)).detach(), mask


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_decode_equals_a_naive_greedy_loop(with_prefix, with_eos):
    lengths, n_new = [6, 2, 4], 8
    model = lively_gpt2()
    embed = embed_with_position(model)
    embeds, mask = right_padded(model, lengths)
    P, prefix, past = 0, None, None
    if with_prefix:                                                 # a cached prefix (a soft prompt, say)
        prefix = torch.tensor([5, 9, 14])
        P = len(prefix)
        with torch.no_grad():
            _, past = model.hidden_states(prefix[None], use_cache=True)
        past = [tuple(t.expand(3, -1, -1, -1) for t in layer) for layer in past]
        mask = torch.cat([torch.ones(3, P, dtype=torch.long), mask], dim=1)
    positions = torch.arange(P, P + embeds.shape[1]).expand(3, -1)
    if with_eos:   # declare the third token of row 1 to be eos (same weights): that row stops there
        free = greedy_decode(model, embeds, mask, positions, n_new, embed, past_key_values=past)
        model = lively_gpt2(eos=int(free[1, 2]))
        embed = embed_with_position(model)
    out = greedy_decode(model, embeds, mask, positions, n_new, embed, past_key_values=past)
    eos = model.config.eos_token_id
    for b, n in enumerate(lengths):
        expected = naive_greedy(model, embeds[b, :n], positions[b, :n], n_new, embed, prefix)
        assert out[b, :len(expected)].tolist() == expected, (b, out[b].tolist(), expected)
        assert out[b, len(expected):].tolist() == [eos] * (out.shape[1] - len(expected))   # then eos
    if with_eos:
        assert eos in out[1, :3].tolist()
        assert out.shape[1] == n_new or (out == eos).any(dim=1).all()   # stops early only once every row is done
    else:
        assert out.shape == (3, n_new)
    assert len({tuple(row) for row in out.tolist()}) > 1           # the rows really differ


def test_greedy_decode_checks_its_arguments():
    model = lively_gpt2()
    embeds, mask = right_padded(model, [4, 2])
    positions = torch.arange(4).expand(2, -1)
    embed = embed_with_position(model)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
            greedy_decode(model, embeds, mask, positions, bad, embed)
    assert greedy_decode(model, embeds, mask, positions, 0, embed).shape == (2, 0)
    with pytest.raises(ValueError, match="every row needs at least one real"):
        greedy_decode(model, embeds, mask * torch.tensor([[1], [0]]), positions, 3, embed)
    # row 0's last real position is 3: tokens 4.. are fed back, the last one never; 40 positions in all
    assert greedy_decode(model, embeds, mask, positions, 37, embed).shape[0] == 2
    with pytest.raises(ValueError, match="goes past the model's context of 40 positions"):
        greedy_decode(model, embeds, mask, positions, 38, embed)


def test_max_new_tokens_is_checked_in_one_place():
    """layers.check_max_new_tokens serves T5's loop and greedy_decode; no model writes the rule again."""
    import inspect

    from minidept.models import gpt2, llama, t5
    from minidept.models.layers import check_max_new_tokens

    for bad in (-1, 2.5, True, None):
        with pytest.raises(ValueError, match=f"max_new_tokens must be a non-negative integer, got {bad!r}"):
            check_max_new_tokens(bad)
    check_max_new_tokens(0)
    sources = [inspect.getsource(module) for module in (t5, gpt2, llama, layers)]
    assert sum(source.count("max_new_tokens must be") for source in sources) == 1
