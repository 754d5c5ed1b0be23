"""The fast path of CPU training: cheaper dropout masks, and attention written out to use them.

In a CPU training step, drawing dropout masks is the largest cost after the matrix
products: PyTorch draws one float per element and keeps a float mask for backward, on
the full (B, H, T, S) attention probabilities too. `drop_mask` draws 16-bit random
numbers, four from each 64-bit draw, and keeps booleans: the same Bernoulli distribution
(p rounded to a multiple of 2^-16) at about a quarter of the cost (docs/benchmarks.md).

`enable()` points `minidept.models.layers.FAST_PATH` here, so `layers.dropout` and
`layers.attention` use `dropout` and `attention` below in CPU training; `disable()` goes
back to PyTorch's own. The training command enables it; inference and GPUs never use it.
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch

from ..models import layers


def drop_mask(shape, p: float, device) -> torch.Tensor:
    """Booleans of `shape`, each True with probability p rounded to a multiple of 2^-16 (0.1 -> 0.1000061).

    One 64-bit random integer holds four independent 16-bit ones: u uniform on
    -32768..32767, and u < -32768 + round(p * 65536) for exactly round(p * 65536)
    of the 65536 values.
    """
    shape = torch.Size(shape)
    bits = torch.empty((shape.numel() + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)  # 64 bits each
    u = bits.view(torch.int16)[:shape.numel()].view(shape)
    return u < min(round(p * 65536), 65535) - 32768  # p < 1: at most 65535 of the 65536 values


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout in training (0 < p < 1): zero each element with probability p, scale the rest by 1 / (1 - p)."""
    drop = drop_mask(x.shape, p, x.device)  # bool, 1 byte per element: all that backward keeps
    return torch.where(drop, 0.0, x) * (1.0 / (1.0 - p))


def attention(q, k, v, mask=None, *, scale: float | None = None, is_causal: bool = False, dropout_p: float):
    """`layers.attention` with dropout_p > 0, written out so that its dropout mask is a `drop_mask`."""
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key/value head serves a group of query heads
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale if scale != 1.0 else q) @ k.transpose(-2, -1)  # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)  # (B, H, T, S)
    # dropout on the probabilities; the 1 / (1 - p) scale is applied to the smaller (B, H, T, d) output
    drop = drop_mask(probs.shape, dropout_p, probs.device)
    return (torch.where(drop, 0.0, probs) @ v) * (1.0 / (1.0 - dropout_p))  # (B, H, T, d)


def enable() -> None:
    """Use this file's dropout and attention in CPU training, in every model, from now on."""
    layers.FAST_PATH = SimpleNamespace(dropout=dropout, attention=attention)


def disable() -> None:
    """Back to PyTorch's dropout and SDPA everywhere."""
    layers.FAST_PATH = None


def enabled() -> bool:
    return layers.FAST_PATH is not None


@contextmanager
def switched(on: bool):
    """The fast path on (or off) inside a `with` block, then back to what it was."""
    saved = layers.FAST_PATH
    enable() if on else disable()
    try:
        yield
    finally:
        layers.FAST_PATH = saved
