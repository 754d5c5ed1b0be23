"""Dropout and attention, shared by `t5.py` and `gpt2.py`.

Both are the textbook operations. They are written out here, instead of calling
`nn.Dropout` and `F.scaled_dot_product_attention` everywhere, for one measured
reason: on CPU, PyTorch's dropout draws its mask with `bernoulli_` (about twice
the cost of `rand_like`, and single-threaded) and keeps a 4-byte float mask per
element for the backward pass, and SDPA has no fused CPU kernel once dropout is
on, so it runs that same dropout on the full (B, H, T, S) probabilities. In a
T5 or GPT-2 training step most of the dropped elements are those probabilities.
Drawing the mask with `rand_like(x) < p` and keeping it as booleans (1 byte)
gives the same distribution in less time and memory (docs/benchmarks.md).
Everywhere else (inference, GPU training) `attention` is plain SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    drop = torch.rand_like(x, dtype=torch.float32) < p  # bool, 1 byte per element: all that backward keeps
    return x.masked_fill(drop, 0.0) * (1.0 / (1.0 - p))


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
    drop = torch.rand_like(probs, dtype=torch.float32) < dropout_p  # float32 draws: exact p in bf16 too
    return (probs.masked_fill(drop, 0.0) @ v) * (1.0 / (1.0 - dropout_p))  # (B, H, T, d)
