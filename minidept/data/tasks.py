"""The tasks, cast as text-to-text: the 21 NLP tasks of the DePT paper, SuperGLUE's COPA and ReCoRD, and the demo.

Each task is a frozen `Task` record: its source fields, label names, metrics, and
the settings of the released DePT T5-base runs where there are some, minidept's
choices elsewhere (docs/methods.md section 5): the defaults a user gets.
`format_example(task, example) -> (source, target)` is the casting of the official
code (section 6): no task prefix, the fields as `name: value` joined by spaces (or
the task's own template, `Task.source`), the label id as the target ("0", "1";
STS-B the score to one decimal, "3.8"). Extractive tasks (ReCoRD and the MRQA sets)
answer with text: `Task.answers` gives an example's gold answers and the first is
the training target. `score(task, predictions, references)` is an exact string match
after stripping, in PERCENT like the paper (an unparsable prediction counts as
wrong), or SQuAD's EM and F1 against a list of gold answers per example (evaluation
passes the golds as the official code sees them, after a trip through the tokenizer:
`data.load.round_trip_gold`). Examples are plain dicts with the field names of the
Hugging Face `datasets` versions and, for classification, an
integer `label` (STS-B: float).
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import metrics as M


@dataclass(frozen=True)
class Task:
    name: str                       # canonical short name: "sst2", "cb", ...
    benchmark: str                  # "glue", "superglue", "mrqa" or "other" (Table 2 of the paper)
    fields: tuple[str, ...]         # example fields that make the source, in order
    label_names: tuple[str, ...]    # label id i is label_names[i] (as in `datasets`); () for STS-B and extractive tasks
    metrics: tuple[str, ...]        # names from METRICS; the first one selects the checkpoint
    # The released DePT T5-base runs' settings, or minidept's choices where no run was released
    # (docs/methods.md section 5): the defaults a user gets.
    # (r is not stored: it follows from the budget, r = 30 for m = 60 at d = 768.)
    m: int                          # short prompt length
    lr_prompt: float                # learning rate of the short prompt P_s
    lr_lowrank: float               # learning rate of A and B
    max_steps: int
    max_length: int = 256           # s: maximum input length in tokens
    is_regression: bool = False     # STS-B: the target is a number, scored by correlation
    l: int = 100                    # vanilla prompt length: PT's length and everyone's budget l*d
    batch_size: int = 32            # examples per optimizer step
    grad_accum: int = 1             # the released runs' micro-batches per step (MRQA: 2 of 16 on one GPU)
    make_splits: Callable[[], dict[str, list[dict]]] | None = None   # a task made by code (the demo)
    source: Callable[[dict], str] | None = None            # the task's own template (None: `name: value` per field)
    answers: Callable[[dict], list[str]] | None = None     # extractive tasks: an example's gold answers
    label_key: str = "label"        # the field of a `datasets` example that holds its label

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def targets(self) -> tuple[str, ...]:
        """The target strings a classification task's model must produce ("0", "1", ...)."""
        return tuple(str(i) for i in range(self.num_classes))


def pad_punctuation(text: str) -> str:
    """T5's punctuation padding (MRQA): a space each side of every character that is not a letter,
    digit, mark, underscore or space; then runs of whitespace become one space ("U.S." -> "U . S . ")."""
    padded = re.sub(r"[^\w\s]", lambda m: m[0] if unicodedata.category(m[0])[0] == "M" else f" {m[0]} ", text)
    return re.sub(r"\s+", " ", padded)


def _record_source(example: dict) -> str:
    # "@highlight" lines become sentences: after end punctuation just a space, else ". "
    passage = re.sub(r'(\.|\?|\!|"|\')\n@highlight\n', r"\1 ", example["passage"])
    passage = re.sub(r"\n@highlight\n", ". ", passage)
    entities = example["entities"]
    entities = entities if isinstance(entities, str) else ", ".join(entities)
    return f"record query: {example['query']} entities: {entities} passage: {passage}"


def _mrqa_source(example: dict) -> str:
    return f"question: {pad_punctuation(example['question'])} context: {pad_punctuation(example['context'])}"


def _mrqa_answers(example: dict) -> list[str]:
    return [pad_punctuation(answer) for answer in example["answers"]]


def _winogrande_source(example: dict) -> str:
    # both options (the official code shows option1 twice: docs/reproduction.md, the deviations)
    return f"sentence: {example['sentence']} option0: {example['option1']} option1: {example['option2']}"


def _mark_span(text: str, span: str, word_index: int, mark: str) -> str:
    """Put `mark` around `span` where it starts after `word_index` words of `text`.

    T5's WSC preprocessing as the official DePT code writes it: a word is a run of
    non-spaces plus one whitespace character, the span text is used as a regular
    expression, and the marks are separate words, "* trophy *". Where the span does
    not match there, the text is left unmarked.
    """
    return re.sub(rf"^((?:\S+\s){{{word_index}}})({span})", rf"\1{mark} \2 {mark}", text, count=1)


def _wsc_text(example: dict) -> str:
    """WSC's text with the noun marked `* noun *` and the pronoun `# pronoun #`."""
    text = _mark_span(example["text"], example["span1_text"], example["span1_index"], "*")
    # the two "*" words count before the pronoun when the noun comes first, marked or not (official code)
    shift = 2 if example["span1_index"] < example["span2_index"] else 0
    return _mark_span(text, example["span2_text"], example["span2_index"] + shift, "#")


def _remove_markup(text: str) -> str:
    # MultiRC paragraphs carry HTML: <br> line breaks and <b>Sent 1: </b> labels
    return re.sub(r"</?b>", "", text.replace("<br>", " "))


def _wsc_source(example: dict) -> str:
    return f"text: {_wsc_text(example)}"


def _multirc_source(example: dict) -> str:
    return " ".join(f"{name}: {_remove_markup(example[name])}" for name in ("question", "answer", "paragraph"))


_BINARY = ("False", "True")     # SuperGLUE's boolean labels, as `datasets` names them
_MRQA = dict(fields=("question", "context"), label_names=(), metrics=("squad_em", "squad_f1"), m=60,
             lr_lowrank=1e-4, max_length=512, batch_size=32, grad_accum=2, source=_mrqa_source,
             answers=_mrqa_answers)

TASKS: dict[str, Task] = {t.name: t for t in [
    # ----- GLUE ------------------------------------------------------------------------------
    Task("cola", "glue", ("sentence",), ("unacceptable", "acceptable"), ("matthews", "accuracy"),
         m=80, lr_prompt=0.3, lr_lowrank=5e-4, max_steps=40_000),
    Task("sst2", "glue", ("sentence",), ("negative", "positive"), ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=5e-4, max_steps=30_000),
    Task("mrpc", "glue", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
         m=60, lr_prompt=0.3, lr_lowrank=5e-3, max_steps=10_000),
    Task("qqp", "glue", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
         m=60, lr_prompt=0.4, lr_lowrank=5e-3, max_steps=100_000),
    Task("stsb", "glue", ("sentence1", "sentence2"), (), ("pearson", "spearman"),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=30_000, is_regression=True),
    Task("mnli", "glue", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=250_000),      # the released run's; App. C: 200,000
    Task("qnli", "glue", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
         m=60, lr_prompt=0.4, lr_lowrank=5e-3, max_steps=100_000),
    Task("rte", "glue", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
         m=60, lr_prompt=0.4, lr_lowrank=1e-4, max_steps=30_000),
    # ----- SuperGLUE -------------------------------------------------------------------------
    Task("boolq", "superglue", ("question", "passage"), _BINARY, ("accuracy",),
         m=40, lr_prompt=0.3, lr_lowrank=5e-3, max_steps=30_000),
    Task("cb", "superglue", ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"),
         ("macro_f1", "accuracy"), m=60, lr_prompt=0.4, lr_lowrank=1e-4, max_steps=30_000),
    Task("multirc", "superglue", ("question", "answer", "paragraph"), _BINARY, ("multirc_f1",),
         m=60, lr_prompt=0.3, lr_lowrank=5e-3, max_steps=30_000, max_length=348, source=_multirc_source),
    Task("wic", "superglue", ("sentence1", "sentence2", "word"), _BINARY, ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=1e-3, max_steps=20_000),
    Task("wsc", "superglue", ("text",), _BINARY, ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=20_000, source=_wsc_source),
    # ----- SuperGLUE's COPA and ReCoRD (no released DePT runs: minidept's choices, docs/methods.md 5) ---
    Task("copa", "superglue", ("premise", "choice1", "choice2"), ("choice1", "choice2"), ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=30_000),
    Task("record", "superglue", ("query", "entities", "passage"), (), ("squad_f1", "squad_em"),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=100_000, max_length=512, grad_accum=2,
         source=_record_source, answers=lambda example: list(example["answers"])),
    # ----- MRQA 2019 (the released runs: m = 60, r = 24 at s = 512, 32 examples a step as 2 x 16;
    # EM selects, as there) ------------------------------------------------------------------------
    Task("nq", "mrqa", **_MRQA, lr_prompt=0.3, max_steps=300_000),
    Task("hotpotqa", "mrqa", **_MRQA, lr_prompt=0.4, max_steps=250_000),
    Task("searchqa", "mrqa", **_MRQA, lr_prompt=0.3, max_steps=250_000),
    Task("newsqa", "mrqa", **_MRQA, lr_prompt=0.4, max_steps=200_000),
    # ----- the other Table 2 tasks (no released runs; the paper grid-searched m and both rates:
    # these are minidept's defaults, `reproduce table2 --grid` runs the grid) ----------------------
    Task("winogrande", "other", ("sentence", "option1", "option2"), ("1", "2"), ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=30_000, source=_winogrande_source, label_key="answer"),
    # Yelp-2 trains on 100,000 rows, where the paper's rule (30,000 steps below 100,000 examples, 300,000
    # above) does not decide: 100,000 steps is minidept's choice
    Task("yelp", "other", ("text",), ("negative", "positive"), ("accuracy",), m=60, lr_prompt=0.3,
         lr_lowrank=1e-4, max_steps=100_000, source=lambda example: f"sentence: {example['text']}"),
    Task("scitail", "other", ("sentence1", "sentence2"), ("entailment", "neutral"), ("accuracy",), m=60,
         lr_prompt=0.3, lr_lowrank=1e-4, max_steps=30_000, label_key="gold_label",
         source=lambda example: f"premise: {example['sentence1']} hypothesis: {example['sentence2']}"),
    Task("paws", "other", ("sentence1", "sentence2"), ("different", "paraphrase"), ("accuracy",),
         m=60, lr_prompt=0.3, lr_lowrank=1e-4, max_steps=30_000),
]}


# ----- the demo: a synthetic sentiment task made by code ----------------------------------------
POSITIVE = ("good", "great", "superb", "lovely", "brilliant", "charming", "delightful", "moving", "fun", "clever")
NEGATIVE = ("bad", "awful", "boring", "dull", "terrible", "weak", "clumsy", "tedious", "flat", "silly")
SUBJECTS = ("the film", "this movie", "the plot", "the acting", "the ending", "the music", "the script", "it")
TEMPLATES = ("{s} was {w}", "{s} is {w}", "{s} felt {w} to me", "i found {s} {w}", "honestly , {s} was {w}")


def synthetic_sentiment(sizes=(("train", 2000, 1), ("validation", 200, 2), ("test", 200, 3))) -> dict[str, list[dict]]:
    """The demo task's splits, always the same: {"sentence", "label"} (1 = positive), half of each class.

    Cast like SST-2 ("sentence: the film was superb" -> "1"); `(split, size, seed)` per split.
    """
    splits = {}
    for split, n, seed in sizes:
        rng = random.Random(seed)
        examples = []
        for i in range(n):
            label = i % 2
            word = rng.choice(POSITIVE if label else NEGATIVE)
            examples.append({"sentence": rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=word), "label": label})
        rng.shuffle(examples)
        splits[split] = examples
    return splits


# Settings sized for a short CPU run: l = 20, DePT m = 4 (r = (20 - 4) * 64 / (64 + 64) = 8 at d = 64).
TASKS["demo"] = Task("demo", "synthetic", ("sentence",), ("negative", "positive"), ("accuracy",), m=4,
                     lr_prompt=0.3, lr_lowrank=1e-2, max_steps=200, max_length=64, l=20,
                     make_splits=synthetic_sentiment)


# other names of the tasks (after lower-casing and dropping spaces, "_", "-", "." and "/")
ALIASES = {"yelppolarity": "yelp", "yelp2": "yelp", "naturalquestions": "nq", "naturalquestionsshort": "nq",
           "winograndexl": "winogrande", "pawswiki": "paws", "pawslabeledfinal": "paws"}


def get_task(name: str | Task) -> Task:
    """The task called `name`, in any common spelling: "sst2", "sst-2", "SST-2", "superglue-cb"."""
    if isinstance(name, Task):
        return name
    # "SST-2", "sst_2", "super_glue/CB", "superglue-cb", "wsc.fixed" -> "sst2", "cb", "wsc"
    key = re.sub(r"[\s_\-./]", "", str(name).lower())
    key = (re.sub(r"^(superglue|glue)", "", key) or key).removesuffix("fixed")
    key = ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[key]


# --------------------------------------------------------------------------- #
# Examples -> text
# --------------------------------------------------------------------------- #

def stsb_target(score: float) -> str:
    """STS-B's target string: the 0-5 similarity rounded to one decimal, "3.8".

    `np.round` (round half to even on score*10) as in the official code; the
    score is first rounded to 3 decimals, the precision of the files, so that a
    float32 value from the Hub and a float64 value from the TSV give one string.
    """
    return f"{np.round(round(float(score), 3), 1):.1f}"


def format_example(task: Task | str, example: dict) -> tuple[str, str]:
    """(source, target) of one example in the text-to-text casting of docs/methods.md section 6.

    >>> format_example("rte", {"sentence1": "A cat sat.", "sentence2": "A cat exists.", "label": 0})
    ('sentence1: A cat sat. sentence2: A cat exists.', '0')

    An extractive task's target is its first gold answer (`task.answers(example)[0]`).
    """
    task = get_task(task)
    if task.source is not None:
        source = task.source(example)
    else:
        source = " ".join(f"{name}: {example[name]}" for name in task.fields)
    if task.answers is not None:
        return source, task.answers(example)[0]
    target = stsb_target(example["label"]) if task.is_regression else str(int(example["label"]))
    return source, target


GPT2_ANSWER_CUE = " Label : "
# The official runs generate with `max_length = generation_max_length = 20` (docs/methods.md section 5).
GENERATION_MAX_LENGTH = 20


def answer_tokens(encoder_decoder: bool) -> int:
    """The most new tokens greedy decoding writes, as the official runs' `max_length = 20` allows.

    An encoder-decoder's `max_length` counts the decoder's start token: T5 writes at most 19.
    A decoder-only model gets `max_length = s + 20` over its `s` (left-padded) input
    positions: 20, and a decoder-only row of an extractive task keeps room for them after the cue.
    """
    return GENERATION_MAX_LENGTH - 1 if encoder_decoder else GENERATION_MAX_LENGTH


# --------------------------------------------------------------------------- #
# Predictions -> scores
# --------------------------------------------------------------------------- #

METRICS = {
    "accuracy": M.accuracy,
    "f1": M.f1,
    "macro_f1": M.macro_f1,
    "multirc_f1": M.multirc_f1,
    "matthews": M.matthews_corrcoef,
    "pearson": M.pearson,
    "spearman": M.spearman,
    "squad_em": M.squad_em,     # extractive tasks: strings against lists of gold answers
    "squad_f1": M.squad_f1,
}


def _parse_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_predictions(task: Task | str, predictions: Sequence[str],
                      references: Sequence[str]) -> tuple[list, list]:
    """Generated strings -> numbers for the metrics, with the rules of docs/methods.md section 6.

    Classification: the stripped prediction must equal a target string exactly
    ("1", not "1." or "positive"). An unparsable one gets a class of its own, a
    negative id, one per distinct string (as the official code scores the raw
    strings): never right for accuracy, a class of its own for Matthews, a miss of
    the reference's class for macro-F1, and the wrong class for binary F1
    (`metrics.f1`). STS-B: a float, or -1 when unparsable.
    """
    task = get_task(task)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if task.is_regression:
        refs = [_parse_float(r) for r in references]
        if any(r is None for r in refs):
            raise ValueError(f"{task.name}: references must be numbers, got {list(references)[:5]} ...")
        preds = [-1.0 if (p := _parse_float(pred)) is None else p for pred in predictions]
        return preds, refs
    ids = {target: i for i, target in enumerate(task.targets)}
    bad = [r for r in references if r.strip() not in ids]
    if bad:
        raise ValueError(f"{task.name}: references must be one of {list(task.targets)}, got {bad[:5]}")
    refs = [ids[r.strip()] for r in references]
    invalid = {}   # unparsable string -> its class: -1, -2, ...
    preds = [ids[p] if p in ids else -1 - invalid.setdefault(p, len(invalid)) for p in map(str.strip, predictions)]
    return preds, refs


def score(task: Task | str, predictions: Sequence[str], references: Sequence) -> dict[str, float]:
    """The task's metrics, in percent (as in the paper), first metric first.

    >>> score("mrpc", ["1", "0", "yes", "1"], ["1", "0", "0", "0"])
    {'accuracy': 50.0, 'f1': 50.0}

    An extractive task takes, for each example, its list of gold answers (or one string):

    >>> score("record", ["the Eiffel Tower", "Paris"], [["Eiffel Tower", "Tower"], ["London"]])
    {'squad_f1': 50.0, 'squad_em': 50.0}
    """
    task = get_task(task)
    if task.answers is not None:
        golds = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
        return {name: 100.0 * METRICS[name](predictions, golds) for name in task.metrics}
    preds, refs = parse_predictions(task, predictions, references)
    result = {}
    for name in task.metrics:
        extra = {"num_classes": task.num_classes} if name == "macro_f1" else {}
        result[name] = 100.0 * METRICS[name](preds, refs, **extra)
    return result
