"""minidept.run.fastpath: the dropout and training-time attention of CPU training, switched on in
`minidept.models.layers` by `enable()`. Same distribution as PyTorch's, same outputs, same gradients."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidept.models.layers import attention, dropout
from minidept.run import fastpath
from minidept.run.fastpath import drop_mask


@pytest.fixture
def fast():
    """The fast path on for one test, then back to whatever was set before."""
    with fastpath.switched(True):
        yield


def saved_tensors(fn):
    """Run fn() and return every tensor autograd keeps for its backward pass."""
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, kept


def test_dropout_is_identity_in_eval_and_at_zero(fast):
    x = torch.randn(4, 5)
    assert dropout(x, 0.3, training=False) is x
    assert torch.equal(dropout(x, 0.0, training=True), x)
    torch.manual_seed(0)
    assert not torch.equal(dropout(x, 0.3, training=True), x)      # and it does act in training


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=st.floats(0.05, 0.9), seed=st.integers(0, 2**31 - 1))
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(p, seed, fast):
    torch.manual_seed(seed)
    x = torch.rand(200_000) + 0.5  # no zeros of its own
    x.requires_grad_(True)
    y = dropout(x, p, training=True)
    kept = y != 0
    n = x.numel()
    # the dropped fraction is Binomial(n, p) / n: 6 standard deviations of slack
    assert abs((~kept).float().mean().item() - p) < 6 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept], x.detach()[kept] * (1 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.5, 1 / 3])
def test_drop_mask_lanes_are_independent_and_p_is_rounded_to_2_pow_16(p):
    """Four 16-bit numbers come from each 64-bit draw: neighbours (same draw) and elements
    four apart (next draw) must be independent, and the rate is round(p * 65536) / 65536."""
    torch.manual_seed(0)
    n = 400_000
    drop = drop_mask((n,), p, "cpu").double()
    rate = round(p * 65536) / 65536
    sd = math.sqrt(rate * (1 - rate) / n)
    assert abs(drop.mean().item() - rate) < 6 * sd
    for lag in (1, 2, 3, 4):  # within one 64-bit draw (1-3) and across draws (4)
        both = (drop[:-lag] * drop[lag:]).mean().item()
        assert abs(both - rate ** 2) < 6 * math.sqrt(rate ** 2 * (1 - rate ** 2) / (n - lag)), (lag, both)
    assert drop_mask((3, 5, 7), p, "cpu").shape == (3, 5, 7)
    assert not drop_mask((1000,), 0.0, "cpu").any()


def test_dropout_backward_keeps_only_a_boolean_mask(fast):
    x = torch.randn(64, 64, requires_grad=True)
    _, kept = saved_tensors(lambda: dropout(x, 0.1, training=True))
    assert kept and all(t.dtype == torch.bool for t in kept), [t.dtype for t in kept]


def reference_attention(q, k, v, mask, scale, is_causal, keep, p):
    """softmax(q k^T * scale + mask) * keep / (1 - p) @ v, step by step in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) * scale
    T, S = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return (scores.softmax(-1) * keep / (1 - p)) @ v


@pytest.mark.parametrize("case", ["none", "additive", "boolean", "causal"])
def test_training_attention_is_softmax_dropout_matmul(case, fast):
    torch.manual_seed(0)
    B, H, T, S, d, p = 2, 3, 5, 7, 4, 0.25
    q, k, v = torch.randn(B, H, T, d), torch.randn(B, H, S, d), torch.randn(B, H, S, d)
    mask, scale, is_causal = None, 1 / math.sqrt(d), False
    if case == "additive":  # T5: position bias plus -inf-like padding, scale 1
        mask, scale = torch.randn(1, H, T, S), 1.0
        mask[..., -2:] = torch.finfo(torch.float32).min
    elif case == "boolean":  # GPT-2 with padding: True = attend
        mask = torch.rand(B, 1, T, S) > 0.3
        mask[..., 0] = True
    elif case == "causal":
        k, v = k[:, :, :T], v[:, :, :T]
        is_causal = True
    torch.manual_seed(1)
    out = attention(q, k, v, mask, scale=None if case != "additive" else scale, is_causal=is_causal, dropout_p=p)
    torch.manual_seed(1)  # the same draw: the mask comes from one drop_mask over the (B, H, T, S) probabilities
    keep = ~drop_mask((B, H, T, k.shape[2]), p, "cpu")
    expected = reference_attention(q, k, v, mask, scale, is_causal, keep, p)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_training_attention_is_unbiased(fast):
    """Averaged over many draws, attention with dropout approaches attention without it."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    mask = torch.randn(1, 2, 3, 6)
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    draws = torch.stack([attention(q, k, v, mask, dropout_p=0.3) for _ in range(20_000)])
    # each entry is a mean of 20,000 draws; their standard error is about 0.01 here
    assert (draws.mean(0) - exact).abs().max() < 0.03
    assert (draws.std(0) > 0.05).all()  # dropout did act


def test_training_attention_keeps_one_boolean_mask_not_a_float_one(fast):
    """SDPA's CPU math path keeps the probabilities, a float dropout mask and the dropped
    probabilities; the written-out path keeps the mask as booleans (1 byte instead of 4)."""
    B, H, T, d = 2, 3, 16, 8
    q, k, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))
    _, kept = saved_tensors(lambda: attention(q, k, v, is_causal=True, dropout_p=0.1))
    full = [t for t in kept if t.numel() == B * H * T * T]  # matmul keeps a (B * H, T, T) view
    assert sum(t.dtype == torch.bool for t in full) == 1
    assert sum(t.is_floating_point() for t in full) == 2  # softmax output, dropped probabilities


def test_inference_attention_is_sdpa(fast):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.randn(2, 1, 4, 6)
    assert torch.equal(attention(q, k, v, mask, scale=1.0), F.scaled_dot_product_attention(q, k, v, mask, scale=1.0))


def test_dropout_keeps_the_dtype_and_the_rate_in_bfloat16(fast):
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=torch.bfloat16)
    y = dropout(x, 0.1, training=True)
    assert y.dtype == torch.bfloat16
    assert abs((y == 0).float().mean().item() - 0.1) < 6 * math.sqrt(0.1 * 0.9 / x.numel())
    q = torch.randn(2, 2, 8, 4, dtype=torch.bfloat16)
    assert attention(q, q, q, is_causal=True, dropout_p=0.1).dtype == torch.bfloat16
