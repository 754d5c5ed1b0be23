"""Dropout and attention, shared by `t5.py` and `gpt2.py`.

Both are the textbook operations. They are written out here, instead of calling
`nn.Dropout` and `F.scaled_dot_product_attention` everywhere, for one measured
reason: in a CPU training step of T5 or GPT-2, drawing dropout masks is the
largest cost after the matrix products. PyTorch's dropout draws one float per
element with `bernoulli_` and keeps a 4-byte float mask for the backward pass,
and SDPA has no fused CPU kernel once dropout is on, so it runs that same dropout
on the full (B, H, T, S) attention probabilities, which hold most of the dropped
elements. `drop_mask` below draws 16-bit random numbers, four from each 64-bit
draw, and keeps the mask as booleans (1 byte): the same Bernoulli distribution
(with p rounded to a multiple of 2^-16) at a quarter of the cost of one float
draw per element (docs/benchmarks.md). Everywhere else (inference, GPU
training) dropout is PyTorch's and `attention` is plain SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":  # GPUs have fused dropout kernels: nothing to gain
        return F.dropout(x, p, training=True)
    drop = drop_mask(x.shape, p, x.device)  # bool, 1 byte per element: all that backward keeps
    return torch.where(drop, 0.0, x) * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """`nn.Dropout` with the cheaper mask above; active in train mode only."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q, k, v, mask=None, *, scale: float | None = None, is_causal: bool = False,
              dropout_p: float = 0.0):
    """softmax(q @ k^T * scale + mask) @ v, with dropout on the probabilities when dropout_p > 0.

    q (B, H, T, d); k, v (B, H, S, d); mask broadcastable to (B, H, T, S), either
    additive (float) or boolean (True = attend); is_causal: query i sees keys 0..i
    (T == S). scale defaults to 1 / sqrt(d). Returns (B, H, T, d).
    """
    if dropout_p == 0.0 or q.device.type != "cpu":  # SDPA's fused kernels apply
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=dropout_p, scale=scale)
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
