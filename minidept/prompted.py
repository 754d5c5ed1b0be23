"""A prompt method in front of a frozen backbone: where the prompt meets the input.

    input = [P ; E'(x)]             P: the method's prompt (P of PT, P_s, or EPT's P_r), m x d
    mask  = [1 ... 1 ; mask(x)]     E'(x) = E(x) + the method's offset (none for PT)

`PromptedModel.join` computes these pieces for a right-padded batch;
`PromptedModel(backbone, config)` builds the class of the backbone's family:
`EncoderDecoderPrompted` (T5: `[P ; E'(x)]` is the encoder's input, the decoder is
unchanged) or `DecoderOnlyPrompted` (GPT-2, Llama: the prompt at positions 0..m-1, the
text after it, run as one sequence per row in effect, see its docstring).
A backbone is a minidept model (`minidept.load_model`) with `is_encoder_decoder`,
`model_type`, `d_model`, `context_length`, `config.eos_token_id`,
`get_input_embeddings()` and `lm_logits(hidden)`; encoder-decoders add `encode`,
`decode`, `shift_right` and `generate`, decoder-only models `hidden_states`.
The backbone is frozen and never modified: an adapter file holds only the method's tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import ADAPTER_FORMAT, CheckpointError, copy_into, read_adapter, save_tensors
from .layers import greedy_decode
from .methods import (AdaptiveOffset, LowRankEmbeddingUpdate, MultiSpaceProjection, PromptConfig, PromptFusion,
                      SoftPrompt)


def backbone_config_hash(backbone: nn.Module) -> str:
    """A short hash of the backbone's config: adapters remember which backbone they were trained on."""
    text = json.dumps(dataclasses.asdict(backbone.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def adapter_settings(metadata: dict[str, str], path) -> dict:
    """The method settings in an adapter's metadata (a JSON object of PromptConfig fields), checked: one
    CheckpointError naming the adapter and the key or value at fault."""
    try:
        settings = json.loads(metadata["config"])
    except (KeyError, TypeError, ValueError):
        settings = None
    if not isinstance(settings, dict) or "method" not in settings:
        raise CheckpointError(f"adapter {path}: its metadata holds no config object with a method (the settings "
                              "PromptedModel.save_adapter writes); re-save the adapter")
    unknown = sorted(set(settings) - {field.name for field in dataclasses.fields(PromptConfig)})
    if unknown:
        raise CheckpointError(f"adapter {path}: unknown config key(s) {', '.join(unknown)}; the keys are "
                              f"PromptConfig's fields ({', '.join(field.name for field in dataclasses.fields(PromptConfig))})")
    try:
        PromptConfig(**settings)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"adapter {path}: {error}") from None
    return settings


def adapter_config(metadata: dict[str, str], tensors: dict[str, torch.Tensor], backbone: nn.Module, path) -> PromptConfig:
    """An adapter's PromptConfig for `backbone`, checked before anything is built: its settings, the backbone's
    family and width, as many values as the settings imply (settings that disagree with the tensors, such as a
    max_length of 10**9, would otherwise allocate what they say) and finite values."""
    config = PromptConfig(**adapter_settings(metadata, path))
    model_type, d = backbone.model_type, backbone.d_model
    if metadata.get("model_type", model_type) != model_type or metadata.get("d_model") != str(d):
        raise CheckpointError(
            f"adapter {path} was trained on a {metadata.get('model_type', 'backbone')} with d_model="
            f"{metadata.get('d_model')}; this backbone is a {model_type} with d_model={d}: load it onto the "
            "backbone it was trained on")
    try:
        with warnings.catch_warnings():   # an over-budget note waits until the values below are checked
            warnings.simplefilter("ignore")
            config = config.resolve(d, backbone.context_length)
    except ValueError as error:
        raise CheckpointError(f"adapter {path}: {error}") from None
    held = sum(t.numel() for t in tensors.values())
    if config.count(d) != held:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise CheckpointError(f"adapter {path}: its settings ({config.method}, m={config.m}, r={config.r}, "
                              f"max_length={config.max_length}, d={d}) make {config.count(d):,} trainable values, "
                              f"its tensors ({shapes}) hold {held:,}: the settings do not belong to these tensors; "
                              "re-save the adapter")
    broken = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if broken:
        raise CheckpointError(f"adapter {path} holds NaN or infinite values ({', '.join(broken)}): it comes from a "
                              "diverged run; use an adapter saved before the divergence")
    return config


class PromptedModel(nn.Module):
    """A frozen backbone with one method (`config.method`) in front of it.

    `forward(input_ids, attention_mask, labels=...)` returns the mean cross-entropy over
    labels != -100 (computed only where labels are); without labels, the logits of the
    input's own positions. `generate` decodes greedily and returns only the new tokens.
    """

    def __new__(cls, backbone: nn.Module, config: PromptConfig):
        if cls is PromptedModel:   # pick the class of the backbone's family
            encoder_decoder = getattr(backbone, "is_encoder_decoder", None)
            if not isinstance(encoder_decoder, bool):
                raise TypeError(f"PromptedModel needs a minidept backbone (T5, GPT-2, Llama; minidept.load_model), "
                                f"got {type(backbone).__name__}")
            cls = EncoderDecoderPrompted if encoder_decoder else DecoderOnlyPrompted
        return super().__new__(cls)

    def __init__(self, backbone: nn.Module, config: PromptConfig):
        super().__init__()
        d = backbone.d_model
        self.config = c = config.resolve(d, backbone.context_length)
        self.backbone = backbone.requires_grad_(False)
        embedding = backbone.get_input_embeddings().weight
        special = {backbone.config.eos_token_id, getattr(backbone.config, "pad_token_id", None),
                   getattr(backbone.config, "bos_token_id", None)} - {None}
        self.prompt = SoftPrompt(c.m, d, c.init, embedding, c.init_text_ids, c.seed, exclude_ids=special)
        generator = torch.Generator().manual_seed(c.seed)
        self.update = None                       # E(x) -> E'(x); PT has none
        if c.method in ("dept", "ept"):
            self.update = LowRankEmbeddingUpdate(c.max_length, c.r, d, c.alpha, generator)
        elif c.method == "adept":
            self.update = AdaptiveOffset(d, c.r, c.dropout, generator)
        if c.method == "ept":
            self.fusion = PromptFusion()
            self.projection = MultiSpaceProjection(d, c.n_spaces, c.k, generator)
        self.to(embedding.device)                # the adapter stays float32 whatever the backbone's dtype
        self.train(backbone.training)
        self.eos_id = backbone.config.eos_token_id
        pad = getattr(backbone.config, "pad_token_id", None)
        self.pad_id = self.eos_id if pad is None else pad   # GPT-2 has no pad token; pads are masked anyway
        self.truncated_inputs = 0                # inputs longer than s cut so far (counted, warned)
        self.folded = None                       # ADePT after fold(): the per-token table E(x) + offset(E(x))

    # ---- the prompt and the input: the one join ---------------------------------

    def join(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             positions: torch.Tensor | None = None):
        """The method's three pieces for a right-padded batch: (P, E'(x), mask).

        P (m, d): the prompt, P (PT) or P_s (DePT, ADePT), or EPT's P_r.
        E'(x) (B, L, d): the frozen embeddings plus the method's offset, in the backbone's dtype.
            `positions` (B, L) are the text positions of the tokens (generation), default 0..L-1.
        mask (B, m + L): the attention mask over [P ; x].
        Inputs longer than s = max_length are cut to s (a counted warning) or refused
        (`overflow="error"`): DePT's A has s rows.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must have the same shape")
        if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("inputs must be right-padded (real tokens first, then pads): DePT's offset "
                             "row i belongs to the i-th real token")
        s = self.config.max_length
        if input_ids.shape[1] > s and positions is None:
            too_long = int(attention_mask[:, s:].any(dim=1).sum())
            if too_long:
                message = f"{too_long} input(s) longer than max_length={s} tokens"
                if self.config.overflow == "error":
                    raise ValueError(message + ": shorten them or raise max_length")
                self.truncated_inputs += too_long
                warnings.warn(f"{message} truncated ({self.truncated_inputs} so far)", stacklevel=3)
            input_ids, attention_mask = input_ids[:, :s], attention_mask[:, :s]

        P = self.prompt.P                                       # P (PT), P_s (DePT, ADePT)
        if self.config.method == "ept":                         # EPT: P_r from P_s fused with K = scale * A B
            P = self.projection(self.fusion(P, self.update.matrix()))
        embedding = self.backbone.get_input_embeddings()
        if self.folded is not None and not self.training and not torch.is_grad_enabled():
            E = F.embedding(input_ids, self.folded)             # ADePT, folded: E(x) + offset(E(x)) looked up
        elif self.config.method in ("dept", "ept"):
            E = self.update(embedding(input_ids), positions)    # E(x) + scale * (A @ B)[positions]
        elif self.config.method == "adept":
            E = self.update(embedding(input_ids))               # E(x) + FFN(E(x))
        else:
            E = embedding(input_ids)                            # PT: no offset
        mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], P.shape[0]), attention_mask], dim=1)
        return P, E.to(embedding.weight.dtype), mask

    # ---- training ---------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr_prompt: float, lr_lowrank: float) -> list[dict]:
        """Two AdamW groups, chosen by module (DePT needs two learning rates).

        `lr_prompt`: the soft prompt (P / P_s). `lr_lowrank`: DePT/EPT's A and B, ADePT's
        FFN, and EPT's projections U, V and gate W_g (small matrices started at or near
        zero, like A and B; the prompt's large rate would overshoot them).
        """
        prompt = list(self.prompt.parameters())
        lowrank = [p for module in (self.update, getattr(self, "projection", None)) if module is not None
                   for p in module.parameters()]
        if {id(p) for p in prompt + lowrank} != {id(p) for p in self.parameters() if p.requires_grad}:
            raise RuntimeError("the two parameter groups must partition the trainable tensors exactly")
        return [{"name": "prompt", "params": prompt, "lr": lr_prompt},
                {"name": "lowrank", "params": lowrank, "lr": lr_lowrank}]

    # ---- ADePT: fold the token-wise offset into an embedding table ---------------

    def fold(self) -> PromptedModel:
        """ADePT: compute `E(x) + offset(E(x))` for the whole vocabulary once and look it up at inference.

        Used in eval mode without gradients (evaluation, `generate`); inference then costs
        what PT with m tokens costs. Call `fold()` again after changing the parameters
        (`load_adapter` does); `unfold()` goes back.
        """
        if self.config.method != "adept":
            raise ValueError(f"fold() is for ADePT's token-wise offset; method is {self.config.method!r}")
        self.folded = self.update.fold(self.backbone.get_input_embeddings().weight)
        return self

    def unfold(self) -> PromptedModel:
        self.folded = None
        return self

    # ---- adapters: the trainable tensors, with the config as metadata -------------

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, by module path (`prompt.P`, `update.A`, ...)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def save_adapter(self, path: str | os.PathLike) -> None:
        """One safetensors file: the trainable tensors; the config and the backbone's identity as metadata
        (docs/adapter-format.md), with its Hub id and revision or folder when `load_model` loaded it."""
        source = {"base_model": getattr(self.backbone, "name_or_path", None),
                  "base_model_revision": getattr(self.backbone, "revision", None)}
        save_tensors(self.adapter_state_dict(), path, {
            "format": ADAPTER_FORMAT, "config": self.config.to_json(), "model_type": self.backbone.model_type,
            "d_model": str(self.backbone.d_model), "backbone_config_hash": backbone_config_hash(self.backbone),
            **{key: value for key, value in source.items() if value}})

    @classmethod
    def from_adapter(cls, path: str | os.PathLike, backbone: nn.Module, read=None) -> PromptedModel:
        """The prompted model of an adapter (a file, a run folder, a PEFT prompt-tuning folder or a Hub
        repository: `checkpoints.find_adapter`), rebuilt on `backbone` (checked against the adapter)."""
        metadata, tensors = read or read_adapter(path)
        model = PromptedModel(backbone, adapter_config(metadata, tensors, backbone, path))
        model.load_adapter(path, (metadata, tensors))
        return model

    def load_adapter(self, path: str | os.PathLike, read=None) -> None:
        """Copy an adapter's tensors into this model; the adapter must match its backbone and config."""
        metadata, tensors = read or read_adapter(path)
        config = adapter_config(metadata, tensors, self.backbone, path)
        config_hash = backbone_config_hash(self.backbone)
        if metadata.get("backbone_config_hash", config_hash) != config_hash:   # a PEFT adapter has none
            warnings.warn(f"adapter {path} was trained on a backbone with a different config "
                          f"(hash {metadata['backbone_config_hash']} vs {config_hash}); "
                          "outputs may not be what was trained", stacklevel=2)
        trained_on = metadata.get("base_model"), metadata.get("base_model_revision")
        here = getattr(self.backbone, "name_or_path", None), getattr(self.backbone, "revision", None)
        if trained_on[0] and here[0] and trained_on != here:   # names differ; the weights may still be the same
            warnings.warn(f"adapter {path} was trained on {' at revision '.join(filter(None, trained_on))}; "
                          f"this backbone is {' at revision '.join(filter(None, here))}", stacklevel=2)
        if config != self.config:
            raise CheckpointError(f"adapter {path} has config {metadata['config']}, this model has "
                                  f"{self.config.to_json()}: use PromptedModel.from_adapter(path, backbone)")
        copy_into(self.adapter_state_dict(), tensors, f"adapter {path}")
        if self.folded is not None:
            self.fold()


class EncoderDecoderPrompted(PromptedModel):
    """T5: `[P ; E'(x)]` is the encoder's input, with the mask extended by m ones; the decoder is unchanged."""

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, labels=None):
        P, text, mask = self.join(input_ids, attention_mask)
        embeds = torch.cat([P.to(text.dtype).expand(text.shape[0], -1, -1), text], dim=1)   # [P ; E'(x)]
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5 needs decoder_input_ids or labels (decoder inputs are labels shifted right)")
            decoder_input_ids = self.backbone.shift_right(labels)
        encoder_hidden = self.backbone.encode(inputs_embeds=embeds, attention_mask=mask)
        hidden, _ = self.backbone.decode(decoder_input_ids, encoder_hidden, attention_mask=mask)
        if labels is None:
            return self.backbone.lm_logits(hidden)
        keep = labels != -100
        return F.cross_entropy(self.backbone.lm_logits(hidden[keep]).float(), labels[keep])   # (N, V) only

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20) -> torch.Tensor:
        """Greedy decoding: the new tokens (B, n <= max_new_tokens)."""
        P, text, mask = self.join(input_ids, attention_mask)
        embeds = torch.cat([P.to(text.dtype).expand(text.shape[0], -1, -1), text], dim=1)
        return self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens)


class DecoderOnlyPrompted(PromptedModel):
    """GPT-2, Llama: `[P ; E'(x) ; pad]`, the prompt at positions 0..m-1 and the text at m.., labels shifted as usual.

    Under causal attention the prompt never sees the input, so it is run once per batch
    (batch 1) and every row attends to its keys and values: the outputs of `[P ; E'(x)]`
    row by row, for B * m fewer positions. minidept right-pads, so a token's DePT row is
    its position in the text whatever the batch (the official code left-pads GPT-2
    batches, putting pads between prompt and text).
    """

    def run_prompt(self, P: torch.Tensor, batch: int):
        """The prompt alone (batch 1): each layer's keys and values expanded to `batch` rows, and its
        last hidden state (batch, 1, d), which predicts the first text token. (None, None) when m = 0.
        In training the rows of a batch share the prompt's dropout mask."""
        if P.shape[0] == 0:
            return None, None
        dtype = self.backbone.get_input_embeddings().weight.dtype
        positions = torch.arange(P.shape[0], device=P.device)[None]
        hidden, past = self.backbone.hidden_states(inputs_embeds=P.to(dtype)[None], position_ids=positions,
                                                   use_cache=True)
        return [tuple(t.expand(batch, -1, -1, -1) for t in layer) for layer in past], hidden[:, -1:].expand(batch, -1, -1)

    def forward(self, input_ids, attention_mask=None, labels=None):
        P, text, mask = self.join(input_ids, attention_mask)
        (B, T, _), m = text.shape, P.shape[0]
        past, prompt_last = self.run_prompt(P, B)
        positions = torch.arange(m, m + T, device=text.device).expand(B, T)
        hidden, _ = self.backbone.hidden_states(inputs_embeds=text, attention_mask=mask, position_ids=positions,
                                                past_key_values=past)
        if labels is None:
            return self.backbone.lm_logits(hidden)
        # Position t predicts the token at t + 1: the prompt's last state predicts the first text
        # token (with no prompt, nothing does). Labels on pads never count.
        targets = labels[:, :T].masked_fill(mask[:, m:] == 0, -100)
        if m == 0:
            before, targets = hidden[:, :-1], targets[:, 1:]
        else:
            before = torch.cat([prompt_last, hidden[:, :-1]], dim=1)   # (B, T, d): the state before each token
        keep = targets != -100
        return F.cross_entropy(self.backbone.lm_logits(before[keep]).float(), targets[keep])   # never (B, T, V)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20) -> torch.Tensor:
        """Greedy decoding: the new tokens (B, n <= max_new_tokens). Each generated token gets the
        method's offset, as the target tokens did in training (DePT: the row of its text position,
        none beyond s; ADePT: its token's offset)."""
        P, text, mask = self.join(input_ids, attention_mask)
        (B, T, _), m = text.shape, P.shape[0]
        past, _ = self.run_prompt(P, B)
        positions = torch.arange(m, m + T, device=text.device).expand(B, T)
        return greedy_decode(self.backbone, text, mask, positions, max_new_tokens, past_key_values=past,
                             embed=lambda token, position: self.join(token, positions=position - m)[1])
