"""The paper's part: prompt tuning (PT), DePT, ADePT and EPT as small modules.

Notation of the papers (and of docs/methods.md): `l` vanilla prompt length
(100), `m` short prompt length, `s` longest input (`max_length`, 256), `d` model
width, `r` rank (bottleneck for ADePT), `E(x)` the frozen word embeddings of the
input. A method only prepares what goes into the frozen backbone:

    PT     [P ; E(x)]                          P   (l x d)
    DePT   [P_s ; E(x) + scale * (A @ B)[:L]]  P_s (m x d), A (s x r), B (r x d)
    ADePT  [P_s ; E(x) + FFN(E(x))]            token-wise offset, W1 (d x r), W2 (r x d)
    EPT    [P_r ; E(x) + scale * (A @ B)[:L]]  P_r = gated multi-space projection of
                                               P_f = P_s + softmax(P_s K^T / sqrt(d)) K

Every method gets at most PT's `l * d` trainable parameters (`budget`). Each
equation is one `nn.Module` below (`SoftPrompt`, `LowRankEmbeddingUpdate`,
`AdaptiveOffset`, `PromptFusion`, `MultiSpaceProjection`); `PromptConfig` holds
a method's hyper-parameters. This file imports torch and nothing of minidept:
`minidept/prompted.py` puts a method in front of a backbone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("pt", "dept", "adept", "ept")
INITS = ("vocab", "text", "random")
PUBLISHED_M = 60          # short prompt length of the published DePT runs (with r = 30 at d = 768)
VOCAB_INIT_POOL = 5000    # "vocab" init samples among the first 5,000 token ids
DEFAULT_INIT_TEXT = "Classify this text is postive or not:"  # the official code's init text (sic)


# ---- Parameter budget: every method gets at most PT's l * d trainable parameters ----

# What each method's trainable tensors cost: (everything that does not grow with r, the cost of one rank).
COSTS = {
    "pt": lambda m, s, d, N, k: (m * d, 0),                                # P (for PT, m is l)
    "dept": lambda m, s, d, N, k: (m * d, s + d),                          # P_s; A (s x r), B (r x d)
    "adept": lambda m, s, d, N, k: (m * d + d, 2 * d + 1),                 # P_s, b2; W1 (d x r), b1 (r), W2 (r x d)
    "ept": lambda m, s, d, N, k: (m * d + N * 2 * d * k + d * N, s + d),   # DePT + U_i, V_i (N of each), gate W_g
}


# The least value of each size (r: for the methods that have a rank).
LEAST = {"l": 0, "m": 0, "seed": 0, "r": 1, "s": 1, "max_length": 1, "d": 1, "n_spaces": 1, "k": 1}


def check_sizes(method: str, **sizes: int) -> None:
    """The rules of a method's name and sizes, checked here and nowhere else (`parameter_count`, `budget` and
    `PromptConfig` call it): a known method, each size an integer of at least `LEAST`, and m <= l."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < LEAST[name]:
            raise ValueError(f"{name}={value!r}: must be an integer of at least {LEAST[name]}"
                             + (" (leave r unset for the budget)" if name == "r" else ""))
    if "l" in sizes and sizes["m"] > sizes["l"]:
        raise ValueError(f"m={sizes['m']} is longer than l={sizes['l']}: the short prompt must not exceed the "
                         "vanilla prompt; lower m or raise l")


def parameter_count(method: str, m: int, r: int, s: int, d: int, n_spaces: int = 4, k: int = 1) -> int:
    """Trainable parameters of a method: `fixed + r * per_rank` from `COSTS` (PT: `m` is `l`, no `r`)."""
    check_sizes(method)
    fixed, per_rank = COSTS[method](m, s, d, n_spaces, k)
    return fixed + per_rank * r


def budget(method: str, l: int, m: int, s: int, d: int, n_spaces: int = 4, k: int = 1) -> int:
    """The largest rank `r` with `parameter_count(method, m, r, s, d) <= l * d`: `(l*d - fixed) // per_rank`.

    DePT: `r = floor((l - m) * d / (s + d))`. PT has no rank: 0. Raises ValueError on sizes
    that break `check_sizes` (`m > l`, ...) or when no rank >= 1 fits.
    """
    check_sizes(method, l=l, m=m, s=s, d=d, n_spaces=n_spaces, k=k)
    if method == "pt":
        return 0
    fixed, per_rank = COSTS[method](m, s, d, n_spaces, k)
    r = (l * d - fixed) // per_rank
    if r < 1:
        raise ValueError(f"{method} with l={l}, m={m}, s={s}, d={d} leaves no room for rank 1 "
                         f"({l * d - fixed} parameters left, one rank costs {per_rank}): lower m or raise l")
    return r


# ---- The methods, one module per equation -----------------------------------

class SoftPrompt(nn.Module):
    """The trainable prompt `P` (length x d): `P` of PT (length l), `P_s` of DePT/ADePT/EPT (length m).

    Initialisation (Lester et al. 2021; DePT's official code):
    - "vocab": rows of the frozen embedding table `embedding` (V x d), sampled
      without replacement (with replacement if `length` exceeds the pool) among
      the 5,000 most frequent token ids. Both T5's SentencePiece and GPT-2's BPE
      vocabularies are roughly ordered by frequency, so minidept takes the first
      5,000 ids, minus `exclude_ids` (the backbone's special tokens: pad, eos, ...).
    - "text": the embeddings of `text_ids`, cycled (or cut) to `length`. The official
      runs use "Classify this text is postive or not:" (sic) tokenised with the
      end-of-sequence token: 11 T5 ids (`minidept.train`'s default).
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
        if positions is None:
            if E.shape[1] > self.s:
                raise ValueError(f"input of {E.shape[1]} positions is longer than s={self.s}, the rows of A: "
                                 "truncate it (minidept/prompted.py does, with a counted warning) or raise max_length")
            return E + self.scale * (self.A[:E.shape[1]] @ self.B)      # (A @ B)[:L]: row i -> position i
        # generated tokens at given positions; beyond s (never trained on) they get no offset
        rows = self.A[positions.clamp(max=self.s - 1)] * (positions < self.s)[..., None]
        return E + self.scale * (rows @ self.B)


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


# ---- Configuration ----------------------------------------------------------

@dataclass(frozen=True)
class PromptConfig:
    """Hyper-parameters of one method; saved in every adapter file.

    `m` defaults to the published 60 for DePT/ADePT/EPT (and is `l` for PT);
    `r` defaults to the largest rank within PT's budget, filled by `resolve(d)`
    once the model width is known. `init` defaults to "vocab" because a config has
    no tokenizer: the official runs' "text" init (`minidept.train`'s default) needs
    the ids of its text, `init_text_ids`. Bad values raise ValueError on construction.
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
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}: choose one of {', '.join(INITS)}")
        if self.overflow not in ("truncate", "error"):
            raise ValueError(f"overflow={self.overflow!r}: choose 'truncate' or 'error'")
        if self.init_text_ids is not None:  # JSON gives a list; keep the dataclass hashable
            object.__setattr__(self, "init_text_ids", tuple(int(i) for i in self.init_text_ids))
        if self.init == "text" and not self.init_text_ids:
            raise ValueError("init='text' needs init_text_ids: the token ids of the init text with end-of-"
                             f"sequence, e.g. tuple(t5_tokenizer.encode({DEFAULT_INIT_TEXT!r}).ids)")
        if self.method == "pt":
            if self.m not in (None, self.l):
                raise ValueError(f"m={self.m} with method 'pt': PT's prompt has length l={self.l}; set l, not m")
            if self.r not in (None, 0):
                raise ValueError(f"r={self.r} with method 'pt': PT has no rank; leave r unset")
            object.__setattr__(self, "m", self.l)
            object.__setattr__(self, "r", 0)
        elif self.m is None:
            object.__setattr__(self, "m", PUBLISHED_M)
        rank = {"r": self.r} if self.method != "pt" and self.r is not None else {}
        check_sizes(self.method, l=self.l, m=self.m, max_length=self.max_length, n_spaces=self.n_spaces, k=self.k,
                    seed=self.seed, **rank)
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha}: must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")

    def resolve(self, d: int, n_positions: int | None = None) -> PromptConfig:
        """This config with `r` filled in for width `d`; checks that prompt + input fit `n_positions`."""
        if n_positions is not None and self.m + self.max_length > n_positions:
            raise ValueError(
                f"prompt ({self.m} tokens) + max_length={self.max_length} = {self.m + self.max_length} "
                f"exceeds the model's context of {n_positions} positions: lower max_length to "
                f"{n_positions - self.m} or shorten the prompt")
        if self.r is None:   # the largest rank within PT's budget
            return dataclasses.replace(self, r=budget(self.method, self.l, self.m, self.max_length, d,
                                                      self.n_spaces, self.k))
        if self.count(d) > self.l * d:   # an explicit r may go over it (the published LLaMA-2 runs do)
            warnings.warn(f"{self.method} with m={self.m}, r={self.r} has {self.count(d):,} trainable parameters, "
                          f"more than PT's l*d = {self.l * d:,}", stacklevel=2)
        return self

    def count(self, d: int) -> int:
        """Trainable parameters at width `d` (needs `r`, see `resolve`)."""
        return parameter_count(self.method, self.m, self.r or 0, self.max_length, d, self.n_spaces, self.k)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
