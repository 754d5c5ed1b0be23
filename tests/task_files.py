"""Small examples of every task, as the Hugging Face Hub gives them and written in the original release layouts.

`hub_splits(task, n_train, n_dev)` makes the examples of each official split in the Hub's
shape (field names and label ids of the `datasets` versions); `write_layout(root, task,
splits)` writes the same examples as the original download files (GLUE TSVs, SuperGLUE
JSON lines, MRQA's gzipped JSON lines with a header, WinoGrande, SciTail, PAWS, Yelp's
CSV), written here by hand from the release formats, not from minidept's readers.
Large tasks need more than 1,000 training rows (the split rule takes 1,000 for validation).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

# Hub ids as docs/methods.md section 6 and the README name them
HUB = {**{name: ("nyu-mll/glue", name) for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")},
       **{name: ("aps/super_glue", name) for name in ("boolq", "cb", "multirc", "wic", "copa", "record")},
       "wsc": ("aps/super_glue", "wsc.fixed"), "nq": ("lucadiliello/naturalquestionsshortqa", None),
       **{name: (f"lucadiliello/{name}", None) for name in ("hotpotqa", "searchqa", "newsqa")},
       "winogrande": ("allenai/winogrande", "winogrande_xl"), "yelp": ("fancyzhx/yelp_polarity", None),
       "scitail": ("allenai/scitail", "snli_format"), "paws": ("google-research-datasets/paws", "labeled_final")}
LARGE = {"sst2", "qqp", "qnli", "record", "yelp", "winogrande", "nq", "hotpotqa", "searchqa", "newsqa"}
MRQA_FILES = {"nq": "NaturalQuestionsShort", "hotpotqa": "HotpotQA", "searchqa": "SearchQA", "newsqa": "NewsQA"}


def hub_example(task: str, i: int) -> dict:
    """Example number i of `task` with the fields of its `datasets` version."""
    a, b, label = f"Text {i} is here.", f"Another {i}.", i % 2
    if task in ("cola", "sst2"):
        return {"sentence": a, "label": label, "idx": i}
    if task in ("mrpc", "rte"):
        return {"sentence1": a, "sentence2": b, "label": label, "idx": i}
    if task == "stsb":
        return {"sentence1": a, "sentence2": b, "label": (i % 26) / 5, "idx": i}
    if task == "qqp":
        return {"question1": a, "question2": b, "label": label, "idx": i}
    if task in ("mnli", "cb"):
        return {"premise": a, "hypothesis": b, "label": i % 3, "idx": i}
    if task == "qnli":
        return {"question": a, "sentence": b, "label": label, "idx": i}
    if task == "boolq":
        return {"question": f"is {i} even", "passage": a, "label": label, "idx": i}
    if task == "wic":
        return {"word": "bank", "sentence1": f"A bank {i}.", "sentence2": "The bank.", "start1": 2, "start2": 4,
                "end1": 6, "end2": 8, "idx": i, "label": label}
    if task == "wsc":
        return {"text": f"Ann met Bo {i} and she left .", "span1_index": 0, "span2_index": 5, "span1_text": "Ann",
                "span2_text": "she", "idx": i, "label": label}
    if task == "multirc":
        return {"paragraph": f"<b>Sent 1: </b>Sue ran {i // 2}.<br>", "question": "Who ran?",
                "answer": "Sue" if label else "Bo",
                "idx": {"paragraph": i // 2, "question": 0, "answer": i % 2}, "label": label}
    if task == "copa":
        return {"premise": a, "choice1": "It fell.", "choice2": "It rose.", "question": "effect", "idx": i,
                "label": label}
    if task == "record":
        passage = f"Tom {i} won.\n@highlight\nFans cheered"
        return {"passage": passage, "query": "@placeholder won", "entities": ["Fans", f"Tom {i}"],
                "entity_spans": {"text": [f"Tom {i}", "Fans"], "start": [0, len(passage) - 12],
                                 "end": [4 + len(str(i)), len(passage) - 8]},
                "answers": [f"Tom {i}"] if label else ["Fans", f"Tom {i}"], "idx": {"passage": i, "query": 0}}
    if task in MRQA_FILES:      # `labels`: each answer's character spans in the context (end inclusive)
        context, answers = f"[PAR] In {i}, the U.S. team won.", ["the U.S. team", "U.S."]
        spans = [context.index(answer) for answer in answers]
        return {"context": context, "question": f"Who won in {i}?", "answers": answers, "key": f"q{i}",
                "labels": [{"start": [s], "end": [s + len(a) - 1]} for s, a in zip(spans, answers)]}
    if task == "winogrande":
        return {"sentence": f"Ann beat Bo {i} times, so _ was happy.", "option1": "Ann", "option2": "Bo",
                "answer": str(label + 1)}
    if task == "yelp":
        return {"text": f'Tacos {i} were ""great"".\\nWould come back.', "label": label}
    if task == "scitail":
        return {"sentence1_binary_parse": "", "sentence1_parse": "", "sentence1": a, "sentence2_parse": "",
                "sentence2": b, "annotator_labels": [], "gold_label": ("entailment", "neutral")[label]}
    if task == "paws":
        return {"id": i + 1, "sentence1": a, "sentence2": b, "label": label}
    raise KeyError(task)


def hub_splits(task: str, n_train: int = 8, n_dev: int = 6) -> dict[str, list[dict]]:
    """The official splits the split rule reads, in the Hub's shape (large tasks get 1,000 more training rows)."""
    names = {"mnli": ("train", "validation_matched", "validation_mismatched"), "yelp": ("train", "test"),
             "paws": ("train", "validation", "test")}.get(task, ("train", "validation"))
    n_train += 1000 if task in LARGE else 0
    start = 0
    splits = {}
    for name in names:
        n = n_train if name == "train" else n_dev
        splits[name] = [hub_example(task, i) for i in range(start, start + n)]
        start += n
    return splits


def _write(path: Path, lines: list[str], compress: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _jsonl(examples, shape) -> list[str]:
    return [json.dumps(shape(example)) for example in examples]


_NLI = ("entailment", "not_entailment")
_CB = ("entailment", "contradiction", "neutral")
_MNLI = ("entailment", "neutral", "contradiction")


def write_layout(root: Path, task: str, splits: dict[str, list[dict]]) -> Path:
    """Write `splits` (from hub_splits) as the original download files of `task` under root; return root."""
    glue, superglue = root / "glue", root / "superglue"
    tsv = lambda rows: ["\t".join(map(str, row)) for row in rows]   # noqa: E731
    files = {"validation": "dev", "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched",
             "train": "train", "test": "test"}
    for split, examples in splits.items():
        name = files[split]
        if task == "cola":       # no header: source, label, original label, sentence
            _write(glue / "CoLA" / f"{name}.tsv", tsv(("gj04", e["label"], "", e["sentence"]) for e in examples))
        elif task == "sst2":
            _write(glue / "SST-2" / f"{name}.tsv", tsv([("sentence", "label")] + [(e["sentence"], e["label"])
                                                                                 for e in examples]))
        elif task == "mrpc":
            _write(glue / "MRPC" / f"{name}.tsv", tsv([("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")] + [
                (e["label"], 1, 2, e["sentence1"], e["sentence2"]) for e in examples]))
        elif task == "qqp":
            _write(glue / "QQP" / f"{name}.tsv", tsv([("id", "qid1", "qid2", "question1", "question2", "is_duplicate")]
                                                     + [(e["idx"], 1, 2, e["question1"], e["question2"], e["label"])
                                                        for e in examples]))
        elif task == "stsb":
            _write(glue / "STS-B" / f"{name}.tsv", tsv([("index", "genre", "sentence1", "sentence2", "score")] + [
                (e["idx"], "main", e["sentence1"], e["sentence2"], f"{e['label']:.3f}") for e in examples]))
        elif task == "mnli":
            _write(glue / "MNLI" / f"{name}.tsv", tsv([("index", "genre", "sentence1", "sentence2", "gold_label")] + [
                (e["idx"], "fiction", e["premise"], e["hypothesis"], _MNLI[e["label"]]) for e in examples]))
        elif task == "qnli":
            _write(glue / "QNLI" / f"{name}.tsv", tsv([("index", "question", "sentence", "label")] + [
                (e["idx"], e["question"], e["sentence"], _NLI[e["label"]]) for e in examples]))
        elif task == "rte":
            _write(glue / "RTE" / f"{name}.tsv", tsv([("index", "sentence1", "sentence2", "label")] + [
                (e["idx"], e["sentence1"], e["sentence2"], _NLI[e["label"]]) for e in examples]))
        elif task in ("boolq", "wic", "cb", "copa"):
            label = {"boolq": lambda e: bool(e["label"]), "wic": lambda e: bool(e["label"]),
                     "cb": lambda e: _CB[e["label"]], "copa": lambda e: e["label"]}[task]
            folder = {"boolq": "BoolQ", "wic": "WiC", "cb": "CB", "copa": "COPA"}[task]
            _write(superglue / folder / f"{'val' if name == 'dev' else name}.jsonl",
                   _jsonl(examples, lambda e: {**e, "label": label(e)}))
        elif task == "wsc":
            spans = ("span1_index", "span2_index", "span1_text", "span2_text")
            _write(superglue / "WSC" / f"{'val' if name == 'dev' else name}.jsonl", _jsonl(examples, lambda e: {
                "text": e["text"], "target": {k: e[k] for k in spans}, "idx": e["idx"], "label": bool(e["label"])}))
        elif task == "multirc":   # one paragraph a line, its questions and their candidate answers nested
            paragraphs = {}
            for e in examples:
                paragraphs.setdefault(e["idx"]["paragraph"], {"idx": e["idx"]["paragraph"], "passage": {
                    "text": e["paragraph"], "questions": [{"question": e["question"], "idx": 0, "answers": []}]}})
                paragraphs[e["idx"]["paragraph"]]["passage"]["questions"][0]["answers"].append(
                    {"text": e["answer"], "idx": e["idx"]["answer"], "label": e["label"]})
            _write(superglue / "MultiRC" / f"{'val' if name == 'dev' else name}.jsonl",
                   [json.dumps(p) for p in paragraphs.values()])
        elif task == "record":    # one passage a line; entities and answers as character spans (end inclusive)
            def shape(e):
                spans = e["entity_spans"]
                return {"idx": e["idx"]["passage"], "source": "Daily mail", "passage": {
                    "text": e["passage"], "entities": [{"start": s, "end": t - 1}
                                                       for s, t in zip(spans["start"], spans["end"])]},
                    "qas": [{"idx": e["idx"]["query"], "query": e["query"], "answers": [
                        {"start": 0, "end": 0, "text": answer} for answer in e["answers"]]}]}
            _write(superglue / "ReCoRD" / f"{'val' if name == 'dev' else name}.jsonl", _jsonl(examples, shape))
        elif task in MRQA_FILES:  # a header, then one context a line; gzipped
            header = json.dumps({"header": {"dataset": MRQA_FILES[task], "split": name}})
            lines = [json.dumps({"id": e["key"], "context": e["context"], "qas": [{
                "question": e["question"], "qid": e["key"], "answers": e["answers"] + ["not found in context"],
                "detected_answers": [{"text": answer, "char_spans": [[s, t]]} for answer, s, t in zip(
                    e["answers"], [lab["start"][0] for lab in e["labels"]], [lab["end"][0] for lab in e["labels"]])]
            }]}) for e in examples]
            _write(root / "mrqa" / name / f"{MRQA_FILES[task]}.jsonl.gz", [header] + lines, compress=True)
        elif task == "winogrande":
            _write(root / "winogrande" / f"{'train_xl' if name == 'train' else name}.jsonl",
                   _jsonl(examples, lambda e: {"qID": "x", **e}))
        elif task == "scitail":
            _write(root / "SciTailV1.1" / "snli_format" / f"scitail_1.0_{name}.txt", _jsonl(examples, dict))
        elif task == "paws":
            _write(root / "paws" / "final" / f"{name}.tsv", tsv([("id", "sentence1", "sentence2", "label")] + [
                (e["id"], e["sentence1"], e["sentence2"], e["label"]) for e in examples]))
        elif task == "yelp":      # "2","text": label 1 negative, 2 positive; quotes doubled, newlines as \n
            _write(root / "yelp_review_polarity_csv" / f"{name}.csv",
                   [f'"{e["label"] + 1}","{e["text"]}"' for e in examples])
        else:
            raise KeyError(task)
    return root
