"""Metrics against values worked out by hand (the working is in each test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidept.data.metrics import (accuracy, average_ranks, f1, macro_f1, matthews_corrcoef, multirc_f1, normalize_answer, pearson, spearman, squad_em, squad_f1)

#            predictions        references
P, R = [1, 1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0, 1, 0]
# Confusion (positive = 1): TP = 3 (i=0,3,6), FP = 1 (i=1), FN = 1 (i=4), TN = 3 (i=2,5,7)


def test_accuracy_by_hand():
    assert accuracy(P, R) == 6 / 8                  # 6 of 8 positions agree


def test_f1_by_hand():
    # precision = 3/4, recall = 3/4 -> F1 = 2 * 9/16 / (6/4) = 0.75 = 2*TP / (2*TP + FP + FN) = 6/8
    assert f1(P, R) == pytest.approx(0.75)
    # precision = 1/1, recall = 1/3 -> F1 = 2 * (1/3) / (4/3) = 0.5
    assert f1([1, 0, 0], [1, 1, 1]) == pytest.approx(0.5)


def test_multirc_f1_is_f1_over_all_answers():
    # answers of two questions pooled: TP = 2, FP = 1, FN = 1 -> 2*2 / (4 + 1 + 1) = 2/3
    assert multirc_f1([1, 1, 0, 1, 0], [1, 0, 1, 1, 0]) == pytest.approx(2 / 3)


def test_matthews_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 8/16
    assert matthews_corrcoef(P, R) == pytest.approx(0.5)
    # TP=1, TN=1, FP=1, FN=1: (1 - 1) / sqrt(2*2*2*2) = 0
    assert matthews_corrcoef([1, 0, 1, 0], [1, 0, 0, 1]) == 0.0
    assert matthews_corrcoef([1, 0], [0, 1]) == pytest.approx(-1.0)


def test_matthews_with_a_third_class_by_hand():
    # An unparsable prediction (-1) is a class of its own. preds [1,-1,0,1] vs refs [1,1,0,0]:
    # s = 4, c = 2 right; predicted counts 1:2, -1:1, 0:1; reference counts 1:2, 0:2
    # (c s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) = (8 - 6) / sqrt(10 * 8)
    assert matthews_corrcoef([1, -1, 0, 1], [1, 1, 0, 0]) == pytest.approx(2 / math.sqrt(80))
    # three classes, all right: 1; and the value does not depend on the classes' names
    assert matthews_corrcoef([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    assert matthews_corrcoef([5, -3, 0, 5], [5, 5, 0, 0]) == pytest.approx(2 / math.sqrt(80))


def test_f1_counts_an_unparsable_prediction_as_the_wrong_class():
    # preds [1, -1, -1] vs refs [1, 1, 0]: the -1s become 0 (a FN) and 1 (a FP): 2*1 / (2 + 1 + 1)
    assert f1([1, -1, -1], [1, 1, 0]) == pytest.approx(0.5)


def test_macro_f1_by_hand():
    # preds [0,1,2,2,0,-1] vs refs [0,1,2,1,2,0], classes 0,1,2
    # class 0: TP=1 (i=0), FP=1 (i=4), FN=1 (i=5) -> 2/(2+1+1) = 1/2
    # class 1: TP=1 (i=1), FP=0,       FN=1 (i=3) -> 2/(2+0+1) = 2/3
    # class 2: TP=1 (i=2), FP=1 (i=3), FN=1 (i=4) -> 2/(2+1+1) = 1/2
    # mean = (1/2 + 2/3 + 1/2) / 3 = 5/9; the -1 is a miss for class 0 and a false positive for none
    assert macro_f1([0, 1, 2, 2, 0, -1], [0, 1, 2, 1, 2, 0], num_classes=3) == pytest.approx(5 / 9)
    # a class absent from both sides has F1 0 and still counts in the mean
    # (classes are 0..K-1, as sklearn's labels=range(K) in the official code)
    assert macro_f1([0, 1], [0, 1], num_classes=3) == pytest.approx(2 / 3)


def test_pearson_by_hand():
    # x = [1,2,3], y = [2,4,7]: centred x = [-1,0,1], y = [-7/3,-1/3,8/3]
    # sum xy = 7/3 + 8/3 = 5; sum x^2 = 2; sum y^2 = (49+1+64)/9 = 114/9 -> r = 5 / sqrt(2 * 114/9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(228 / 9))


def test_average_ranks_with_ties():
    # sorted: 1 (rank 1), 5, 5 (ranks 2,3 -> 2.5), 7 (rank 4)
    np.testing.assert_allclose(average_ranks([5, 1, 7, 5]), [2.5, 1, 4, 2.5])


def test_spearman_with_ties_by_hand():
    # ranks x = [1.5, 1.5, 3, 4], ranks y = [1, 2, 3, 4]
    # centred: x = [-1, -1, 0.5, 1.5], y = [-1.5, -0.5, 0.5, 1.5]
    # sum xy = 1.5 + 0.5 + 0.25 + 2.25 = 4.5; sum x^2 = 1+1+0.25+2.25 = 4.5; sum y^2 = 5
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(4.5/5) = sqrt(0.9)
    assert spearman([2.0, 2.0, 3.0, 9.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(0.9))


@pytest.mark.parametrize("metric", [matthews_corrcoef, f1, accuracy])
def test_constant_predictions_give_numbers_not_nan(metric):
    value = metric([0, 0, 0, 0], [1, 0, 1, 0])
    assert math.isfinite(value)


def test_degenerate_cases_are_zero():
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0         # constant prediction
    assert matthews_corrcoef([1, 0, 1], [1, 1, 1]) == 0.0         # constant reference
    assert f1([0, 0], [0, 0]) == 0.0                               # no positives anywhere
    assert pearson([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="zero examples"):
        accuracy([], [])


floats = st.lists(st.integers(-50, 50).map(float), min_size=2, max_size=30)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_correlations_match_scipy(data):
    scipy_stats = pytest.importorskip("scipy.stats")
    x = data.draw(floats)
    y = data.draw(st.lists(st.integers(-50, 50).map(float), min_size=len(x), max_size=len(x)))
    for ours, theirs in ((pearson, scipy_stats.pearsonr), (spearman, scipy_stats.spearmanr)):
        value = ours(x, y)
        assert -1.0 - 1e-12 <= value <= 1.0 + 1e-12
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert value == pytest.approx(float(theirs(x, y)[0]), abs=1e-9)
        else:
            assert value == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40))
def test_matthews_matches_pearson_of_binary_labels(pairs):
    # for 0/1 labels Matthews' coefficient is Pearson's correlation of the two vectors
    p, r = [a for a, _ in pairs], [b for _, b in pairs]
    assert matthews_corrcoef(p, r) == pytest.approx(pearson(p, r), abs=1e-12)


# --------------------------------------------------------------------------- #
# SQuAD EM and F1 (the SQuAD v1.1 evaluation script's rules), worked by hand
# --------------------------------------------------------------------------- #

SQUAD_CASES = [
    # prediction, gold answers, EM, F1 (working)
    ("The Cat!", ["cat"], 1, 1.0),                   # lower case, punctuation and "the" dropped: "cat" == "cat"
    ("a big red dog", ["the red dog"], 0, 0.8),      # "big red dog" vs "red dog": 2 shared, P 2/3, R 1 -> 0.8
    ("Barack Obama", ["Obama", "President Barack Obama"], 0, 0.8),   # 2/3 with the first, 0.8 with the second
    ("U.S.", ["US", "United States"], 1, 1.0),       # punctuation removed inside words: "us"
    ("U . S .", ["U.S."], 0, 0.0),                   # padded "u s" is not "us": why MRQA's golds are padded too
    ("x x y", ["x y y"], 0, 2 / 3),                  # multiset overlap {x: 1, y: 1} = 2 of 3 on each side
    ("", ["anything"], 0, 0.0),                      # empty prediction
    ("the", ["an"], 1, 0.0),                         # both normalise to "": equal, but no token to share
]


@pytest.mark.parametrize("prediction, golds, em, f1_", SQUAD_CASES)
def test_squad_em_and_f1_by_hand(prediction, golds, em, f1_):
    assert squad_em([prediction], [golds]) == em
    assert squad_f1([prediction], [golds]) == pytest.approx(f1_)


def test_squad_averages_over_examples():
    predictions, golds = [c[0] for c in SQUAD_CASES], [c[1] for c in SQUAD_CASES]
    assert squad_em(predictions, golds) == pytest.approx(np.mean([c[2] for c in SQUAD_CASES]))
    assert squad_f1(predictions, golds) == pytest.approx(np.mean([c[3] for c in SQUAD_CASES]))
    assert normalize_answer("  The  U.S.  Army, an army! ") == "us army army"
    with pytest.raises(ValueError, match="as many predictions as lists of gold answers"):
        squad_f1(["a"], [])
