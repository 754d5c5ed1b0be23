"""Llama, written out in one file: config, building blocks, the model, loading.

A decoder-only Transformer like GPT-2 (`gpt2.py`), pre-norm, with four changes
(Touvron et al., 2023; Llama 2 and 3 keep them):

    x = x + attn(rms_norm(x))        RMSNorm: x / rms(x) * g, no mean, no bias
    x = x + mlp(rms_norm(x))         SwiGLU: down(silu(gate(x)) * up(x)), three matrices

- no position table: each query and key is rotated, pair of dimensions by pair,
  by an angle proportional to its position (RoPE, Su et al., 2021), so q . k
  depends only on the distance between the two positions;
- grouped-query attention: the H query heads share H_kv key/value heads (each
  group of H / H_kv query heads reads one), which divides the cache by H / H_kv.

No dropout except an optional one on the attention probabilities (0 in every
released config). Submodules carry the checkpoint's names (`embed_tokens`,
`layers.N.self_attn.q_proj`, `layers.N.mlp.gate_proj`, `norm`, `lm_head`), so a
Hugging Face `LlamaForCausalLM` folder loads with no renaming beyond dropping the
"model." prefix. Mistral configs load too when they have no sliding window: the
same network.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loading import CheckpointError, copy_into, empty_model
from .layers import (FLAG, POSITIVE, POSITIVE_INT, PROBABILITY, TOKEN_ID, attention, causal_mask, check_fields,
                     greedy_decode, optional, past_length, run_block)

# ---- Config -----------------------------------------------------------------

# rope_scaling types we implement, and the keys each needs (every other type is refused by name).
ROPE_SCALING = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096                 # model width d
    intermediate_size: int = 11008          # SwiGLU hidden width
    num_hidden_layers: int = 32
    num_attention_heads: int = 32           # H query heads
    num_key_value_heads: int | None = None  # H_kv key/value heads, dividing H; None: H (multi-head attention)
    head_dim: int | None = None             # None: hidden_size // H (Llama 3.2 states it)
    max_position_embeddings: int = 4096     # the context the model was trained for
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0             # RoPE base: pair i turns by position * theta^(-2i / head_dim)
    rope_scaling: dict | None = None        # None, or {"rope_type": "linear" | "llama3", ...} (ROPE_SCALING)
    attention_bias: bool = False            # biases on q, k, v, o
    mlp_bias: bool = False                  # biases on gate, up, down
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False       # the output head is embed_tokens (Llama 3.2 1B/3B)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2            # generate stops here
    pad_token_id: int | None = None

    def __post_init__(self):
        check_fields(self, "Llama", {
            **dict.fromkeys(("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "max_position_embeddings"), POSITIVE_INT),
            "num_key_value_heads": optional(POSITIVE_INT), "head_dim": optional(POSITIVE_INT),
            **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), optional(TOKEN_ID)),
            "rms_norm_eps": POSITIVE, "rope_theta": POSITIVE, "attention_dropout": PROBABILITY,
            **dict.fromkeys(("attention_bias", "mlp_bias", "tie_word_embeddings"), FLAG),
            "rope_scaling": (lambda v: v is None or isinstance(v, dict), "null or an object")})
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"Llama config: hidden_size={self.hidden_size} is not divisible by "
                                 f"num_attention_heads={self.num_attention_heads}; state head_dim")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"Llama config: num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"Llama config: head_dim={self.head_dim} must be even (RoPE turns pairs)")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            if kind not in ROPE_SCALING:
                raise ValueError(f"Llama config: rope_scaling type {kind!r} is not supported by minidept "
                                 f"(supported: {', '.join(ROPE_SCALING)}, or none)")
            missing = [key for key in ROPE_SCALING[kind] if not POSITIVE[0](self.rope_scaling.get(key))]
            if missing:
                raise ValueError(f"Llama config: rope_scaling of type {kind!r} needs {', '.join(missing)} "
                                 "(numbers > 0)")

    @classmethod
    def from_hf_config(cls, d: dict) -> LlamaConfig:
        """Map a Hugging Face `config.json` dict, failing on anything we cannot honour."""
        if d.get("model_type", "llama") not in ("llama", "mistral"):
            raise ValueError(f"Llama config: model_type={d['model_type']!r}, expected 'llama' (or 'mistral')")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"Llama config: hidden_act={d['hidden_act']!r} is not supported (only 'silu', SwiGLU)")
        if d.get("sliding_window") is not None:
            raise ValueError(f"Llama config: sliding_window={d['sliding_window']} (Mistral's local attention) is "
                             "not supported; minidept loads Mistral configs without a sliding window")
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if d.get(field) is None:
                raise ValueError(f"Llama config: required field {field!r} is missing")
        if isinstance(d.get("eos_token_id"), list):
            raise ValueError(f"Llama config: eos_token_id={d['eos_token_id']} lists several end tokens; minidept's "
                             "greedy decoding stops at one (use a base model's config)")
        # RoPE: transformers >= 5 writes rope_parameters (theta inside); Hub configs rope_theta + rope_scaling,
        # whose type is named "rope_type" or, in older files, "type".
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError(f"Llama config field 'rope_scaling' must be null or an object, got {rope!r}")
        rope = dict(rope)
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        kind = rope.pop("rope_type", rope.pop("type", "default"))
        scaling = None if kind == "default" else {"rope_type": kind, **rope}
        optional = ("num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "attention_bias",
                    "mlp_bias", "attention_dropout", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                    "pad_token_id")   # absent or null: our default, which is transformers'
        # pretraining_tp, initializer_range, use_cache, torch_dtype: no effect on what the model computes
        return cls(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
                   num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
                   rope_theta=theta, rope_scaling=scaling,
                   **{name: d[name] for name in optional if d.get(name) is not None})

    def to_hf_config(self) -> dict:
        """A `config.json` dict that transformers' LlamaForCausalLM (and we) can load."""
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", **asdict(self)}


# ---- Building blocks --------------------------------------------------------

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back to x's dtype before
    the weight multiplies it (as Llama does; T5's variant casts after)."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_frequencies(config: LlamaConfig, device=None) -> torch.Tensor:
    """theta^(-2i / head_dim) for the head_dim / 2 pairs (float32), with the config's rope_scaling applied.

    linear: every frequency divided by `factor` (positions squeezed). llama3: long wavelengths
    (beyond original / low_freq_factor positions) divided by `factor`, short ones (below
    original / high_freq_factor) kept, and a smooth blend between the two.
    """
    hd = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd)
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        return inv_freq / scaling["factor"]
    if scaling.get("rope_type") == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        original = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv_freq
        smooth = ((original / wavelength - low) / (high - low)).clamp(0, 1)   # 0: long waves, 1: short waves
        return (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return inv_freq


def rotate(x, cos, sin):
    """RoPE on x (B, H, T, hd): each pair (x_i, x_{i + hd/2}) turned by its angle, as transformers'
    Llama pairs them: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). `sin` comes signed,
    (-sin, sin) along hd, so that swapping the halves is a roll."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        d, hd, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.H, self.H_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.H * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.H_kv * hd, bias=bias)   # fewer key/value heads than query heads
        self.v_proj = nn.Linear(d, self.H_kv * hd, bias=bias)
        self.o_proj = nn.Linear(self.H * hd, d, bias=bias)
        self.dropout = config.attention_dropout

    def forward(self, x, cos, sin, mask, is_causal, past=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.hd).transpose(1, 2)      # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.H_kv, self.hd).transpose(1, 2)   # (B, H_kv, T, hd)
        v = self.v_proj(x).view(B, T, self.H_kv, self.hd).transpose(1, 2)   # (B, H_kv, T, hd)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)   # positions enter here, and only here
        if past is not None:  # keys (already rotated) and values of the n_past earlier positions
            k = torch.cat([past[0], k], dim=2)   # (B, H_kv, n_past + T, hd)
            v = torch.cat([past[1], v], dim=2)
        # softmax(q @ k^T / sqrt(hd) masked) -> (B, H, T, n_past + T), then @ v -> (B, H, T, hd); query head h
        # reads key/value head h // (H / H_kv)
        y = attention(q, k, v, mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.hd)), (k, v)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, is_causal, past=None):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present


# ---- The model --------------------------------------------------------------

class Llama(nn.Module):
    model_type = "llama"
    is_encoder_decoder = False
    activation_checkpointing = False   # training: recompute each block in the backward pass (less memory)

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config, self.d_model = config, config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        for name, p in self.named_parameters():   # transformers' init: N(0, 0.02) matrices, zero biases
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    @property
    def context_length(self) -> int:
        return self.config.max_position_embeddings

    def hidden_states(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                      past_key_values=None, use_cache=False):
        """Run the stack: (hidden (B, T, d) after the final norm, new past_key_values or None).

        attention_mask: (B, n_past + T) over past and current positions, 1 = attend.
        position_ids:   (B, T); default n_past .. n_past + T - 1, where n_past is the past length.
        past_key_values: per layer (k, v), each (B, H_kv, n_past, head_dim), keys already rotated.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds   # (B, T, d)
        B, T, _ = x.shape
        n_past = past_length(past_key_values, len(self.layers), B)
        if position_ids is None:
            position_ids = torch.arange(n_past, n_past + T, device=x.device).expand(B, T)
        elif position_ids.shape != (B, T):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected (B, T) = ({B}, {T})")
        # the angle of pair i at position p is p * frequency_i, in float32 whatever the model's dtype
        angles = position_ids[..., None].float() * rope_frequencies(self.config, x.device)   # (B, T, hd / 2)
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]                              # (B, 1, T, hd / 2)
        cos, sin = torch.cat([cos, cos], dim=-1).to(x.dtype), torch.cat([-sin, sin], dim=-1).to(x.dtype)
        mask, is_causal = causal_mask(attention_mask, B, n_past, T, x.device)
        presents = [] if use_cache else None
        for i, block in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            x, present = run_block(self, block, x, cos, sin, mask, is_causal, past)   # --activation-checkpointing
            if use_cache:
                presents.append(present)
        return self.norm(x), presents

    def lm_logits(self, hidden):
        """(..., d) -> (..., V): lm_head, or embed_tokens itself when tied."""
        return F.linear(hidden, (self.embed_tokens if self.config.tie_word_embeddings else self.lm_head).weight)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None):
        hidden, _ = self.hidden_states(input_ids, attention_mask, position_ids, inputs_embeds)
        return self.lm_logits(hidden)  # (B, T, V)

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=20, inputs_embeds=None,
                 position_ids=None, past_key_values=None):
        """Greedy decoding with a key/value cache (`layers.greedy_decode`, as GPT-2): the new tokens (B, n)."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds   # (B, T, d)
        return greedy_decode(self, x, attention_mask, position_ids, max_new_tokens,
                             embed=lambda token, position: self.embed_tokens(token), past_key_values=past_key_values)

    # ---- Loading and saving -------------------------------------------------

    def to_checkpoint(self) -> tuple[dict, dict]:
        """(tensors under LlamaForCausalLM's names, config.json): what `minidept.save_pretrained` writes."""
        state = {(name if name == "lm_head.weight" else "model." + name): t for name, t in self.state_dict().items()}
        return state, self.config.to_hf_config()

    @classmethod
    def from_checkpoint(cls, hf_config: dict, state: dict, dtype=torch.float32, source="checkpoint") -> Llama:
        """Our Llama from a config.json dict and its tensors, loaded strictly: every parameter filled, every key
        used or known skippable. Memory-mapped safetensors (`minidept.load_model` reads them so) are read as
        they are copied, so the model is the only full copy in memory."""
        model = empty_model(cls, LlamaConfig, hf_config, state, dtype, source)
        checkpoint = {key.removeprefix("model."): t for key, t in state.items() if not SKIPPABLE.fullmatch(key)}
        if model.config.tie_word_embeddings and "lm_head.weight" in checkpoint:
            lm_head = checkpoint.pop("lm_head.weight")
            if "embed_tokens.weight" in checkpoint and not torch.equal(lm_head, checkpoint["embed_tokens.weight"]):
                raise CheckpointError(f"{source}: tie_word_embeddings is true but lm_head.weight differs "
                                      "from embed_tokens.weight; fix config.json")
        copy_into(dict(model.named_parameters()), checkpoint, source,
                  hint="check that config.json belongs to these weights (num_key_value_heads, head_dim, "
                       "tie_word_embeddings, attention_bias, mlp_bias)")
        return model.eval()


# Checkpoint keys that hold nothing to learn: RoPE frequencies some older conversions saved.
SKIPPABLE = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
