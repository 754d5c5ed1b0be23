"""GPT-2, written out in one file: config, building blocks, the model, loading.

A decoder-only Transformer (Radford et al., 2019). Each block is pre-norm:

    x = x + attn(ln_1(x))        causal multi-head self-attention
    x = x + mlp(ln_2(x))         Linear -> activation -> Linear

with learned absolute position embeddings added to the token embeddings, a
final `ln_f`, and an output head that reuses the token embedding matrix.

Submodules carry the checkpoint's names (`wte`, `wpe`, `h.N.attn.c_attn`,
`ln_f`, ...), so a Hugging Face checkpoint loads with no renaming beyond
dropping the optional "transformer." prefix. One wrinkle: OpenAI stored the four
projections as "Conv1D" with weights of shape (in, out), the transpose of
`nn.Linear`'s (out, in); loading checks the flipped shape and transposes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loading import CheckpointError, copy_into, empty_model
from .layers import (POSITIVE, POSITIVE_INT, PROBABILITY, TOKEN_ID, attention, causal_mask, check_fields, dropout,
                     greedy_decode, optional, past_length, run_block)

# ---- Config -----------------------------------------------------------------

# `activation_function` values of Hub configs and what they compute.
ACTIVATIONS = {
    "gelu_new": partial(F.gelu, approximate="tanh"),  # GPT-2's own: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_fast": partial(F.gelu, approximate="tanh"),
    "gelu_python_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,  # exact: x * Phi(x), with the Gaussian CDF Phi
    "gelu_python": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}

# config.json options this implementation does not have, with the only value it supports.
ONLY_SUPPORTED = {
    "scale_attn_by_inverse_layer_idx": False,  # extra 1/(layer+1) attention scaling
    "reorder_and_upcast_attn": False,          # float32 attention for mixed precision (Mistral)
    "scale_attn_weights": True,                # the 1/sqrt(head_dim) scaling
    "add_cross_attention": False,              # encoder-decoder use of GPT-2
    "tie_word_embeddings": True,               # the output head is the token embedding
}


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257          # tokens in the byte-level BPE vocabulary
    n_positions: int = 1024          # context length: rows of the position embedding wpe
    n_embd: int = 768                # model width d
    n_layer: int = 12                # Transformer blocks
    n_head: int = 12                 # attention heads; head_dim = n_embd / n_head
    n_inner: int | None = None       # MLP hidden width; None means 4 * n_embd
    activation_function: str = "gelu_new"  # MLP nonlinearity, a key of ACTIVATIONS
    layer_norm_epsilon: float = 1e-5
    resid_pdrop: float = 0.1         # dropout after each attention / MLP output projection
    embd_pdrop: float = 0.1          # dropout on token + position embeddings
    attn_pdrop: float = 0.1          # dropout on attention probabilities
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256  # generate stops here ("<|endoftext|>")

    def __post_init__(self):
        check_fields(self, "GPT-2", {
            **dict.fromkeys(("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"), POSITIVE_INT),
            "n_inner": optional(POSITIVE_INT), "bos_token_id": optional(TOKEN_ID), "eos_token_id": optional(TOKEN_ID),
            **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), PROBABILITY), "layer_norm_epsilon": POSITIVE})
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"GPT-2 config: activation_function={self.activation_function!r} is not supported; "
                             f"allowed values: {', '.join(sorted(ACTIVATIONS))}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT-2 config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def inner_size(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @classmethod
    def from_hf_config(cls, d: dict) -> GPT2Config:
        """Map a Hugging Face `config.json` dict, failing on anything we cannot honour."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"GPT-2 config: model_type={d['model_type']!r}, expected 'gpt2'")
        for field, supported in ONLY_SUPPORTED.items():
            if field in d and d[field] != supported:
                raise ValueError(f"GPT-2 config: {field}={d[field]!r} is not supported by minidept "
                                 f"(only {field}={supported!r}); use a standard GPT-2 checkpoint")
        if "n_positions" not in d and "n_ctx" in d:  # very old configs name the context n_ctx
            d = {**d, "n_positions": d["n_ctx"]}
        for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if d.get(field) is None:
                raise ValueError(f"GPT-2 config: required field {field!r} is missing")
        optional = ("n_inner", "activation_function", "layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                    "bos_token_id", "eos_token_id")   # absent: our default, which is GPT-2's
        return cls(vocab_size=d["vocab_size"], n_positions=d["n_positions"], n_embd=d["n_embd"], n_layer=d["n_layer"],
                   n_head=d["n_head"], **{name: d[name] for name in optional if name in d})

    def to_hf_config(self) -> dict:
        """A `config.json` dict that transformers' GPT2LMHeadModel (and we) can load."""
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **asdict(self), **ONLY_SUPPORTED}


# ---- Building blocks --------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_pdrop = config.resid_pdrop

    def forward(self, x, mask, is_causal, past=None):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)
        if past is not None:  # keys and values of the n_past earlier positions
            k = torch.cat([past[0], k], dim=2)  # (B, H, n_past + T, hd)
            v = torch.cat([past[1], v], dim=2)  # (B, H, n_past + T, hd)
        # softmax(q @ k^T / sqrt(hd) masked) -> (B, H, T, n_past + T), then @ v -> (B, H, T, hd)
        y = attention(q, k, v, mask, is_causal=is_causal, dropout_p=self.attn_pdrop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return dropout(self.c_proj(y), self.resid_pdrop, self.training), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_size)
        self.act = ACTIVATIONS[config.activation_function]
        self.c_proj = nn.Linear(config.inner_size, config.n_embd)
        self.resid_pdrop = config.resid_pdrop

    def forward(self, x):
        return dropout(self.c_proj(self.act(self.c_fc(x))), self.resid_pdrop, self.training)


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, mask, is_causal, past=None):
        a, present = self.attn(self.ln_1(x), mask, is_causal, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


# ---- The model --------------------------------------------------------------

class GPT2(nn.Module):
    model_type = "gpt2"
    is_encoder_decoder = False
    activation_checkpointing = False   # training: recompute each block in the backward pass (less memory)

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config, self.d_model = config, config.n_embd
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)   # token embeddings, also the output head
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned absolute positions
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        # GPT-2's initialisation: N(0, 0.02), output projections scaled down by sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / (2 * config.n_layer) ** 0.5)
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    @property
    def context_length(self) -> int:
        return self.config.n_positions

    def hidden_states(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                      past_key_values=None, use_cache=False):
        """Run the stack: (hidden (B, T, n_embd) after ln_f, new past_key_values or None).

        attention_mask: (B, n_past + T) over past and current positions, 1 = attend.
        position_ids:   (B, T); default n_past .. n_past + T - 1, where n_past is the past length.
        past_key_values: per layer (k, v), each (B, n_head, n_past, head_dim).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        B, T, _ = x.shape
        n_past = past_length(past_key_values, len(self.h), B)
        if position_ids is None:
            if n_past + T > self.config.n_positions:
                raise ValueError(f"sequence of {n_past + T} positions (past {n_past} + input {T}) is longer than the "
                                 f"model's context n_positions={self.config.n_positions}; shorten the input")
            x = x + self.wpe.weight[n_past:n_past + T]  # (T, d) broadcast over the batch
        else:
            if position_ids.shape != (B, T):
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected (B, T) = ({B}, {T})")
            if position_ids.numel() and (position_ids.min() < 0 or position_ids.max() >= self.config.n_positions):
                raise ValueError(f"position_ids must lie in [0, {self.config.n_positions}) (n_positions); "
                                 f"got {position_ids.min().item()} .. {position_ids.max().item()}")
            x = x + self.wpe(position_ids)
        x = dropout(x, self.config.embd_pdrop, self.training)
        mask, is_causal = causal_mask(attention_mask, B, n_past, T, x.device)
        presents = [] if use_cache else None
        for i, block in enumerate(self.h):
            past = past_key_values[i] if past_key_values is not None else None
            x, present = run_block(self, block, x, mask, is_causal, past)   # --activation-checkpointing: recomputed
            if use_cache:
                presents.append(present)
        return self.ln_f(x), presents

    def lm_logits(self, hidden):
        """(..., d) -> (..., V): the head is wte itself, one shared Parameter."""
        return F.linear(hidden, self.wte.weight)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None):
        hidden, _ = self.hidden_states(input_ids, attention_mask, position_ids, inputs_embeds)
        return self.lm_logits(hidden)  # (B, T, V)

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=20, inputs_embeds=None,
                 position_ids=None, past_key_values=None):
        """Greedy decoding with a key/value cache; returns only the new tokens (B, n <= max_new_tokens).

        Right-padded batches work: row b continues from its last real position, and its
        pads stay masked in the cache. With past_key_values (e.g. a cached soft prompt),
        attention_mask covers past + current positions. The loop is `layers.greedy_decode`,
        shared with every decoder-only model and with the prompted models.
        """
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds   # (B, T, d)
        return greedy_decode(self, x, attention_mask, position_ids, max_new_tokens,
                             embed=lambda token, position: self.wte(token), past_key_values=past_key_values)

    # ---- Loading and saving -------------------------------------------------

    def to_checkpoint(self) -> tuple[dict, dict]:
        """(tensors under GPT2LMHeadModel's names, Conv1D weights back in (in, out) layout; config.json):
        what `minidept.save_pretrained` writes, for transformers and us."""
        state = {"transformer." + name: (t.t() if _is_conv1d(name) else t) for name, t in self.state_dict().items()}
        return state, self.config.to_hf_config()

    @classmethod
    def from_checkpoint(cls, hf_config: dict, state: dict, dtype=torch.float32, source="checkpoint") -> GPT2:
        """Our GPT-2 from a config.json dict and its tensors, loaded strictly: every parameter filled, every key
        used or known skippable (`minidept.load_model` reads them from a folder, the Hub or a built-in name)."""
        model = empty_model(cls, GPT2Config, hf_config, state, dtype, source)
        checkpoint = {key.removeprefix("transformer."): t for key, t in state.items()}
        lm_head = checkpoint.pop("lm_head.weight", None)
        # Conv1D weights are stored (in, out): copy them into the transposed view of our (out, in) weights
        params = {name: p.t() if _is_conv1d(name) else p for name, p in model.named_parameters()}
        copy_into(params, {key: t for key, t in checkpoint.items() if not SKIPPABLE.fullmatch(key)},
                  source, hint="check that config.json belongs to these weights "
                                              "(Conv1D weights are stored (in, out), the transpose of nn.Linear's)")
        if lm_head is not None and not (lm_head.shape == model.wte.weight.shape
                                        and torch.equal(lm_head.to(dtype), model.wte.weight)):
            raise CheckpointError(f"{source}: lm_head.weight differs from wte.weight; minidept's "
                                  "GPT-2 ties the output head to the token embeddings (untied heads are not supported)")
        return model.eval()


# Checkpoint keys that hold nothing to learn: the old causal-mask buffers of each attention layer.
SKIPPABLE = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _is_conv1d(name: str) -> bool:
    return name.endswith(CONV1D)
