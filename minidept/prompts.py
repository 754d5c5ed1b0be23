"""Prompt tuning (PT), DePT, ADePT and EPT: small modules around a frozen T5 or GPT-2.

Notation as in the papers and `docs/methods.md`: `l` vanilla prompt length
(100), `m` short prompt length, `s` maximum input length (`max_length`, 256),
`d` model width, `r` rank / bottleneck, `E(x)` the frozen word embeddings of the
input. Every method only prepares the backbone's inputs:

    PT     [P ; E(x)]                         P   (l x d)
    DePT   [P_s ; E(x) + scale * (A @ B)[:L]]  P_s (m x d), A (s x r), B (r x d)
    ADePT  [P_s ; E(x) + FFN(E(x))]            token-wise offset, W1 (d x r), W2 (r x d)
    EPT    [P_r ; E(x) + scale * (A @ B)[:L]]  P_r = gated multi-space projection of
                                               P_f = P_s + softmax(P_s K^T / sqrt(d)) K

The file reads top to bottom: the parameter budget, one `nn.Module` per
equation (`SoftPrompt`, `LowRankEmbeddingUpdate`, `AdaptiveOffset`,
`PromptFusion`, `MultiSpaceProjection`), the frozen `PromptConfig`, and
`PromptedModel`, which puts a method in front of a frozen backbone, trains,
generates and saves/loads adapters. The backbone is never modified: it is
frozen (`requires_grad=False`) and receives `inputs_embeds`, an attention mask,
positions and labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .gpt2 import GPT2
from .io import CheckpointError, save_tensors
from .t5 import T5

METHODS = ("pt", "dept", "adept", "ept")
INITS = ("vocab", "text", "random")
PUBLISHED_M = 60          # short prompt length of the published DePT runs (with r = 30 at d = 768)
VOCAB_INIT_POOL = 5000    # "vocab" init samples among the first 5,000 token ids
DEFAULT_INIT_TEXT = "Classify this text is postive or not:"  # the official code's init text (sic)
ADAPTER_FORMAT = "minidept-adapter-1"


# --------------------------------------------------------------------------- #
# Parameter budget: every method gets at most PT's l * d trainable parameters
# --------------------------------------------------------------------------- #

def _check_nonnegative_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r}: must be a non-negative integer")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def parameter_count(method: str, m: int, r: int, s: int, d: int, n_spaces: int = 4, k: int = 1) -> int:
    """Trainable parameters of a method (for PT, `m` is the prompt length `l` and `r` is unused).

    PT     m*d
    DePT   m*d + (s + d)*r                         P_s, A (s x r), B (r x d)
    ADePT  m*d + 2*d*r + r + d                     P_s, W1, b1, W2, b2 (biases counted)
    EPT    m*d + (s + d)*r + N*(2*d*k) + d*N       DePT + U_i, V_i (N of each) + gate W_g
    """
    _check_method(method)
    _check_nonnegative_ints(m=m, r=r, s=s, d=d, n_spaces=n_spaces, k=k)
    if method == "pt":
        return m * d
    if method == "dept":
        return m * d + (s + d) * r
    if method == "adept":
        return m * d + 2 * d * r + r + d
    return m * d + (s + d) * r + n_spaces * (2 * d * k) + d * n_spaces


def budget(method: str, l: int, m: int, s: int, d: int, n_spaces: int = 4, k: int = 1) -> int:
    """The largest rank `r` with `parameter_count(method, m, r, s, d) <= l * d`.

    DePT: `r = floor((l - m) * d / (s + d))`; ADePT: `floor(((l - m) * d - d) / (2d + 1))`;
    EPT: `floor(((l - m) * d - N*2*d*k - d*N) / (s + d))`. PT has no rank: returns 0.
    Raises ValueError when `m > l`, a value is negative, or no rank >= 1 fits.
    """
    _check_method(method)
    _check_nonnegative_ints(l=l, m=m, s=s, d=d, n_spaces=n_spaces, k=k)
    if m > l:
        raise ValueError(f"m={m} is longer than l={l}: the short prompt must not exceed the vanilla prompt; "
                         f"lower m or raise l")
    if method == "pt":
        return 0
    if s < 1 or d < 1:
        raise ValueError(f"s={s}, d={d}: the input length and the width must be at least 1")
    fixed = parameter_count(method, m, 0, s, d, n_spaces, k)        # everything that does not grow with r
    per_rank = parameter_count(method, m, 1, s, d, n_spaces, k) - fixed
    r = (l * d - fixed) // per_rank
    if r < 1:
        raise ValueError(
            f"{method} with l={l}, m={m}, s={s}, d={d} leaves no room for rank 1 "
            f"({l * d - fixed} parameters left, one rank costs {per_rank}): lower m or raise l")
    return r


# --------------------------------------------------------------------------- #
# The methods, one module per equation
# --------------------------------------------------------------------------- #

class SoftPrompt(nn.Module):
    """The trainable prompt `P` (length x d): `P` of PT (length l), `P_s` of DePT/ADePT/EPT (length m).

    Initialisation (Lester et al. 2021; DePT's official code):
    - "vocab": rows of the frozen embedding table `embedding` (V x d), sampled
      without replacement (with replacement if `length` exceeds the pool) among
      the 5,000 most frequent token ids. Both T5's SentencePiece and GPT-2's BPE
      vocabularies are roughly ordered by frequency, so minidept takes the first
      5,000 ids, minus `exclude_ids` (the backbone's special tokens: pad, eos, ...).
    - "text": the embeddings of `text_ids` (a tokenised text, e.g. the official
      "Classify this text is postive or not:"), repeated to `length`.
    - "random": normal, with the standard deviation of `embedding` when given
      (so the prompt lives at the scale of real tokens), else 1.
    The draw is seeded by `seed` and does not touch the global random state.
    """

    def __init__(self, length: int, d: int, init: str = "vocab", embedding: torch.Tensor | None = None,
                 text_ids=None, seed: int = 0, exclude_ids=()):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
        generator = torch.Generator().manual_seed(seed)
        if init == "random":
            std = embedding.float().std().item() if embedding is not None else 1.0
            P = torch.randn(length, d, generator=generator) * std
        else:
            if embedding is None:
                raise ValueError(f"init={init!r} needs the frozen embedding table (embedding=...)")
            table = embedding.detach().float().cpu()
            if init == "vocab":
                pool = torch.tensor([i for i in range(min(VOCAB_INIT_POOL, table.shape[0]))
                                     if i not in set(exclude_ids)])
                if length <= len(pool):
                    ids = pool[torch.randperm(len(pool), generator=generator)[:length]]
                else:
                    ids = pool[torch.randint(len(pool), (length,), generator=generator)]
            else:
                if not text_ids:
                    raise ValueError("init='text' needs the token ids of the init text (text_ids / init_text_ids)")
                text_ids = torch.as_tensor(list(text_ids), dtype=torch.long)
                ids = text_ids[torch.arange(length) % len(text_ids)]
            P = table[ids].clone()
        self.P = nn.Parameter(P)  # (length, d)

    def forward(self) -> torch.Tensor:
        return self.P


class LowRankEmbeddingUpdate(nn.Module):
    """DePT (Shi & Lipani, ICLR 2024, eq. 3): `E' = E(x) + scale * (A @ B)[:L]`.

    Row `i` of `A @ B` (s x d) is added to input position `i` (0 = the first real
    token); the prompt is never touched. `A` (s x r) ~ uniform(-1/sqrt(r), 1/sqrt(r)),
    `B` (r x d) = 0, so the update starts at exactly zero.
    Deviations from the paper, following the official code: `A` is uniform (the
    paper says Gaussian), and the update is scaled by `alpha / sqrt(r)` (alpha = 8;
    not in the paper). Deviation from the official code: it pads every input to
    exactly `s`; minidept slices the first `L` rows for a batch padded to its own
    length `L <= s`, which gives the same outputs on real tokens (pads are masked).
    """

    def __init__(self, s: int, r: int, d: int, alpha: float = 8.0, generator: torch.Generator | None = None):
        super().__init__()
        self.s, self.r, self.scale = s, r, alpha / math.sqrt(r)
        bound = 1 / math.sqrt(r)
        self.A = nn.Parameter(torch.empty(s, r).uniform_(-bound, bound, generator=generator))
        self.B = nn.Parameter(torch.zeros(r, d))

    def matrix(self) -> torch.Tensor:
        """`scale * (A @ B)`: one offset row per input position, (s, d)."""
        return self.scale * (self.A @ self.B)

    def forward(self, E: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`E` (B, L, d) with L <= s. `positions` (B, L) picks other rows (generation), default 0..L-1."""
        if positions is None and E.shape[1] > self.s:
            raise ValueError(f"input of {E.shape[1]} positions is longer than s={self.s}, the rows of A: "
                             "truncate it (PromptedModel does, with a warning) or raise max_length")
        if positions is None:
            offsets = self.matrix()[:E.shape[1]]                       # (A @ B)[:L]: row i -> position i
        else:  # generated tokens at given positions; beyond s (never trained on) they get no offset
            offsets = self.matrix()[positions.clamp(max=self.s - 1)] * (positions < self.s)[..., None]
        return E + offsets


class AdaptiveOffset(nn.Module):
    """ADePT (Tang, Hu, Liu, ICLR 2025): a token-wise, position-free offset from a shallow FFN.

        E' = E(x) + relu(dropout(E(x) @ W1 + b1)) @ W2 + b2

    `W1` (d x r) ~ uniform(-1/sqrt(r), 1/sqrt(r)); `b1`, `W2`, `b2` = 0, so the offset
    is exactly zero at initialisation. Dropout (0.1) is active in training only.
    The offset depends on the token id alone, so after training it can be folded
    into a per-token table (`fold`): inference then costs what PT with `m` tokens costs.
    """

    def __init__(self, d: int, r: int, dropout: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1 / math.sqrt(r)
        self.W1 = nn.Parameter(torch.empty(d, r).uniform_(-bound, bound, generator=generator))
        self.b1 = nn.Parameter(torch.zeros(r))
        self.W2 = nn.Parameter(torch.zeros(r, d))
        self.b2 = nn.Parameter(torch.zeros(d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return E + F.relu(self.dropout(E @ self.W1 + self.b1)) @ self.W2 + self.b2

    @torch.no_grad()
    def fold(self, embedding: torch.Tensor) -> torch.Tensor:
        """`E'` for every token of the vocabulary at once, (V, d): the inference-time embedding table."""
        was_training = self.training
        self.eval()  # no dropout at inference
        table = self(embedding.float()[None])[0]
        self.train(was_training)
        return table


class PromptFusion(nn.Module):
    """EPT prompt fusion (reconstruction, see below): `P_f = P_s + softmax(P_s K^T / sqrt(d)) K`.

    `K = scale * (A @ B)` (s x d) is DePT's low-rank matrix, so the short prompt
    attends over the position offsets; no parameters of its own. With `B = 0`,
    `K = 0` and `P_f = P_s` exactly.
    EPT (Lan et al., AAAI 2025) has no public code and its exact equations were
    not available to us; this follows the published description ("prompt fusion
    uses attention to let the low-rank part enrich the short prompt").
    """

    def forward(self, P_s: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        d = P_s.shape[-1]
        return P_s + torch.softmax(P_s @ K.T / math.sqrt(d), dim=-1) @ K


class MultiSpaceProjection(nn.Module):
    """EPT multi-space projection with a gate (reconstruction from the paper's description).

        P_i = P_f + P_f @ U_i @ V_i           i = 1..N, U_i (d x k), V_i (k x d) = 0
        g   = softmax(mean_rows(P_f) @ W_g)   W_g (d x N) = 0  -> uniform weights at start
        P_r = sum_i g_i P_i = P_f + sum_i g_i (P_f @ U_i @ V_i)

    The second form of `P_r` is the same value (the g_i sum to one); written this
    way, `V = 0` gives `P_r = P_f` exactly in floating point. `U_i` ~
    uniform(-1/sqrt(d), 1/sqrt(d)) (the paper gives no init; this is nn.Linear's scale).
    """

    def __init__(self, d: int, n_spaces: int = 4, k: int = 1, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1 / math.sqrt(d)
        self.U = nn.Parameter(torch.empty(n_spaces, d, k).uniform_(-bound, bound, generator=generator))
        self.V = nn.Parameter(torch.zeros(n_spaces, k, d))
        self.W_g = nn.Parameter(torch.zeros(d, n_spaces))

    def forward(self, P_f: torch.Tensor) -> torch.Tensor:
        g = torch.softmax(P_f.mean(dim=0) @ self.W_g, dim=-1)                  # (N,)
        residuals = torch.einsum("md,ndk,nke->nme", P_f, self.U, self.V)       # (N, m, d): P_f U_i V_i
        return P_f + torch.einsum("n,nmd->md", g, residuals)


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class PromptConfig:
    """Hyper-parameters of one method; saved in every adapter file.

    `m` defaults to the published 60 for DePT/ADePT/EPT (and is `l` for PT);
    `r` defaults to the largest rank within PT's budget, filled by `resolve(d)`
    once the model width is known. Bad values raise ValueError on construction.
    """
    method: str                          # "pt", "dept", "adept" or "ept"
    l: int = 100                         # vanilla prompt length: PT's length and everyone's budget l*d
    m: int | None = None                 # short prompt length (PT: = l)
    r: int | None = None                 # rank (DePT, EPT) or bottleneck (ADePT); None = budget(...)
    max_length: int = 256                # s: longest input; DePT/EPT's A has s rows
    init: str = "vocab"                  # prompt init: "vocab", "text" or "random"
    init_text_ids: tuple | None = None   # token ids of the init text for init="text"
    alpha: float = 8.0                   # DePT/EPT update scale alpha / sqrt(r)
    dropout: float = 0.1                 # ADePT's FFN dropout
    n_spaces: int = 4                    # EPT: number of projection spaces N
    k: int = 1                           # EPT: rank of each space's U_i V_i
    seed: int = 0                        # seeds every initialisation
    overflow: str = "truncate"           # inputs longer than max_length: "truncate" (counted warning) or "error"

    def __post_init__(self):
        _check_method(self.method)
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}: choose one of {', '.join(INITS)}")
        if self.overflow not in ("truncate", "error"):
            raise ValueError(f"overflow={self.overflow!r}: choose 'truncate' or 'error'")
        if self.init_text_ids is not None:  # JSON gives a list; keep the dataclass hashable
            object.__setattr__(self, "init_text_ids", tuple(int(i) for i in self.init_text_ids))
        if self.init == "text" and not self.init_text_ids:
            raise ValueError("init='text' needs init_text_ids: the token ids of the init text, e.g. "
                             f"tuple(tokenizer.encode({DEFAULT_INIT_TEXT!r}).ids)")
        if self.method == "pt":
            if self.m not in (None, self.l):
                raise ValueError(f"m={self.m} with method 'pt': PT's prompt has length l={self.l}; set l, not m")
            if self.r not in (None, 0):
                raise ValueError(f"r={self.r} with method 'pt': PT has no rank; leave r unset")
            object.__setattr__(self, "m", self.l)
            object.__setattr__(self, "r", 0)
        elif self.m is None:
            object.__setattr__(self, "m", PUBLISHED_M)
        _check_nonnegative_ints(l=self.l, m=self.m, max_length=self.max_length, n_spaces=self.n_spaces,
                                k=self.k, seed=self.seed)
        if self.m > self.l:
            raise ValueError(f"m={self.m} is longer than l={self.l}: the short prompt must not exceed the "
                             f"vanilla prompt; lower m or raise l")
        if self.max_length < 1 or self.n_spaces < 1 or self.k < 1:
            raise ValueError(f"max_length={self.max_length}, n_spaces={self.n_spaces}, k={self.k}: "
                             "each must be at least 1")
        if self.r is not None and self.method != "pt":
            _check_nonnegative_ints(r=self.r)
            if self.r < 1:
                raise ValueError(f"r={self.r}: the rank must be at least 1 (leave r unset for the budget)")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha}: must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")

    @property
    def n_prompt(self) -> int:
        """Prompt tokens put in front of the input: l for PT, m otherwise."""
        return self.m

    def resolve(self, d: int, n_positions: int | None = None) -> PromptConfig:
        """This config with `r` filled in for width `d`; checks the prompt fits `n_positions` (GPT-2)."""
        if n_positions is not None and self.n_prompt + self.max_length > n_positions:
            raise ValueError(
                f"prompt ({self.n_prompt} tokens) + max_length={self.max_length} = "
                f"{self.n_prompt + self.max_length} exceeds the model's context of {n_positions} "
                f"positions: lower max_length to {n_positions - self.n_prompt} or shorten the prompt")
        if self.r is not None:
            resolved = self
        else:
            resolved = dataclasses.replace(self, r=budget(self.method, self.l, self.m, self.max_length, d,
                                                           self.n_spaces, self.k))
        count = resolved.count(d)
        if count > self.l * d:
            warnings.warn(f"{self.method} with m={self.m}, r={resolved.r} has {count:,} trainable parameters, "
                          f"more than PT's l*d = {self.l * d:,}", stacklevel=2)
        return resolved

    def count(self, d: int) -> int:
        """Trainable parameters at width `d` (needs `r`, see `resolve`)."""
        return parameter_count(self.method, self.m, self.r or 0, self.max_length, d, self.n_spaces, self.k)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# --------------------------------------------------------------------------- #
# A method in front of a frozen backbone
# --------------------------------------------------------------------------- #

def _backbone_facts(backbone: nn.Module) -> tuple[str, int, int | None]:
    """(model_type, width d, context length or None) of a minidept backbone."""
    if isinstance(backbone, T5):
        return "t5", backbone.config.d_model, None
    if isinstance(backbone, GPT2):
        return "gpt2", backbone.config.n_embd, backbone.config.n_positions
    raise TypeError(f"PromptedModel needs a minidept T5 or GPT2 (minidept.load_model), got {type(backbone).__name__}")


def backbone_config_hash(backbone: nn.Module) -> str:
    """A short hash of the backbone's config: adapters remember which backbone they were trained on."""
    text = json.dumps(dataclasses.asdict(backbone.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PromptedModel(nn.Module):
    """A frozen T5 or GPT-2 with one prompt method in front of it.

    T5: the prompt goes on the encoder input only, `[P ; E'(x)]`, with the encoder
    mask extended by P ones; decoder and labels are unchanged.
    GPT-2: `[P ; E'(x) ; pad]` with prompt positions 0..P-1, text positions P..,
    the mask extended and labels -100 on the prompt. minidept right-pads, so every
    real token keeps a fixed position whatever the batch (deviation: DePT's
    official code left-pads GPT-2 batches, putting the pads between prompt and text).
    Under causal attention the prompt never sees the input, so it is run once per
    forward (batch 1) and the text attends to its keys and values (`share_prompt`).

    `forward(input_ids, attention_mask, [decoder_input_ids,] labels)` returns the
    logits of the input's own positions without labels, the mean cross-entropy
    over labels != -100 with labels (computed only where labels are).
    """

    def __init__(self, backbone: nn.Module, config: PromptConfig):
        super().__init__()
        self.model_type, d, n_positions = _backbone_facts(backbone)
        self.config = config.resolve(d, n_positions)
        self.backbone = backbone.requires_grad_(False)
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        special = {backbone.config.eos_token_id,
                   getattr(backbone.config, "pad_token_id", None), getattr(backbone.config, "bos_token_id", None)}
        embedding = backbone.get_input_embeddings().weight
        self.prompt = SoftPrompt(c.n_prompt, d, c.init, embedding, c.init_text_ids, c.seed,
                                 exclude_ids={i for i in special if i is not None})
        self.update = None
        if c.method in ("dept", "ept"):
            self.update = LowRankEmbeddingUpdate(c.max_length, c.r, d, c.alpha, generator)
        elif c.method == "adept":
            self.update = AdaptiveOffset(d, c.r, c.dropout, generator)
        if c.method == "ept":
            self.fusion = PromptFusion()
            self.projection = MultiSpaceProjection(d, c.n_spaces, c.k, generator)
        self.to(embedding.device)            # the backbone is already there; its dtype is kept
        self.train(backbone.training)
        self.truncated_inputs = 0  # inputs longer than max_length cut so far (counted, warned)
        self.share_prompt = True   # GPT-2: run the prompt once for the batch (False: once per row, as one sequence)
        self._prompt_cache = (None, None)
        self._folded = None         # ADePT: (key, per-token table) once fold() was called

    # ---- the prompt and the input embeddings ---------------------------------

    def prompt_matrix(self) -> torch.Tensor:
        """The P x d matrix put in front of the input: P (PT), P_s (DePT, ADePT), P_r (EPT)."""
        P_s = self.prompt()
        if self.config.method == "ept":
            return self.projection(self.fusion(P_s, self.update.matrix()))
        return P_s

    def embed_inputs(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`E'(x)`, (B, L, d): frozen embeddings plus the method's offset (positions default 0..L-1)."""
        embedding = self.backbone.get_input_embeddings()
        if self.config.method == "adept" and self._folded is not None and not self.training \
                and not torch.is_grad_enabled():
            table = self._folded_table()
            return F.embedding(input_ids, table).to(embedding.weight.dtype)
        E = embedding(input_ids)
        if self.config.method in ("dept", "ept"):
            E = self.update(E, positions)
        elif self.config.method == "adept":
            E = self.update(E)
        return E.to(embedding.weight.dtype)

    def _prepend_prompt(self, text: torch.Tensor, attention_mask: torch.Tensor):
        """`[P ; E'(x)]` (B, P + L, d) and the mask with P ones in front."""
        B = text.shape[0]
        P = self.prompt_matrix().to(text.dtype)
        embeds = torch.cat([P.expand(B, -1, -1), text], dim=1)
        mask = torch.cat([attention_mask.new_ones(B, P.shape[0]), attention_mask], dim=1)
        return embeds, mask

    def _fit_inputs(self, input_ids, attention_mask, labels=None):
        """Default mask; right padding check; inputs longer than s truncated (counted warning) or refused."""
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
                message = (f"{too_long} input(s) longer than max_length={s} tokens")
                if self.config.overflow == "error":
                    raise ValueError(message + ": shorten them or raise max_length")
                self.truncated_inputs += too_long
                warnings.warn(f"{message} truncated ({self.truncated_inputs} so far)", stacklevel=3)
            input_ids, attention_mask = input_ids[:, :s], attention_mask[:, :s]
            if labels is not None and self.model_type == "gpt2":
                labels = labels[:, :s]
        return input_ids, attention_mask, labels

    # ---- forward ---------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """Logits (B, T, V) of the input's own positions without labels; the mean loss with labels."""
        input_ids, attention_mask, labels = self._fit_inputs(input_ids, attention_mask, labels)
        if self.model_type == "t5":
            return self._forward_t5(input_ids, attention_mask, decoder_input_ids, labels)
        if decoder_input_ids is not None:
            raise ValueError("decoder_input_ids is for T5; GPT-2 predicts the next token of input_ids")
        return self._forward_gpt2(input_ids, attention_mask, labels)

    def _forward_t5(self, input_ids, attention_mask, decoder_input_ids, labels):
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5 needs decoder_input_ids or labels (decoder inputs are labels shifted right)")
            decoder_input_ids = self.backbone.shift_right(labels)
        embeds, mask = self._prepend_prompt(self.embed_inputs(input_ids), attention_mask)
        encoder_hidden = self.backbone.encode(inputs_embeds=embeds, attention_mask=mask)
        hidden, _ = self.backbone.decode(decoder_input_ids, encoder_hidden, attention_mask=mask)
        if labels is None:
            return self.backbone.lm_logits(hidden)
        keep = labels != -100
        logits = self.backbone.lm_logits(hidden[keep])          # (N, V) only where labels are
        return F.cross_entropy(logits.float(), labels[keep])

    def _forward_gpt2(self, input_ids, attention_mask, labels):
        B, T = input_ids.shape
        P = self.config.n_prompt
        text = self.embed_inputs(input_ids)
        if self.share_prompt and P > 0:
            # The prompt comes first under causal attention: it never sees the input, so its hidden
            # states, keys and values are the same in every row. Run it once (batch 1) and let the
            # text attend to its keys and values: B * P fewer positions to compute and store.
            # In training the prompt's dropout mask is then shared by the rows of the batch.
            prompt_last, past = self._prompt_states()
            mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
            positions = torch.arange(P, P + T, device=input_ids.device).expand(B, T)  # text positions P..
            hidden, _ = self.backbone.hidden_states(
                inputs_embeds=text, attention_mask=mask, position_ids=positions,
                past_key_values=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in past])
            prompt_last = prompt_last.expand(B, -1, -1)
        else:  # [P ; E'(x)] as one sequence per row (the reference the shared path is tested against)
            embeds, mask = self._prepend_prompt(text, attention_mask)
            positions = torch.arange(P + T, device=input_ids.device).expand(B, P + T)  # prompt 0..P-1, text P..
            hidden, _ = self.backbone.hidden_states(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
            prompt_last, hidden = hidden[:, P - 1:P], hidden[:, P:]
        if labels is None:
            return self.backbone.lm_logits(hidden)
        # Position t predicts the token at t + 1, so the prompt's last state predicts the first text
        # token (with no prompt, nothing does). Labels on pads never count.
        targets = labels.masked_fill(attention_mask == 0, -100)
        if P == 0:
            before, targets = hidden[:, :-1], targets[:, 1:]
        else:
            before = torch.cat([prompt_last, hidden[:, :-1]], dim=1)  # (B, T, d): the state before each token
        keep = targets != -100
        logits = self.backbone.lm_logits(before[keep])   # (N, V): never the full (B, T, V)
        return F.cross_entropy(logits.float(), targets[keep])

    # ---- inference-time caches -------------------------------------------------

    def _parameter_key(self, parameters) -> tuple:
        """Changes whenever one of `parameters` is modified in place (optimizer step, load) or replaced.

        Writes through `p.data` bypass version counters: modify parameters under
        `torch.no_grad()` instead (as `load_adapter` does).
        """
        embedding = self.backbone.get_input_embeddings().weight
        return tuple((p._version, p.data_ptr()) for p in parameters) + (embedding.device, embedding.dtype)

    def _prompt_states(self):
        """GPT-2: the prompt run alone (batch 1): its last hidden state (1, 1, d) and each layer's
        keys and values (1, H, P, head_dim). When no gradient is needed (eval mode, no_grad) they
        are computed once per parameter state and kept."""
        def run():
            P = self.prompt_matrix().to(self.backbone.get_input_embeddings().weight.dtype)[None]  # (1, P, d)
            positions = torch.arange(P.shape[1], device=P.device)[None]
            hidden, past = self.backbone.hidden_states(inputs_embeds=P, position_ids=positions, use_cache=True)
            return hidden[:, -1:], past

        if self.training or torch.is_grad_enabled():
            return run()
        key = self._parameter_key(self.trainable_parameters())
        if self._prompt_cache[0] != key:
            self._prompt_cache = (key, run())
        return self._prompt_cache[1]

    def fold(self) -> PromptedModel:
        """ADePT: use the per-token table `E(x) + offset(E(x))` at inference (no gradient needed).

        The table is used in eval mode when no gradient is needed (under torch.no_grad,
        e.g. evaluation and `generate`), and recomputed whenever the offset's parameters
        change. Inference then costs what PT with `m` tokens costs. `unfold()` goes back.
        """
        if self.config.method != "adept":
            raise ValueError(f"fold() is for ADePT's token-wise offset; method is {self.config.method!r}")
        self._folded = (None, None)
        self._folded_table()
        return self

    def unfold(self) -> PromptedModel:
        self._folded = None
        return self

    def _folded_table(self) -> torch.Tensor:
        embedding = self.backbone.get_input_embeddings().weight
        key = self._parameter_key(self.update.parameters())
        if self._folded[0] != key:
            self._folded = (key, self.update.fold(embedding))
        return self._folded[1]

    # ---- generation ------------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20) -> torch.Tensor:
        """Greedy decoding; returns only the new tokens (B, n <= max_new_tokens)."""
        input_ids, attention_mask, _ = self._fit_inputs(input_ids, attention_mask)
        if self.model_type == "t5":
            embeds, mask = self._prepend_prompt(self.embed_inputs(input_ids), attention_mask)
            return self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens)
        return self._generate_gpt2(input_ids, attention_mask, max_new_tokens)

    def _generate_gpt2(self, input_ids, attention_mask, max_new_tokens):
        """Greedy GPT-2 with a key/value cache, right-padded rows, the prompt's keys/values reused.

        Our own loop rather than `backbone.generate`: every generated token is an input
        of the next step and must get the method's offset, as the target tokens did in
        training (DePT: the row of its position; ADePT: its token's offset). A token
        generated beyond max_length = s gets no DePT/EPT offset (A has s rows).
        """
        B, T = input_ids.shape
        P = self.config.n_prompt
        lengths = attention_mask.sum(dim=1)                         # right padding: real tokens first
        n_positions = self.backbone.config.n_positions
        if P + int(lengths.max()) + max_new_tokens - 1 > n_positions:   # the last new token is never fed back
            raise ValueError(f"prompt ({P}) + input ({int(lengths.max())}) + max_new_tokens={max_new_tokens} - 1 "
                             f"exceeds the model's context of {n_positions} positions: lower max_new_tokens")
        text = self.embed_inputs(input_ids)
        mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
        if self.share_prompt and P > 0:
            past = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in self._prompt_states()[1]]
            embeds, positions = text, torch.arange(P, P + T)
        else:
            embeds, _ = self._prepend_prompt(text, attention_mask)
            positions, past = torch.arange(P + T), None
        positions = positions.to(input_ids.device).expand(B, -1)
        hidden, past = self.backbone.hidden_states(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                                   past_key_values=past, use_cache=True)
        last = hidden[torch.arange(B), hidden.shape[1] - T + lengths - 1]   # each row's last real token
        eos = self.backbone.config.eos_token_id
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        for step in range(max_new_tokens):
            token = self.backbone.lm_logits(last).argmax(dim=-1).masked_fill(done, eos)
            new_tokens.append(token)
            done |= token == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            text_position = (lengths + step)[:, None]                  # (B, 1): where this token sits in the text
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            hidden, past = self.backbone.hidden_states(
                inputs_embeds=self.embed_inputs(token[:, None], text_position), attention_mask=mask,
                position_ids=P + text_position, past_key_values=past, use_cache=True)
            last = hidden[:, -1]
        if not new_tokens:
            return input_ids.new_zeros(B, 0)
        return torch.stack(new_tokens, dim=1)

    # ---- training --------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr_prompt: float, lr_lowrank: float) -> list[dict]:
        """Two AdamW groups, chosen by module (DePT needs two learning rates).

        `lr_prompt`: the soft prompt (P / P_s). `lr_lowrank`: DePT/EPT's A and B, ADePT's
        FFN, and EPT's projections U, V and gate W_g (small matrices started at or near
        zero, like A and B; the prompt's large rate would overshoot them).
        """
        prompt = list(self.prompt.parameters())
        lowrank = [p for module in self.modules()
                   if isinstance(module, (LowRankEmbeddingUpdate, AdaptiveOffset, MultiSpaceProjection))
                   for p in module.parameters(recurse=False)]
        trainable = {id(p) for p in self.trainable_parameters()}
        if len(prompt) + len(lowrank) != len(trainable) or {id(p) for p in prompt + lowrank} != trainable:
            raise RuntimeError("the two parameter groups must partition the trainable tensors exactly")
        return [{"name": "prompt", "params": prompt, "lr": lr_prompt},
                {"name": "lowrank", "params": lowrank, "lr": lr_lowrank}]

    # ---- adapters --------------------------------------------------------------

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, by module path (`prompt.P`, `update.A`, ...)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def save_adapter(self, path: str | os.PathLike) -> None:
        """One .safetensors file: the trainable tensors, and the config + backbone identity as metadata."""
        metadata = {"format": ADAPTER_FORMAT, "config": self.config.to_json(), "model_type": self.model_type,
                    "d_model": str(_backbone_facts(self.backbone)[1]),
                    "backbone_config_hash": backbone_config_hash(self.backbone)}
        save_tensors(self.adapter_state_dict(), path, metadata)

    @classmethod
    def from_adapter(cls, path: str | os.PathLike, backbone: nn.Module) -> PromptedModel:
        """Rebuild the prompted model saved by `save_adapter` on `backbone` (checked against the file)."""
        metadata, tensors = read_adapter(path)
        model = cls(backbone, PromptConfig(**json.loads(metadata["config"])))
        model.load_adapter(path, _read=(metadata, tensors))
        return model

    def load_adapter(self, path: str | os.PathLike, _read=None) -> None:
        """Load an adapter's tensors into this model; the file must match its backbone and config."""
        metadata, tensors = _read or read_adapter(path)
        model_type, d, _ = _backbone_facts(self.backbone)
        if metadata["model_type"] != model_type or int(metadata["d_model"]) != d:
            raise CheckpointError(
                f"adapter {path} was trained on a {metadata['model_type']} with d_model={metadata['d_model']}; "
                f"this backbone is a {model_type} with d_model={d}: load it onto the backbone it was trained on")
        if metadata["backbone_config_hash"] != backbone_config_hash(self.backbone):
            warnings.warn(f"adapter {path} was trained on a backbone with a different config "
                          f"(hash {metadata['backbone_config_hash']} vs {backbone_config_hash(self.backbone)}); "
                          "outputs may not be what was trained", stacklevel=2)
        if PromptConfig(**json.loads(metadata["config"])) != self.config:
            raise CheckpointError(f"adapter {path} has config {metadata['config']}, this model has "
                                  f"{self.config.to_json()}: use PromptedModel.from_adapter(path, backbone)")
        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        mismatched = [f"{n}: {tuple(tensors[n].shape)} vs {tuple(own[n].shape)}"
                      for n in sorted(set(own) & set(tensors)) if tensors[n].shape != own[n].shape]
        if missing or unexpected or mismatched:
            lines = [f"adapter {path} does not fit this model:"]
            for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
                if items:
                    lines.append(f"  {title}: {', '.join(items)}")
            raise CheckpointError("\n".join(lines))
        with torch.no_grad():  # in-place copies bump the version counters, so caches see the change
            for name, p in own.items():
                p.copy_(tensors[name])


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter file, with a clear error when it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} could not be read as safetensors ({error}); it may be truncated") from error
    if metadata.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not a minidept adapter (metadata format={metadata.get('format')!r}); "
                              "adapters are written by PromptedModel.save_adapter")
    return metadata, tensors
