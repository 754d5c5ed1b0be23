"""Evaluation metrics of the DePT paper's tasks, as small numpy functions.

Each takes `(predictions, references)` as sequences of numbers (class ids, or floats
for correlations) and returns a float in natural units (`tasks.score` multiplies by
100); the SQuAD metrics of the extractive tasks take strings, and a list of gold
answers per example. Degenerate cases never give NaN: an F1 with no positives on
either side is 0, a correlation with a constant side is 0 (as the official DePT code
turns NaN into 0).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np


def _arrays(predictions: Sequence, references: Sequence, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions, dtype=dtype), np.asarray(references, dtype=dtype)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"predictions and references must be two flat lists of the same length, "
                         f"got shapes {p.shape} and {r.shape}")
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, r


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of predictions equal to their reference."""
    p, r = _arrays(predictions, references)
    return float(np.mean(p == r))


def _f1_of_class(p: np.ndarray, r: np.ndarray, positive: int) -> float:
    # F1 = 2 * precision * recall / (precision + recall) = 2 TP / (2 TP + FP + FN)
    tp = np.sum((p == positive) & (r == positive))
    fp = np.sum((p == positive) & (r != positive))
    fn = np.sum((p != positive) & (r == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Binary F1 of the positive class 1 (MRPC, QQP). A prediction other than 0 or 1 (unparsable)
    counts as the wrong class, `1 - reference`, as the official code's `f1_score_with_invalid`."""
    p, r = _arrays(predictions, references)
    return _f1_of_class(np.where(np.isin(p, (0, 1)), p, 1 - r), r, positive=1)


def macro_f1(predictions: Sequence[int], references: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over classes 0 .. num_classes-1 (CB).

    A prediction outside those classes (e.g. -1 for "unparsable") is a miss for
    its reference's class and a false positive for no class.
    """
    p, r = _arrays(predictions, references)
    return float(np.mean([_f1_of_class(p, r, positive=c) for c in range(num_classes)]))


# MultiRC's "F1 over all answers" (F1a): each example is one candidate answer labelled
# 1 (correct) or 0, so it is `f1` over the flat list of answers, pooled across questions.
multirc_f1 = f1


def matthews_corrcoef(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation (CoLA), every distinct value a class; 0 when undefined.

    With s examples, c of them right, and p_k / t_k predictions / references of class k:
    MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)), for two
    classes the familiar (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)). An unparsable
    prediction is a class of its own, as sklearn counts the raw strings in the official code.
    A constant side makes the denominator zero: the answer is 0, not NaN.
    """
    p, r = _arrays(predictions, references)
    classes = np.union1d(p, r)
    p_k, t_k = (np.sum(x[:, None] == classes, axis=0).astype(np.float64) for x in (p, r))
    s, c = float(p.size), float(np.sum(p == r))
    denominator = np.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    return float((c * s - p_k @ t_k) / denominator) if denominator else 0.0


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation (STS-B); 0 when either side is constant."""
    x, y = _arrays(predictions, references, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator else 0.0


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n; tied values all get the mean of the ranks they span ([5, 7, 5] -> [1.5, 3, 1.5])."""
    unique, inverse, counts = np.unique(np.asarray(values, dtype=np.float64),
                                        return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts          # 0-based position of each distinct value's first copy
    mean_rank = first + (counts + 1) / 2.0      # mean of the 1-based ranks first+1 .. first+count
    return mean_rank[inverse]


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman correlation (STS-B): Pearson of the average ranks; 0 when a side is constant."""
    _arrays(predictions, references, dtype=np.float64)
    return pearson(average_ranks(predictions), average_ranks(references))


# --------------------------------------------------------------------------- #
# SQuAD's exact match and token F1 (ReCoRD, the MRQA sets), as the official SQuAD v1.1 script
# --------------------------------------------------------------------------- #

def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD's rule)."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    # F1 of the two normalised strings' whitespace tokens, counted as multisets; 0 when nothing is shared
    pred, ref = prediction.split(), gold.split()
    same = sum((Counter(pred) & Counter(ref)).values())
    return 2 * same / (len(pred) + len(ref)) if same else 0.0


def _best_over_golds(score, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as lists of gold answers, at least one; "
                         f"got {len(predictions)} and {len(references)}")
    return float(np.mean([max(score(normalize_answer(p), normalize_answer(g)) for g in golds)
                          for p, golds in zip(predictions, references)]))


def squad_em(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Exact match after normalisation, the best over each example's gold answers, averaged."""
    return _best_over_golds(lambda p, g: float(p == g), predictions, references)


def squad_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Token F1 after normalisation, the best over each example's gold answers, averaged."""
    return _best_over_golds(_token_f1, predictions, references)
