"""T5, written out: the encoder-decoder of Raffel et al. (2020), "Exploring the
Limits of Transfer Learning with a Unified Text-to-Text Transformer".

Reads top to bottom: the config, the building blocks (norm, feed-forward,
attention, relative position bias), the two stacks, the model with greedy
generation, and loading / saving Hugging Face checkpoints.

Two families share this code:
- original T5 (`t5-small`, `t5-base`, ...): relu feed-forward, output head tied
  to the input embedding, decoder output rescaled by d_model**-0.5;
- T5 v1.1 / FLAN-T5: gated-gelu feed-forward, separate `lm_head`, no rescale.
`num_heads * d_kv` may differ from `d_model` (t5-3b: 32 heads of 128 on a
width of 1024).

Details readers often get wrong are marked with a one-line comment where they
happen: position bias computed once per stack, no position bias in
cross-attention, no 1/sqrt(d_head) scaling, no sqrt(d_model) embedding
scaling, RMS norm without bias or mean, the tied-head rescale, tanh GELU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loading import copy_into, empty_model
from .layers import (FLAG, POSITIVE, POSITIVE_INT, PROBABILITY, TOKEN_ID, attention, check_fields,
                     check_max_new_tokens, dropout, run_block)

# ---- Config -----------------------------------------------------------------

FEED_FORWARD_PROJ = ("relu", "gated-gelu")  # original T5, and T5 v1.1 / FLAN-T5


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512                # width of the residual stream
    d_kv: int = 64                    # width of one attention head
    d_ff: int = 2048                  # width of the feed-forward hidden layer
    num_layers: int = 6               # encoder blocks
    num_decoder_layers: int = 6       # decoder blocks
    num_heads: int = 8                # num_heads * d_kv need not equal d_model (t5-3b)
    relative_attention_num_buckets: int = 32   # position-bias buckets per stack
    relative_attention_max_distance: int = 128  # distances beyond this share the last bucket
    dropout_rate: float = 0.1         # active in train mode only
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"   # "relu" (T5) or "gated-gelu" (v1.1 / FLAN-T5)
    tie_word_embeddings: bool = True  # True: head = shared embedding and rescale by d_model**-0.5
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0   # first decoder input (T5 uses the pad id)

    def __post_init__(self):
        check_fields(self, "T5", {
            **dict.fromkeys(("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                             "relative_attention_num_buckets", "relative_attention_max_distance"), POSITIVE_INT),
            **dict.fromkeys(("pad_token_id", "eos_token_id", "decoder_start_token_id"), TOKEN_ID),
            "dropout_rate": PROBABILITY, "layer_norm_epsilon": POSITIVE, "tie_word_embeddings": FLAG,
            "feed_forward_proj": (lambda v: v in FEED_FORWARD_PROJ, f"one of {list(FEED_FORWARD_PROJ)}")})

    @classmethod
    def from_hf_config(cls, d: dict) -> T5Config:
        """Map a Hugging Face `config.json` dict field by field; fail naming any field we cannot use.

        Fields that do not change the computation (`architectures`,
        `task_specific_params`, `use_cache`, `initializer_factor`, ...) are ignored.
        """
        if d.get("model_type", "t5") != "t5":
            raise ValueError(f"config field 'model_type' is {d.get('model_type')!r}; this loader reads 't5'")
        if d.get("is_encoder_decoder", True) is not True or d.get("is_decoder", False) is not False:
            raise ValueError("config fields 'is_encoder_decoder' / 'is_decoder' describe a single stack; "
                             "minidept's T5 is the full encoder-decoder (is_encoder_decoder=true, is_decoder=false)")
        missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads") if k not in d]
        if missing:
            raise ValueError(f"config is missing required T5 field(s) {missing}")
        eos = d.get("eos_token_id", 1)
        if isinstance(eos, list):
            if len(eos) != 1:
                raise ValueError(f"config field 'eos_token_id' is {eos!r}; minidept supports a single id")
            eos = eos[0]
        # transformers >= 5 always ties the head and keeps the v1.1 "untied" meaning in
        # `scale_decoder_outputs`; in every Hub checkpoint the rescale goes with a tied head.
        tie = d.get("tie_word_embeddings", True)
        scale = d.get("scale_decoder_outputs", tie)
        if scale and not tie:
            raise ValueError("config fields 'scale_decoder_outputs'=true with 'tie_word_embeddings'=false: "
                             "a rescaled output with a separate head is not a T5 variant minidept supports")
        optional = ("relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
                    "layer_norm_epsilon", "feed_forward_proj", "pad_token_id")   # absent: t5-small's values
        return cls(vocab_size=d["vocab_size"], d_model=d["d_model"], d_kv=d["d_kv"], d_ff=d["d_ff"],
                   num_layers=d["num_layers"], num_heads=d["num_heads"],
                   num_decoder_layers=d["num_layers"] if d.get("num_decoder_layers") is None else d["num_decoder_layers"],
                   tie_word_embeddings=scale, eos_token_id=eos,
                   decoder_start_token_id=d.get("decoder_start_token_id", d.get("pad_token_id", 0)),
                   **{name: d[name] for name in optional if name in d})

    def to_hf_config(self) -> dict:
        """A `config.json` dict that transformers' T5ForConditionalGeneration and our loader read."""
        return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
                "is_encoder_decoder": True, **asdict(self)}


# ---- Building blocks --------------------------------------------------------

class FeedForward(nn.Module):
    """relu: wo(relu(wi x)); gated-gelu: wo(gelu(wi_0 x) * wi_1 x). No biases anywhere in T5."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.feed_forward_proj == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.p = config.dropout_rate

    def forward(self, x):  # (B, T, d_model)
        if self.gated:
            # gated-gelu uses the tanh approximation of GELU ("gelu_new"), not the exact erf form
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)  # (B, T, d_ff)
        else:
            h = F.relu(self.wi(x))  # (B, T, d_ff)
        return self.wo(dropout(h, self.p, self.training))  # (B, T, d_model)


class Attention(nn.Module):
    """Multi-head attention without biases: self-attention, or cross-attention over the encoder output."""

    def __init__(self, config: T5Config, cross: bool = False):
        super().__init__()
        self.num_heads, self.d_kv, self.cross = config.num_heads, config.d_kv, cross
        inner = config.num_heads * config.d_kv  # may differ from d_model (t5-3b)
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.p = config.dropout_rate

    def forward(self, x, mask, source=None, past=None):
        """Attend from x (B, T, d_model) to x itself, or to `source` (B, S, d_model) in cross-attention.

        mask: additive or boolean (True = attend), broadcastable to (B, H, T, S).
        past: keys and values (B, H, n_past, d_kv) computed before: in self-attention those of the
        n_past earlier positions (this call's are appended), in cross-attention all of them (no
        `source` needed). Returns the output (B, T, d_model) and the keys and values used.
        """
        B, T, _ = x.shape
        heads = lambda t: t.view(B, -1, self.num_heads, self.d_kv).transpose(1, 2)  # (B, S, H*d_kv) -> (B, H, S, d_kv)
        if self.cross and past is not None:
            k, v = past  # the encoder output's keys and values, computed once
        else:
            source = x if source is None else source
            k, v = heads(self.k(source)), heads(self.v(source))
            if past is not None:  # the self-attention cache grows by T positions per call
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # softmax(q k^T + mask) v: (B, H, T, d_kv) @ (B, H, d_kv, S) -> (B, H, T, S) -> (B, H, T, d_kv)
        # scale=1.0: T5 has no 1/sqrt(d_kv) scaling (it is folded into the initialisation of q)
        y = attention(heads(self.q(x)), k, v, mask, scale=1.0, dropout_p=self.p if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, self.num_heads * self.d_kv)), (k, v)  # (B, T, d_model)


def check_ids(ids, vocab_size: int, name: str = "input_ids") -> None:
    """Token ids must be (batch, length) and inside the vocabulary: mistakes fail here, not inside attention."""
    if ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, length), got {tuple(ids.shape)}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{name} holds ids outside [0, vocab_size={vocab_size}): "
                         f"min {int(ids.min())}, max {int(ids.max())}")


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """Bucket of each key_position - query_position (T5 paper, section 2.1).

    Half the buckets hold one distance each; the other half cover distances up to
    `max_distance` in logarithmically wider bins; anything farther shares the last one.
    """
    bucket = 0
    if bidirectional:  # encoder: separate halves for keys after and before the query
        num_buckets //= 2
        bucket = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:  # decoder: only keys at or before the query (later keys are masked anyway)
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_bucket = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                              * (num_buckets - max_exact)).long()
    log_bucket = log_bucket.clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < max_exact, distance, log_bucket)


# ---- The two stacks ---------------------------------------------------------

class Block(nn.Module):
    """A pre-norm residual block: self-attention, cross-attention (decoder only), feed-forward."""

    def __init__(self, config: T5Config, is_decoder: bool):
        super().__init__()
        # T5's layer norm is an RMS norm, x / rms(x) * weight: no mean subtraction and no bias
        self.self_attn_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.self_attn = Attention(config)
        if is_decoder:
            self.cross_attn_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
            self.cross_attn = Attention(config, cross=True)
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.ffn = FeedForward(config)
        self.p = config.dropout_rate

    def forward(self, x, mask, past=None, encoder_hidden=None, cross_mask=None):
        """x (B, T, d_model); mask (B or 1, H, T, n_past + T) for self-attention.

        Decoder: `past` = (self k, self v, cross k, cross v) cached by earlier calls, or None;
        encoder_hidden (B, S, d_model) and its padding mask `cross_mask`. Returns x and the
        keys and values to cache (self k, self v, cross k, cross v).
        """
        y, self_kv = self.self_attn(self.self_attn_norm(x), mask, past=None if past is None else past[:2])
        x = x + dropout(y, self.p, self.training)
        cross_kv = ()
        if encoder_hidden is not None:  # cross-attention has no position bias: its mask is only the encoder padding
            y, cross_kv = self.cross_attn(self.cross_attn_norm(x), cross_mask, encoder_hidden,
                                          past=None if past is None else past[2:])
            x = x + dropout(y, self.p, self.training)
        return x + dropout(self.ffn(self.ffn_norm(x)), self.p, self.training), (*self_kv, *cross_kv)


# ---- The model --------------------------------------------------------------

class T5(nn.Module):
    """T5 encoder-decoder with a language-modelling head.

    `past_key_values` (from `decode`) is a tuple with one (self_k, self_v,
    cross_k, cross_v) per decoder block: self-attention keys/values of every
    decoded position (B, H, n_past, d_kv), and the cross-attention keys/values of the
    encoder output (B, H, S, d_kv), computed once.
    """

    model_type = "t5"
    is_encoder_decoder = True
    activation_checkpointing = False   # training: recompute each block in the backward pass (less memory)
    context_length = None   # relative positions: no fixed context

    def __init__(self, config: T5Config):
        super().__init__()
        self.config, self.d_model = config, config.d_model
        self.shared = nn.Embedding(config.vocab_size, config.d_model)  # encoder, decoder (and tied head)
        # Each stack: its blocks, and what they share: one relative position bias table
        # (num_buckets, num_heads), stored in block 0 of the checkpoint, and a final norm.
        self.encoder, self.decoder = (nn.ModuleDict(dict(
            relative_bias=nn.Embedding(config.relative_attention_num_buckets, config.num_heads),
            blocks=nn.ModuleList(Block(config, is_decoder) for _ in range(layers)),
            final_norm=nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)))
            for is_decoder, layers in ((False, config.num_layers), (True, config.num_decoder_layers)))
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def position_bias(self, stack: nn.Module, query_length: int, key_length: int, offset: int = 0):
        """(1, H, Tq, Tk) bias of a stack for queries at offset .. offset+Tq-1 and keys at 0 .. Tk-1."""
        device = stack.relative_bias.weight.device
        query = torch.arange(offset, offset + query_length, device=device)[:, None]
        key = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(key - query, stack is self.encoder,  # (Tq, Tk); bidirectional in the encoder
                                           self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)
        # contiguous: the permuted view would make every (B, H, T, T) mask built from it strided,
        # and SDPA's fused CPU kernel would copy that mask again in every layer
        return stack.relative_bias(buckets).permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, H, Tq, Tk)

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        """Encoder output (B, T, d_model) after the final norm. attention_mask (B, T): 1 = real token."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            check_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.shared(input_ids)  # no sqrt(d_model) scaling of the embeddings in T5
        x = inputs_embeds
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"inputs_embeds must be (batch, length, d_model={self.d_model}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        # position bias computed once, bidirectional, plus the padding, shared by every layer
        mask = self.position_bias(self.encoder, T, T).to(x.dtype)  # (1, H, T, T)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, T):
                raise ValueError(f"attention_mask must be (batch, length) = {(B, T)}, got {tuple(attention_mask.shape)}")
            mask = mask.masked_fill(attention_mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)  # (B, H, T, T)
        x = dropout(x, self.config.dropout_rate, self.training)
        for block in self.encoder.blocks:
            x, _ = run_block(self, block, x, mask)   # --activation-checkpointing: recomputed in backward
        return dropout(self.encoder.final_norm(x), self.config.dropout_rate, self.training)

    def decode(self, decoder_input_ids, encoder_hidden, attention_mask=None, past_key_values=None):
        """Decoder output after the final norm (B, Td, d_model), and the updated key/value cache.

        attention_mask: the encoder's padding mask (B, S). With `past_key_values`,
        `decoder_input_ids` are the positions after the cached ones.
        """
        x = self.shared(decoder_input_ids)  # (B, Td, d_model)
        (B, T, _), S = x.shape, encoder_hidden.shape[1]
        if encoder_hidden.shape[0] != B:
            raise ValueError(f"encoder_hidden has batch {encoder_hidden.shape[0]}, decoder_input_ids {B}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
            raise ValueError(f"attention_mask must be (batch, length) = {(B, S)}, got {tuple(attention_mask.shape)}")
        n_past = 0 if past_key_values is None else past_key_values[0][0].shape[2]  # positions already decoded
        # position bias computed once, causal buckets, for queries n_past..n_past+T-1 over keys 0..n_past+T-1
        self_mask = self.position_bias(self.decoder, T, n_past + T, offset=n_past).to(x.dtype)  # (1, H, T, n_past+T)
        future = torch.ones(T, n_past + T, dtype=torch.bool, device=x.device).triu(n_past + 1)  # key after query
        self_mask = self_mask.masked_fill(future, torch.finfo(x.dtype).min)
        cross_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        x = dropout(x, self.config.dropout_rate, self.training)
        new_past = []
        for i, block in enumerate(self.decoder.blocks):
            past = None if past_key_values is None else past_key_values[i]
            x, cache = run_block(self, block, x, self_mask, past, encoder_hidden, cross_mask)
            new_past.append(cache)
        return dropout(self.decoder.final_norm(x), self.config.dropout_rate, self.training), tuple(new_past)

    def lm_logits(self, hidden):
        """(B, Td, d_model) -> (B, Td, V)."""
        if self.config.tie_word_embeddings:
            # tied head (original T5): rescale by d_model**-0.5 before the shared embedding
            return F.linear(hidden * self.config.d_model ** -0.5, self.shared.weight)
        return self.lm_head(hidden)  # v1.1 / FLAN-T5: separate head, no rescale

    def shift_right(self, labels):
        """Teacher forcing inputs: start token in front, last label dropped, -100 -> pad."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, inputs_embeds=None):
        """Logits (B, Td, V). `decoder_input_ids` defaults to one start token per row."""
        encoder_hidden = self.encode(input_ids, attention_mask, inputs_embeds)
        if decoder_input_ids is None:
            decoder_input_ids = torch.full((encoder_hidden.shape[0], 1), self.config.decoder_start_token_id,
                                           dtype=torch.long, device=encoder_hidden.device)
        check_ids(decoder_input_ids, self.config.vocab_size, "decoder_input_ids")  # e.g. labels with -100 in them
        hidden, _ = self.decode(decoder_input_ids, encoder_hidden, attention_mask)
        return self.lm_logits(hidden)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=20, inputs_embeds=None):
        """Greedy decoding with a key/value cache: (B, n <= max_new_tokens) new token ids.

        Stops once every row has produced eos; a row that is done is filled with pad.
        """
        check_max_new_tokens(max_new_tokens)
        encoder_hidden = self.encode(input_ids, attention_mask, inputs_embeds)
        B = encoder_hidden.shape[0]
        token = torch.full((B, 1), self.config.decoder_start_token_id, device=encoder_hidden.device)
        done = torch.zeros(B, dtype=torch.bool, device=token.device)
        past, new_tokens = None, []
        for _ in range(max_new_tokens):
            hidden, past = self.decode(token, encoder_hidden, attention_mask, past)  # (B, 1, d_model)
            token = self.lm_logits(hidden).argmax(-1)  # (B, 1)
            token = token.masked_fill(done[:, None], self.config.pad_token_id)
            new_tokens.append(token)
            done |= token[:, 0] == self.config.eos_token_id
            if done.all():
                break
        if not new_tokens:
            return torch.empty(B, 0, dtype=torch.long, device=token.device)
        return torch.cat(new_tokens, dim=1)

    # ---- Hugging Face checkpoints ----

    def to_checkpoint(self) -> tuple[dict, dict]:
        """(tensors under the checkpoint's names (`rename_table`), config.json): what `minidept.save_pretrained`
        writes, for transformers and us."""
        params, dtype = dict(self.named_parameters()), str(self.shared.weight.dtype).removeprefix("torch.")
        return ({key: params[name].detach() for key, name in rename_table(self.config).items()},
                {**self.config.to_hf_config(), "dtype": dtype, "torch_dtype": dtype})

    @classmethod
    def from_checkpoint(cls, hf_config: dict, state: dict, dtype=torch.float32, source="checkpoint") -> T5:
        """Our T5 from a config.json dict and its tensors, loaded strictly, in eval mode (`minidept.load_model`
        reads them from a folder, the Hub or a built-in name)."""
        model = empty_model(cls, T5Config, hf_config, state, dtype, source)
        # transformers >= 5 writes v1.1 models with the head tied but not rescaled, and no
        # lm_head.weight: our separate head then starts as a copy of shared.weight.
        if (not model.config.tie_word_embeddings and "lm_head.weight" not in state and "shared.weight" in state
                and hf_config.get("tie_word_embeddings", True)):
            state = {**state, "lm_head.weight": state["shared.weight"]}
        params = dict(model.named_parameters())
        by_key = {key: params[name] for key, name in rename_table(model.config).items()}  # checkpoint key -> parameter
        skip = skippable_keys(model.config)
        copy_into(by_key, {key: t for key, t in state.items() if key not in skip}, source,
                  hint="check that config.json belongs to these weights")
        return model.eval()


# ---- Loading: checkpoint key -> module name ---------------------------------

# The one rename table. {i}: block index; {p}: q, k, v, o; {w}: the feed-forward
# weights of the config (wi, wo for relu; wi_0, wi_1, wo for gated-gelu).
CHECKPOINT_TO_MODULE = {
    "shared.weight": "shared.weight",
    "lm_head.weight": "lm_head.weight",  # v1.1 / FLAN only; a tied model has no lm_head
    # the relative position bias lives in block 0 of each stack and is shared by all its blocks
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "encoder.relative_bias.weight",
    "encoder.block.{i}.layer.0.layer_norm.weight": "encoder.blocks.{i}.self_attn_norm.weight",
    "encoder.block.{i}.layer.0.SelfAttention.{p}.weight": "encoder.blocks.{i}.self_attn.{p}.weight",
    "encoder.block.{i}.layer.1.layer_norm.weight": "encoder.blocks.{i}.ffn_norm.weight",
    "encoder.block.{i}.layer.1.DenseReluDense.{w}.weight": "encoder.blocks.{i}.ffn.{w}.weight",
    "encoder.final_layer_norm.weight": "encoder.final_norm.weight",
    "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "decoder.relative_bias.weight",
    "decoder.block.{i}.layer.0.layer_norm.weight": "decoder.blocks.{i}.self_attn_norm.weight",
    "decoder.block.{i}.layer.0.SelfAttention.{p}.weight": "decoder.blocks.{i}.self_attn.{p}.weight",
    "decoder.block.{i}.layer.1.layer_norm.weight": "decoder.blocks.{i}.cross_attn_norm.weight",
    "decoder.block.{i}.layer.1.EncDecAttention.{p}.weight": "decoder.blocks.{i}.cross_attn.{p}.weight",
    "decoder.block.{i}.layer.2.layer_norm.weight": "decoder.blocks.{i}.ffn_norm.weight",
    "decoder.block.{i}.layer.2.DenseReluDense.{w}.weight": "decoder.blocks.{i}.ffn.{w}.weight",
    "decoder.final_layer_norm.weight": "decoder.final_norm.weight",
}

# Checkpoint keys known to carry nothing we need, skipped by name.
SKIPPABLE = (
    "encoder.embed_tokens.weight",  # tied copy of shared.weight
    "decoder.embed_tokens.weight",  # tied copy of shared.weight
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",  # unused: no bias in cross-attention
)


def rename_table(config: T5Config) -> dict[str, str]:
    """CHECKPOINT_TO_MODULE expanded for `config`: every checkpoint key -> our parameter name."""
    ffn = ("wi_0", "wi_1", "wo") if config.feed_forward_proj == "gated-gelu" else ("wi", "wo")
    table = {}
    for key, name in CHECKPOINT_TO_MODULE.items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        layers = config.num_layers if key.startswith("encoder") else config.num_decoder_layers
        for i in range(layers) if "{i}" in key else [0]:
            for p in "qkvo" if "{p}" in key else [""]:
                for w in ffn if "{w}" in key else [""]:
                    table[key.format(i=i, p=p, w=w)] = name.format(i=i, p=p, w=w)
    return table


def skippable_keys(config: T5Config) -> set[str]:
    """Checkpoint keys ignored by name: tied copies of shared.weight and unused tensors."""
    return set(SKIPPABLE) | ({"lm_head.weight"} if config.tie_word_embeddings else set())
