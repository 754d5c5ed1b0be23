"""A prompt method in front of a frozen backbone: where the prompt meets the input.

    input = [P ; E'(x)]             P: the method's prompt (P of PT, P_s, or EPT's P_r), m x d
    mask  = [1 ... 1 ; mask(x)]     E'(x) = E(x) + the method's offset (none for PT)

`PromptedModel(backbone, config)` builds the method's modules (`minidept/methods.py`) in
front of a frozen T5, GPT-2 or Llama. `input_prompt()` is P, `embed(input_ids)` is E'(x), and
`forward` joins them in the backbone family's way:
- encoder-decoder (T5): `[P ; E'(x)]` is the encoder's input, the decoder is unchanged;
- decoder-only (GPT-2, Llama): the prompt at positions 0..m-1, the text after it. Under
  causal attention the prompt never sees the text, so it runs once per batch and every row
  attends to its keys and values (`run_prompt`): the outputs of `[P ; E'(x)]` row by row,
  for B * m fewer positions.
A backbone is a minidept model (`minidept.load_model`) with `is_encoder_decoder`,
`model_type`, `d_model`, `context_length`, `config.eos_token_id`,
`get_input_embeddings()` and `lm_logits(hidden)`; encoder-decoders add `encode`,
`decode`, `shift_right` and `generate`, decoder-only models `hidden_states`.
The backbone is frozen and never modified: an adapter holds only the method's tensors
(`adapter_state_dict`; `minidept.save_adapter` writes it to a file).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .methods import (AdaptiveOffset, LowRankEmbeddingUpdate, MultiSpaceProjection, PromptConfig, PromptFusion,
                      SoftPrompt)
from .models.layers import greedy_decode

IGNORE_INDEX = -100   # label value the loss skips


class PromptedModel(nn.Module):
    """A frozen backbone with one method (`config.method`) in front of it.

    `forward(input_ids, attention_mask, labels=...)` returns the mean cross-entropy over
    labels != -100 (computed only where labels are); without labels, the logits of the
    input's own positions. `generate` decodes greedily and returns only the new tokens.
    Inputs are right-padded (real tokens first), so row `i` of DePT's `A @ B` always meets
    the i-th real token.
    """

    def __init__(self, backbone: nn.Module, config: PromptConfig):
        super().__init__()
        if not isinstance(getattr(backbone, "is_encoder_decoder", None), bool):
            raise TypeError(f"PromptedModel needs a minidept backbone (T5, GPT-2, Llama; minidept.load_model), "
                            f"got {type(backbone).__name__}")
        d = backbone.d_model
        self.config = c = config.resolve(d, backbone.context_length)
        self.backbone = backbone.requires_grad_(False)
        embedding = backbone.get_input_embeddings().weight
        special = {backbone.config.eos_token_id, getattr(backbone.config, "pad_token_id", None),
                   getattr(backbone.config, "bos_token_id", None)} - {None}
        self.prompt = SoftPrompt(c.m, d, c.init, embedding, c.init_text_ids, c.seed, exclude_ids=special)
        generator = torch.Generator().manual_seed(c.seed)
        self.offset = None                       # E(x) -> E'(x): DePT/EPT's A @ B, ADePT's FFN; PT has none
        if c.method in ("dept", "ept"):
            self.offset = LowRankEmbeddingUpdate(c.max_length, c.r, d, c.alpha, generator)
        elif c.method == "adept":
            self.offset = AdaptiveOffset(d, c.r, c.dropout, generator)
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

    # ---- the two pieces: P and E'(x) ----------------------------------------------

    def input_prompt(self) -> torch.Tensor:
        """P (m, d): P of PT, P_s of DePT and ADePT, EPT's P_r (P_s fused with K = scale * A B, projected)."""
        if self.config.method == "ept":
            return self.projection(self.fusion(self.prompt.P, self.offset.matrix()))
        return self.prompt.P

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """E'(x) (B, L, d) in the backbone's dtype: the frozen embeddings plus the method's offset.
        `positions` (B, L): the text positions of the tokens (generation), default 0..L-1."""
        embedding = self.backbone.get_input_embeddings()
        if self.folded is not None and not self.training and not torch.is_grad_enabled():
            E = F.embedding(input_ids, self.folded)             # ADePT, folded: E(x) + offset(E(x)) looked up
        elif self.config.method in ("dept", "ept"):
            E = self.offset(embedding(input_ids), positions)    # E(x) + scale * (A @ B)[positions]
        elif self.config.method == "adept":
            E = self.offset(embedding(input_ids))               # E(x) + FFN(E(x))
        else:
            E = embedding(input_ids)                            # PT: no offset
        return E.to(embedding.weight.dtype)

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """(input_ids, attention_mask) checked, and cut to s = max_length positions (a counted warning, or an
        error with `overflow="error"`): DePT's A has s rows."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must have the same shape")
        if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("inputs must be right-padded (real tokens first, then pads): DePT's offset "
                             "row i belongs to the i-th real token")
        s = self.config.max_length
        if input_ids.shape[1] > s:
            too_long = int(attention_mask[:, s:].any(dim=1).sum())
            if too_long:
                message = f"{too_long} input(s) longer than max_length={s} tokens"
                if self.config.overflow == "error":
                    raise ValueError(message + ": shorten them or raise max_length")
                self.truncated_inputs += too_long
                warnings.warn(f"{message} truncated ({self.truncated_inputs} so far)", stacklevel=3)
            input_ids, attention_mask = input_ids[:, :s], attention_mask[:, :s]
        return input_ids, attention_mask

    def forward(self, input_ids, attention_mask=None, labels=None, decoder_input_ids=None):
        input_ids, attention_mask = self.check_inputs(input_ids, attention_mask)
        P, E = self.input_prompt(), self.embed(input_ids)
        mask = torch.cat([attention_mask.new_ones(E.shape[0], P.shape[0]), attention_mask], dim=1)  # [1..1 ; mask]
        if self.backbone.is_encoder_decoder:
            return self.forward_encoder_decoder(P, E, mask, labels, decoder_input_ids)
        return self.forward_decoder_only(P, E, mask, labels)

    # ---- T5: [P ; E'(x)] is the encoder's input -------------------------------------

    def forward_encoder_decoder(self, P, E, mask, labels, decoder_input_ids):
        embeds = torch.cat([P.to(E.dtype).expand(E.shape[0], -1, -1), E], dim=1)          # [P ; E'(x)]
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5 needs decoder_input_ids or labels (decoder inputs are labels shifted right)")
            decoder_input_ids = self.backbone.shift_right(labels)
        encoder_hidden = self.backbone.encode(inputs_embeds=embeds, attention_mask=mask)
        hidden, _ = self.backbone.decode(decoder_input_ids, encoder_hidden, attention_mask=mask)
        if labels is None:
            return self.backbone.lm_logits(hidden)
        keep = labels != IGNORE_INDEX
        return F.cross_entropy(self.backbone.lm_logits(hidden[keep]).float(), labels[keep])   # (N, V) only

    # ---- GPT-2, Llama: the prompt at positions 0..m-1, run once per batch -------------

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

    def forward_decoder_only(self, P, E, mask, labels):
        (B, T, _), m = E.shape, P.shape[0]
        past, prompt_last = self.run_prompt(P, B)
        positions = torch.arange(m, m + T, device=E.device).expand(B, T)
        hidden, _ = self.backbone.hidden_states(inputs_embeds=E, attention_mask=mask, position_ids=positions,
                                                past_key_values=past)
        if labels is None:
            return self.backbone.lm_logits(hidden)
        # Position t predicts the token at t + 1: the prompt's last state predicts the first text
        # token (with no prompt, nothing does). Labels on pads never count.
        targets = labels[:, :T].masked_fill(mask[:, m:] == 0, IGNORE_INDEX)
        if m == 0:
            before, targets = hidden[:, :-1], targets[:, 1:]
        else:
            before = torch.cat([prompt_last, hidden[:, :-1]], dim=1)   # (B, T, d): the state before each token
        keep = targets != IGNORE_INDEX
        return F.cross_entropy(self.backbone.lm_logits(before[keep]).float(), targets[keep])   # never (B, T, V)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20) -> torch.Tensor:
        """Greedy decoding: the new tokens (B, n <= max_new_tokens).

        Decoder-only: each generated token gets the method's offset, as the target tokens did in
        training (DePT: the row of its text position, none beyond s; ADePT: its token's offset)."""
        input_ids, attention_mask = self.check_inputs(input_ids, attention_mask)
        P, E = self.input_prompt(), self.embed(input_ids)
        (B, T, _), m = E.shape, P.shape[0]
        mask = torch.cat([attention_mask.new_ones(B, m), attention_mask], dim=1)
        if self.backbone.is_encoder_decoder:
            embeds = torch.cat([P.to(E.dtype).expand(B, -1, -1), E], dim=1)               # [P ; E'(x)]
            return self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens)
        past, _ = self.run_prompt(P, B)
        positions = torch.arange(m, m + T, device=E.device).expand(B, T)
        return greedy_decode(self.backbone, E, mask, positions, max_new_tokens, past_key_values=past,
                             embed=lambda token, position: self.embed(token, position - m))

    # ---- training ---------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr_prompt: float, lr_lowrank: float) -> list[dict]:
        """Two AdamW groups, chosen by module (DePT needs two learning rates).

        "prompt" (`lr_prompt`): the soft prompt P / P_s. "lowrank" (`lr_lowrank`): the small
        matrices started at or near zero, whose rank is r or less: DePT/EPT's A and B, ADePT's
        bottleneck W1, W2 (and biases), EPT's U_i, V_i and gate W_g; the prompt's large rate
        would overshoot them.
        """
        prompt = list(self.prompt.parameters())
        lowrank = [p for module in (self.offset, getattr(self, "projection", None)) if module is not None
                   for p in module.parameters()]
        if {id(p) for p in prompt + lowrank} != {id(p) for p in self.trainable_parameters()}:
            raise RuntimeError("the two parameter groups must partition the trainable tensors exactly")
        return [{"name": "prompt", "params": prompt, "lr": lr_prompt},
                {"name": "lowrank", "params": lowrank, "lr": lr_lowrank}]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, by module path (`prompt.P`, `offset.A`, ...): what an adapter holds."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    # ---- ADePT: fold the token-wise offset into an embedding table ---------------

    def fold(self) -> PromptedModel:
        """ADePT: compute `E(x) + offset(E(x))` for the whole vocabulary once and look it up at inference.

        Used in eval mode without gradients (evaluation, `generate`); inference then costs
        what PT with m tokens costs. Call `fold()` again after changing the parameters
        (`minidept.io.adapters.load_adapter_into` does); `unfold()` goes back.
        """
        if self.config.method != "adept":
            raise ValueError(f"fold() is for ADePT's token-wise offset; method is {self.config.method!r}")
        self.folded = self.offset.fold(self.backbone.get_input_embeddings().weight)
        return self

    def unfold(self) -> PromptedModel:
        self.folded = None
        return self
