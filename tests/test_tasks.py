"""Tasks: names, the published defaults, the text-to-text casting, and scoring rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidept.methods import budget
from minidept.data.load import load_official_splits
from minidept.data.tasks import GPT2_ANSWER_CUE, TASKS, format_example, get_task, pad_punctuation, score, stsb_target

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
SUPERGLUE = ["boolq", "cb", "multirc", "wic", "wsc", "copa", "record"]
MRQA = ["nq", "hotpotqa", "searchqa", "newsqa"]
OTHER = ["winogrande", "yelp", "scitail", "paws"]


def test_every_task_of_the_paper():
    # the paper's 21 NLP tasks, SuperGLUE's COPA and ReCoRD, and the demo task made by code
    assert sorted(TASKS) == sorted(GLUE + SUPERGLUE + MRQA + OTHER + ["demo"])
    assert TASKS["demo"].benchmark == "synthetic" and TASKS["demo"].make_splits is not None
    assert {TASKS[n].benchmark for n in GLUE} == {"glue"}
    assert {TASKS[n].benchmark for n in SUPERGLUE} == {"superglue"}
    assert {TASKS[n].benchmark for n in MRQA} == {"mrqa"} and {TASKS[n].benchmark for n in OTHER} == {"other"}


@pytest.mark.parametrize("spelling", ["sst2", "sst-2", "SST-2", "SST2", "sst_2", "glue-sst2"])
def test_get_task_spellings(spelling):
    assert get_task(spelling).name == "sst2"


def test_get_task_other_spellings():
    assert get_task("STS-B").name == "stsb"
    assert get_task("superglue-cb").name == "cb"
    assert get_task("super_glue/MultiRC").name == "multirc"
    assert get_task("wsc.fixed").name == "wsc"
    assert get_task(TASKS["rte"]) is TASKS["rte"]
    # the official code's and the Hub's names of the new tasks
    for spelling, name in [("superglue-record", "record"), ("super_glue/copa", "copa"), ("yelp_polarity", "yelp"),
                           ("Yelp-2", "yelp"), ("natural_questions", "nq"), ("NaturalQuestionsShort", "nq"),
                           ("HotpotQA", "hotpotqa"), ("search_qa", "searchqa"), ("NewsQA", "newsqa"),
                           ("winogrande_xl", "winogrande"), ("SciTail", "scitail"), ("PAWS-Wiki", "paws")]:
        assert get_task(spelling).name == name


def test_unknown_task_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError) as error:
        get_task("sst3")
    assert "'sst3'" in str(error.value)
    for name in GLUE + SUPERGLUE + MRQA + OTHER:
        assert name in str(error.value)


def test_task_is_frozen():
    with pytest.raises(Exception):
        TASKS["sst2"].m = 1


# docs/methods.md §5: (m, r, lr_prompt, lr_lowrank, max_steps)
PUBLISHED = {
    "cola": (80, 15, 0.3, 5e-4, 40_000), "mrpc": (60, 30, 0.3, 5e-3, 10_000),
    "rte": (60, 30, 0.4, 1e-4, 30_000), "sst2": (60, 30, 0.3, 5e-4, 30_000),
    "stsb": (60, 30, 0.3, 1e-4, 30_000), "qnli": (60, 30, 0.4, 5e-3, 100_000),
    "qqp": (60, 30, 0.4, 5e-3, 100_000), "mnli": (60, 30, 0.3, 1e-4, 250_000),
    "boolq": (40, 45, 0.3, 5e-3, 30_000), "cb": (60, 30, 0.4, 1e-4, 30_000),
    "multirc": (60, 30, 0.3, 5e-3, 30_000), "wic": (60, 30, 0.3, 1e-3, 20_000),
    "wsc": (60, 30, 0.3, 1e-4, 20_000),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_defaults(name):
    """A task stores m; the published r is the largest rank within PT's budget (it is not stored)."""
    task = TASKS[name]
    r = budget("dept", l=task.l, m=task.m, s=256, d=768)
    assert (task.m, r, task.lr_prompt, task.lr_lowrank, task.max_steps) == PUBLISHED[name]
    assert task.max_length == (348 if name == "multirc" else 256) and task.l == 100 and task.make_splits is None
    assert not hasattr(task, "r")
    # the published m/r fill PT's budget at d=768, s=256, l=100: m*d + (s+d)*r = 76,800
    assert task.m * 768 + (256 + 768) * r == 76_800


# the official MRQA runs' logs (checkpoints/*/output.log): lr_prompt, lr_lowrank, max_steps; all m = 60, r = 24,
# max length 512, per_device_train_batch_size 16 with gradient_accumulation_steps 2 on one GPU: 32 a step
MRQA_RUNS = {"nq": (0.3, 1e-4, 300_000), "hotpotqa": (0.4, 1e-4, 250_000), "searchqa": (0.3, 1e-4, 250_000),
             "newsqa": (0.4, 1e-4, 200_000)}


@pytest.mark.parametrize("name", MRQA)
def test_mrqa_runs_settings(name):
    task = TASKS[name]
    assert (task.lr_prompt, task.lr_lowrank, task.max_steps) == MRQA_RUNS[name]
    assert (task.m, task.max_length, task.batch_size, task.grad_accum) == (60, 512, 32, 2)
    r = budget("dept", l=100, m=60, s=512, d=768)
    assert r == 24 and 60 * 768 + (512 + 768) * r == 76_800       # exactly PT's budget
    assert task.metrics == ("squad_em", "squad_f1")                # EM selects the checkpoint, as there


def test_defaults_of_the_tasks_without_published_runs():
    for name in ["copa", "winogrande", "yelp", "scitail", "paws", "record"]:
        task = TASKS[name]
        assert (task.m, task.lr_prompt, task.lr_lowrank) == (60, 0.3, 1e-4)
        assert task.max_steps == (100_000 if name in ("record", "yelp") else 30_000)
    # no released ReCoRD run: 32 a step like every released run, as 2 x 16 like MRQA (minidept's choice)
    assert (TASKS["record"].max_length, TASKS["record"].batch_size, TASKS["record"].grad_accum) == (512, 32, 2)
    assert TASKS["record"].metrics == ("squad_f1", "squad_em")
    assert all((TASKS[name].batch_size, TASKS[name].grad_accum) == (32, 1) for name in GLUE + OTHER + ["copa"])


def test_metrics_and_label_ids():
    assert TASKS["cola"].metrics[0] == "matthews"
    assert TASKS["cb"].metrics == ("macro_f1", "accuracy")
    assert TASKS["stsb"].metrics == ("pearson", "spearman") and TASKS["stsb"].is_regression
    assert TASKS["multirc"].metrics == ("multirc_f1",)
    assert TASKS["mrpc"].metrics == ("accuracy", "f1")
    # label ids as the `datasets` Hub versions number them
    assert TASKS["rte"].label_names.index("entailment") == 0
    assert TASKS["cb"].label_names == ("entailment", "contradiction", "neutral")
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["cb"].targets == ("0", "1", "2")


# One made-up example per task -> the exact (source, target).
FORMATS = {
    "cola": ({"sentence": "The cat sat.", "label": 1}, "sentence: The cat sat.", "1"),
    "sst2": ({"sentence": "a charming journey ", "label": 1}, "sentence: a charming journey ", "1"),
    "mrpc": ({"sentence1": "He left .", "sentence2": "He went .", "label": 1},
             "sentence1: He left . sentence2: He went .", "1"),
    "qqp": ({"question1": "Why?", "question2": "How?", "label": 0}, "question1: Why? question2: How?", "0"),
    "stsb": ({"sentence1": "A man.", "sentence2": "A guy.", "label": 3.8}, "sentence1: A man. sentence2: A guy.",
             "3.8"),
    "mnli": ({"premise": "It rains.", "hypothesis": "It is dry.", "label": 2},
             "premise: It rains. hypothesis: It is dry.", "2"),
    "qnli": ({"question": "Who?", "sentence": "Ann did.", "label": 0}, "question: Who? sentence: Ann did.", "0"),
    "rte": ({"sentence1": "A cat sat.", "sentence2": "A cat exists.", "label": 0},
            "sentence1: A cat sat. sentence2: A cat exists.", "0"),
    "boolq": ({"question": "is it", "passage": "It is.", "label": 1}, "question: is it passage: It is.", "1"),
    "cb": ({"premise": "P.", "hypothesis": "H.", "label": 2}, "premise: P. hypothesis: H.", "2"),
    "multirc": ({"paragraph": "<b>Sent 1: </b>Sue ran.<br>", "question": "Who ran?", "answer": "Sue", "label": 1,
                 "idx": {"paragraph": 0, "question": 0, "answer": 0}},
                "question: Who ran? answer: Sue paragraph: Sent 1: Sue ran. ", "1"),
    "wic": ({"sentence1": "A bank loan.", "sentence2": "The river bank.", "word": "bank", "label": 0},
            "sentence1: A bank loan. sentence2: The river bank. word: bank", "0"),
    "wsc": ({"text": "The trophy did not fit because it was big .", "span1_index": 1, "span1_text": "trophy",
             "span2_index": 6, "span2_text": "it", "label": 1},
            "text: The * trophy * did not fit because # it # was big .", "1"),
    "copa": ({"premise": "The man broke his toe.", "choice1": "He dropped a hammer.", "choice2": "He ran.",
              "question": "cause", "label": 0},
             "premise: The man broke his toe. choice1: He dropped a hammer. choice2: He ran.", "0"),
    # @highlight lines become sentences ("." added only where no end punctuation); entities joined by ", "
    "record": ({"passage": "Tom ran.\n@highlight\nTom won\n@highlight\nFans cheered", "query": "@placeholder won",
                "entities": ["Fans", "Tom"], "answers": ["Tom", "Tom Ford"]},
               "record query: @placeholder won entities: Fans, Tom passage: Tom ran. Tom won. Fans cheered", "Tom"),
    # T5's punctuation padding on question, context and answer; the first answer is the target. The
    # padded parts keep their edge spaces and are joined with one more (two spaces), as the official code
    "nq": ({"question": "who's U.S. head?", "context": "[PAR] Biden (2021-) is.", "answers": ["Biden", "J. Biden"]},
           "question: who ' s U . S . head ?  context:  [ PAR ] Biden ( 2021 - ) is . ", "Biden"),
    "newsqa": ({"question": "Where?", "context": "In Paris.", "answers": ["Paris."]},
               "question: Where ?  context: In Paris . ", "Paris . "),
    # both options (the official code writes option1 twice); target = answer - 1
    "winogrande": ({"sentence": "Ann beat Bo, _ was happy.", "option1": "Ann", "option2": "Bo", "answer": "1",
                    "label": 0}, "sentence: Ann beat Bo, _ was happy. option0: Ann option1: Bo", "0"),
    "yelp": ({"text": "Great tacos!", "label": 1}, "sentence: Great tacos!", "1"),
    "scitail": ({"sentence1": "Ice melts.", "sentence2": "Water freezes.", "gold_label": "neutral", "label": 1},
                "premise: Ice melts. hypothesis: Water freezes.", "1"),
    "paws": ({"id": 1, "sentence1": "A b.", "sentence2": "B a.", "label": 0}, "sentence1: A b. sentence2: B a.", "0"),
}


def test_every_task_has_a_casting_example():
    assert set(FORMATS) >= set(TASKS) - {"demo", "hotpotqa", "searchqa"}   # the MRQA sets share one casting


def test_pad_punctuation_is_t5s():
    assert pad_punctuation("U.S.") == "U . S . "
    assert pad_punctuation("François's   café_1") == "François ' s café_1"       # letters, digits, "_" stay
    assert pad_punctuation("naïve") == "naïve"           # a combining mark (decomposed ï) is not padded
    assert pad_punctuation("a\tb\n\nc") == "a b c" and pad_punctuation("$5") == " $ 5"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cn", "Cc")) | st.sampled_from(" \t\n.,'-_")))
def test_pad_punctuation_matches_t5s_regex(text):
    """T5's rule is written with the `regex` module's \\p{L}, \\p{N}, \\p{M}; ours with `re` and unicodedata.
    (They differ only on control characters 0x1c-0x1f and on code points one Unicode version leaves unassigned.)"""
    regex = pytest.importorskip("regex")
    padded = regex.sub(r"\s+", " ", regex.sub(r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ", text))
    assert pad_punctuation(text) == padded


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_example(name):
    example, source, target = FORMATS[name]
    assert format_example(name, example) == (source, target)


def test_wsc_pronoun_before_noun_and_multiword_span():
    # pronoun first: marking it does not shift the noun's index (only a noun before the pronoun does)
    example = {"text": "When it fell , the old vase broke .", "span1_index": 4, "span1_text": "the old vase",
               "span2_index": 1, "span2_text": "it", "label": 1}
    assert format_example("wsc", example)[0] == "text: When # it # fell , * the old vase * broke ."


def test_wsc_marks_as_the_official_code():
    # the noun's text differs in case from the sentence: it stays unmarked, and the pronoun's index is
    # still shifted by 2, so the pronoun is not found either (the official rule; before, it was marked)
    example = {"text": "The lawyer asked the witness , but he was reluctant .", "span1_index": 0,
               "span1_text": "the lawyer", "span2_index": 7, "span2_text": "he", "label": 0}
    assert format_example("wsc", example)[0] == "text: " + example["text"]
    # a word is non-spaces plus ONE whitespace character: after a double space nothing matches
    # (splitting on " " counted an empty word there and found "Bo" as word 3)
    example = {"text": "Ann  met Bo .", "span1_index": 0, "span1_text": "Ann", "span2_index": 3,
               "span2_text": "Bo", "label": 0}
    assert format_example("wsc", example)[0] == "text: * Ann *  met Bo ."
    # the span is a pattern: "Mr. Bond" matches "Mr. Bond" (and would match "Mrs Bond")
    example = {"text": "Mrs Bond saw him .", "span1_index": 0, "span1_text": "Mr. Bond", "span2_index": 3,
               "span2_text": "him", "label": 1}
    assert format_example("wsc", example)[0] == "text: * Mrs Bond * saw # him # ."


def mark_as_the_official_code(text: str, span: str, index: int, mark: str) -> str:
    """The official WSC rule, written apart from minidept's: skip `index` words (each one or more
    non-space characters and then exactly one whitespace character), then match `span` as a pattern."""
    at = 0
    for _ in range(index):
        start = at
        while at < len(text) and not text[at].isspace():
            at += 1
        if at == start or at == len(text):
            return text
        at += 1
    found = re.match(span, text[at:])
    if found is None:
        return text
    return text[:at] + f"{mark} {found.group()} {mark}" + text[at + found.end():]


def test_wsc_marking_on_every_real_row(data_dir):
    official = load_official_splits("wsc", data_dir)
    assert {k: len(v) for k, v in official.items()} == {"train": 554, "validation": 104}
    for rows in official.values():
        for row in rows:
            text = mark_as_the_official_code(row["text"], row["span1_text"], row["span1_index"], "*")
            shift = 2 if row["span1_index"] < row["span2_index"] else 0
            text = mark_as_the_official_code(text, row["span2_text"], row["span2_index"] + shift, "#")
            assert format_example("wsc", row)[0] == "text: " + text, row


@pytest.mark.parametrize("score_, text", [(3.8, "3.8"), (5.0, "5.0"), (0.0, "0.0"), (3.75, "3.8"),
                                          (1.25, "1.2"), (2.333, "2.3"), (3.7999999523, "3.8")])
def test_stsb_target_rounding(score_, text):
    # np.round rounds half to even on score*10: 37.5 -> 38, 12.5 -> 12; a float32 3.8 gives "3.8"
    assert stsb_target(score_) == text


def test_gpt2_answer_cue():
    assert "sentence: good" + GPT2_ANSWER_CUE == "sentence: good Label : "


# --------------------------------------------------------------------------- #
# Scoring: strip, exact match, unparsable counts as wrong; percent
# --------------------------------------------------------------------------- #

def test_score_accuracy_strips_and_matches_exactly():
    # " 1 " strips to "1" (right); "1." and "positive" are not exact matches (wrong)
    assert score("sst2", [" 1 ", "1.", "positive", "0"], ["1", "1", "1", "0"]) == {"accuracy": 50.0}


def test_score_binary_f1_flips_unparsable_to_the_wrong_class():
    # refs [1,0,0,1]; preds "1", "0", "?" (ref 0 -> predicted 1: a FP), "" (ref 1 -> predicted 0: a FN)
    # TP=1, FP=1, FN=1 -> F1 = 2/(2+1+1) = 50%; accuracy 2/4 = 50%
    assert score("mrpc", ["1", "0", "?", ""], ["1", "0", "0", "1"]) == {"accuracy": 50.0, "f1": 50.0}


def test_score_matthews_with_unparsable():
    # An unparsable prediction is a class of its own (official: sklearn on the strings).
    # refs [1,1,0,0], preds [1,"x",0,1]: s = 4 examples, c = 2 right; predicted counts 1:2, x:1, 0:1;
    # reference counts 1:2, 0:2. MCC = (c s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    # = (8 - (2*2 + 1*0 + 1*2)) / sqrt((16 - 6)(16 - 8)) = 2 / sqrt(80). (Flipping "x" to 0 gave 0.)
    result = score("cola", ["1", "x", "0", "1"], ["1", "1", "0", "0"])
    assert result["matthews"] == pytest.approx(100 * 2 / 80 ** 0.5)
    assert list(result) == ["matthews", "accuracy"] and result["accuracy"] == 50.0
    # two different unparsable strings are two classes: p = 1:1, x:1, y:1, 0:1 -> (8 - 4) / sqrt(12 * 8)
    assert score("cola", ["1", "x", "0", "y"], ["1", "1", "0", "0"])["matthews"] == pytest.approx(100 * 4 / 96 ** 0.5)


def test_score_cb_macro_f1():
    # refs [0,1,2,0]; preds [0,1,"maybe"->-1,0]: class 0 F1 1, class 1 F1 1, class 2 F1 0 -> 2/3
    result = score("cb", ["0", "1", "maybe", "0"], ["0", "1", "2", "0"])
    assert result == pytest.approx({"macro_f1": 100 * 2 / 3, "accuracy": 75.0})


def test_score_stsb_maps_unparsable_to_minus_one():
    # preds [1, 2, "n/a" -> -1, "nan" -> -1] vs refs [1, 2, 3, 4]
    result = score("stsb", ["1.0", "2.0", "n/a", "nan"], ["1.0", "2.0", "3.0", "4.0"])
    x, y = [1.0, 2.0, -1.0, -1.0], [1.0, 2.0, 3.0, 4.0]
    from minidept.data.metrics import pearson, spearman
    assert result == pytest.approx({"pearson": 100 * pearson(x, y), "spearman": 100 * spearman(x, y)})
    assert score("stsb", ["2.0"] * 3, ["1.0", "2.0", "3.0"]) == {"pearson": 0.0, "spearman": 0.0}


def test_score_rejects_mismatched_or_bad_references():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        score("sst2", ["1", "0"], ["1"])
    with pytest.raises(ValueError, match="references must be one of"):
        score("sst2", ["1"], ["positive"])


def test_squad_scores_take_every_gold_answer():
    # "the Eiffel Tower" normalises to "eiffel tower": EM with the first gold; "Paris" vs "London": 0
    assert score("record", ["the Eiffel Tower", "Paris"], [["Eiffel Tower", "Tower"], ["London"]]) == \
        {"squad_f1": 50.0, "squad_em": 50.0}
    # one string per example is one gold answer; MRQA lists EM first (it selects the checkpoint)
    result = score("nq", ["in Paris", ""], ["Paris", "x"])
    assert list(result) == ["squad_em", "squad_f1"]
    assert result == pytest.approx({"squad_em": 0.0, "squad_f1": 100 * (2 / 3) / 2})


def test_every_task_scores_a_perfect_run_at_100():
    for name, task in TASKS.items():
        targets = ["0.4", "3.8", "5.0"] if task.is_regression else list(task.targets) or ["Paris", "U . S ."]
        result = score(name, targets, targets)
        assert list(result) == list(task.metrics)
        assert result == pytest.approx({metric: 100.0 for metric in task.metrics}), name
