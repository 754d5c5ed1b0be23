"""Dropout, attention, causal masks and greedy decoding, shared by the models (`t5.py`, `gpt2.py`, `llama.py`).

`dropout` and `attention` are PyTorch's own (`F.dropout`, SDPA). CPU training has a faster
dropout (and attention written out to use it) behind one switch, `FAST_PATH`: see
`minidept/run/fastpath.py`, which the training command enables. The models never change.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# What a model config's fields must be: (test, description) for `check_fields`.
_integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
POSITIVE_INT = (lambda v: _integer(v) and v >= 1, "a positive integer")
TOKEN_ID = (lambda v: _integer(v) and v >= 0, "a non-negative integer")
PROBABILITY = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
POSITIVE = (lambda v: _number(v) and v > 0, "a number > 0")
FLAG = (lambda v: isinstance(v, bool), "true or false")


def optional(rule):
    """`rule`, or None."""
    return lambda v: v is None or rule[0](v), rule[1] + " or null"


def check_fields(config, family: str, rules: dict) -> None:
    """Each field named in `rules` ({field: (test, what it must be)}) passes its test, else a ValueError naming
    the field and the value: a bad config.json fails when it is read, not deep inside a layer."""
    for name, (ok, wanted) in rules.items():
        if not ok(getattr(config, name)):
            raise ValueError(f"{family} config field {name!r} must be {wanted}, got {getattr(config, name)!r}")


# None: plain PyTorch everywhere. `minidept.run.fastpath.enable()` sets it to an object whose
# `dropout(x, p)` and `attention(q, k, v, mask, scale=, is_causal=, dropout_p=)` then replace
# PyTorch's in CPU training (where there is dropout to draw): same distribution, less time.
FAST_PATH = None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if FAST_PATH is not None and training and p > 0 and x.device.type == "cpu":
        return FAST_PATH.dropout(x, p)
    return F.dropout(x, p, training)


def attention(q, k, v, mask=None, *, scale: float | None = None, is_causal: bool = False,
              dropout_p: float = 0.0):
    """softmax(q @ k^T * scale + mask) @ v, with dropout on the probabilities when dropout_p > 0.

    q (B, H, T, d); k, v (B, H, S, d), or (B, H_kv, S, d) with fewer heads for grouped-query
    attention (query head h reads key/value head h // (H / H_kv)); mask broadcastable to
    (B, H, T, S), either additive (float) or boolean (True = attend); is_causal: query i sees
    keys 0..i (T == S). scale defaults to 1 / sqrt(d). Returns (B, H, T, d).
    """
    if FAST_PATH is not None and dropout_p > 0 and q.device.type == "cpu":
        return FAST_PATH.attention(q, k, v, mask, scale=scale, is_causal=is_causal, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def past_length(past_key_values, n_layers: int, batch: int) -> int:
    """n_past: the positions held by a decoder-only model's key/value cache (per layer (k, v), each
    (B, H, n_past, hd)). `P` elsewhere is the prompt; a cached prompt is one kind of past."""
    if past_key_values is None:
        return 0
    if len(past_key_values) != n_layers:
        raise ValueError(f"past_key_values has {len(past_key_values)} layers, the model {n_layers}")
    if past_key_values[0][0].shape[0] != batch:
        raise ValueError(f"past_key_values has batch size {past_key_values[0][0].shape[0]}, "
                         f"the input {batch}; expand the cache to the batch first")
    return past_key_values[0][0].shape[2]


def causal_mask(attention_mask, B: int, n_past: int, T: int, device):
    """(mask, is_causal) for SDPA over n_past cached and T new positions; mask is None or bool
    (B or 1, 1, T, n_past + T), True = attend. attention_mask (B, n_past + T): 1 = a real position."""
    if attention_mask is not None:
        if attention_mask.shape != (B, n_past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected (B, n_past + T) = "
                             f"({B}, {n_past + T}): one entry per past ({n_past}) and current ({T}) position")
        if attention_mask.all():  # no padding: same as no mask, and SDPA's causal fast path applies
            attention_mask = None
    if attention_mask is None and n_past == 0:
        return None, T > 1
    if attention_mask is None and T == 1:
        return None, False  # one new query may see every earlier position
    # Query i sits at absolute position n_past + i and may see keys 0 .. n_past + i (S = n_past + T keys).
    mask = torch.ones(T, n_past + T, dtype=torch.bool, device=device).tril(diagonal=n_past)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]  # (B, 1, T, n_past + T): pads are never seen
        # A pad query before any real token has nothing to attend to; let it see everything
        # instead of producing NaN. Its output is never used.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask, False


def check_max_new_tokens(max_new_tokens) -> None:
    """The one check of `generate`'s max_new_tokens (T5's loop and `greedy_decode`): a non-negative integer."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")


@torch.no_grad()
def greedy_decode(model, inputs_embeds, attention_mask, position_ids, max_new_tokens: int, embed,
                  past_key_values=None):
    """Greedy decoding for a decoder-only model (GPT-2, Llama) with a key/value cache: the new tokens (B, n).

    `model` has `hidden_states`, `lm_logits`, `config.eos_token_id` and `context_length`.
    inputs_embeds (B, T, d), right-padded; attention_mask (B, n_past + T) over the n_past cached
    positions (`past_key_values`, e.g. a prompt) and the T new ones, default all ones;
    position_ids (B, T), default n_past .. n_past + T - 1.
    Row b continues after its last real position. `embed(tokens (B, 1), positions (B, 1))`
    embeds each generated token before it is fed back (a prompt method adds its offset
    there). Stops once every row has produced eos; a finished row continues with eos.
    """
    check_max_new_tokens(max_new_tokens)
    B, T, _ = inputs_embeds.shape
    n_past = past_key_values[0][0].shape[2] if past_key_values is not None else 0
    if attention_mask is None:
        attention_mask = torch.ones(B, n_past + T, dtype=torch.long, device=inputs_embeds.device)
    if position_ids is None:
        position_ids = torch.arange(n_past, n_past + T, device=inputs_embeds.device).expand(B, T)
    real = attention_mask[:, attention_mask.shape[1] - T:].bool()   # (B, T)
    if not real.any(dim=1).all():
        raise ValueError("every row needs at least one real (attention_mask = 1) input position")
    rows = torch.arange(B, device=inputs_embeds.device)
    last = (real * torch.arange(1, T + 1, device=real.device)).argmax(dim=1)   # each row's last real index
    position = position_ids[rows, last] + 1                                     # (B,) where the next token goes
    if model.context_length is not None and max_new_tokens > 1 and \
            int(position.max()) + max_new_tokens - 2 >= model.context_length:   # the last new token is never fed back
        raise ValueError(f"generating {max_new_tokens} tokens after position {int(position.max()) - 1} goes past "
                         f"the model's context of {model.context_length} positions: lower max_new_tokens or "
                         "shorten the input")
    hidden, past = model.hidden_states(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                       position_ids=position_ids, past_key_values=past_key_values, use_cache=True)
    hidden = hidden[rows, last]                                                 # (B, d)
    eos = model.config.eos_token_id
    done = torch.zeros(B, dtype=torch.bool, device=rows.device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = model.lm_logits(hidden).argmax(dim=-1)                          # (B,)
        if eos is not None:
            token = token.masked_fill(done, eos)
            done = done | (token == eos)
        new_tokens.append(token)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
        hidden, past = model.hidden_states(inputs_embeds=embed(token[:, None], position[:, None]),
                                           attention_mask=attention_mask, position_ids=position[:, None],
                                           past_key_values=past, use_cache=True)
        hidden, position = hidden[:, -1], position + 1
    if not new_tokens:
        return torch.empty(B, 0, dtype=torch.long, device=rows.device)
    return torch.stack(new_tokens, dim=1)


def run_block(model, block, *inputs):
    """block(*inputs); with `model.activation_checkpointing` in training, only the inputs are kept and the
    block runs again in the backward pass (the frozen backbone's gradient must still reach the prompt)."""
    if model.activation_checkpointing and model.training:
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)
