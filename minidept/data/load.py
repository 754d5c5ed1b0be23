"""Data: loading the splits, few-shot sampling, tokenising, padding, batch order.

Examples come from `data_dir`, else `$MINIDEPT_DATA` (the original downloads in
their release layouts, `LOCAL_LAYOUTS`: `glue/SST-2/train.tsv`, `superglue/CB/train.jsonl`,
`mrqa/train/NewsQA.jsonl.gz`, ...; the GLUE and SuperGLUE task folders may also sit
directly in the data folder), else the Hugging Face Hub (`datasets`, `HUB_IDS`;
without network this fails within seconds and says how to pass `--data-dir`).
Local files give the same examples, field names and label ids as the Hub: one reader
per file format (TSV, JSON lines, gzipped JSON lines, Yelp's CSV).
The splits follow docs/methods.md section 6 (seed 42 whatever the run seed,
`torch.randperm` as the official code, so the examples of each split are the paper's).

`encode_examples` tokenises for an encoder-decoder (source + </s> -> target + </s>)
or a decoder-only model (`"{source} Label : "` + target + end-of-text, loss on the
target only); truncation cuts the source, never the cue or the target, and is
counted. `collate` pads a batch to its longest row on the RIGHT.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import socket
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..errors import one_line
from .tasks import GENERATION_MAX_LENGTH, GPT2_ANSWER_CUE, Task, answer_tokens, format_example, get_task, stsb_target

SPLIT_SEED = 42                     # docs/methods.md: the split seed is fixed, independent of --seed
LARGE_TASKS = {"sst2", "qqp", "qnli", "record", "yelp", "winogrande", "nq", "hotpotqa", "searchqa", "newsqa"}
LARGE_VALIDATION_SIZE = 1000
YELP_TRAIN_ROWS = 100_000           # the official code trains Yelp-2 on the first 100,000 rows of its train part
IGNORE_INDEX = -100                 # label value the loss skips

DATA_HINT = (
    "Pass a local data folder with --data-dir DIR (Python: load_splits(task, data_dir=DIR)) "
    "or set MINIDEPT_DATA=DIR, where DIR holds the original downloads: GLUE task folders "
    "(SST-2/train.tsv, SST-2/dev.tsv, ...), SuperGLUE ones (CB/train.jsonl, CB/val.jsonl, ...), "
    "or glue/ and superglue/ folders with those inside; the other tasks in their release layouts "
    "(docs/usage.md: the task list)."
)


class DataError(ValueError):
    """Data cannot be found or read: missing files, a malformed row, no Hub access."""


# --------------------------------------------------------------------------- #
# Reading the original download files
# --------------------------------------------------------------------------- #

def _label_id(task: Task, value, where: str) -> int | float:
    """A label as found in a file -> the `datasets` label id ("not_entailment" -> 1, true -> 1)."""
    if task.is_regression:
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{where}: score {value!r} is not a finite number; fix or remove the row")
        return score
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text in task.label_names:
        return task.label_names.index(text)
    # an id, in ASCII digits ("²" is a digit to str.isdigit); not where the names are numbers themselves
    # (WinoGrande's answers "1" and "2": a "0" there is a broken row, not the id of "1")
    numbered = any(name.isdigit() for name in task.label_names)
    if not numbered and text.isascii() and text.isdigit() and int(text) < task.num_classes:
        return int(text)
    raise DataError(f"{where}: label {value!r} is not one of {list(task.label_names)}"
                    + ("" if numbered else f" or an id 0..{task.num_classes - 1}") + "; fix or remove the row")


def _read_tsv(path: Path, task: Task, columns: dict[str, str], label: str,
              header: Sequence[str] | None = None) -> list[dict]:
    """Rows of a GLUE TSV as dicts {our field: text, "label": id}.

    `columns` maps our field names to the file's column names; `header` names
    the columns of a file without a header row (CoLA). Quotes are ordinary
    characters (QUOTE_NONE): sentences contain unbalanced quotes. Rows with
    missing fields are skipped, as `datasets` does for QQP's few broken lines
    (with a warning that counts them). MRPC's files start with a byte-order
    mark, which utf-8-sig removes.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = list(header) if header is not None else next(rows, None)
        if names is None:
            raise DataError(f"{path} is empty: a GLUE file starts with its header row; re-download it")
        wanted = {**columns, "label": label}
        missing = [col for col in wanted.values() if col not in names]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; found {names}")
        index = {ours: names.index(col) for ours, col in wanted.items()}
        examples, skipped = [], []
        try:
            for row in rows:
                line = rows.line_num
                if len(row) != len(names):
                    skipped.append(line)
                    continue
                example = {ours: row[i] for ours, i in index.items()}
                example["label"] = _label_id(task, example["label"], f"{path} line {line}")
                examples.append(example)
        except csv.Error as error:   # e.g. a field over csv's limit of 131,072 characters
            raise DataError(f"{path} line {rows.line_num}: {error}; fix or remove the row") from None
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) without {len(names)} tab-separated fields (line(s) "
                      f"{', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''}), as datasets does",
                      stacklevel=2)
    return examples


def _read_jsonl(path: Path, task: Task) -> list[dict]:
    """Rows of a JSON-lines file (gzipped if it ends in .gz), reshaped to the fields `datasets` gives."""
    examples = []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path} line {line}"
            try:
                found = _jsonl_examples(task, json.loads(text), where)
                for name, value in ((name, example.get(name)) for example in found for name in task.fields):
                    if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
                        raise TypeError(f"field {name!r} is {value!r}, not text")
                examples += found
            except (ValueError, KeyError, TypeError, AttributeError) as error:   # JSONDecodeError is a ValueError
                if isinstance(error, DataError):   # names the file and line already
                    raise
                raise DataError(f"{where}: not a {task.name} example "
                                f"({type(error).__name__}: {error})") from error
    return examples


def _jsonl_examples(task: Task, row: dict, where: str) -> list[dict]:
    if task.name == "multirc":       # one passage -> one example per candidate answer
        return [{"paragraph": row["passage"]["text"], "question": question["question"],
                 "answer": answer["text"], "label": _label_id(task, answer["label"], where),
                 "idx": {"paragraph": row["idx"], "question": question["idx"], "answer": answer["idx"]}}
                for question in row["passage"]["questions"] for answer in question["answers"]]
    if task.name == "record":        # one passage -> one example per query; entities and answers as sorted texts
        text = row["passage"]["text"]
        spans = [(e["start"], e["end"]) for e in row["passage"]["entities"]]
        if bad := [span for span in spans if not (all(type(i) is int for i in span)
                                                  and 0 <= span[0] <= span[1] < len(text))]:
            raise ValueError(f"entity span(s) {bad[:3]} are not (start, end) character positions within the "
                             f"passage of {len(text)} characters")
        entities = sorted({text[start:end + 1] for start, end in spans})
        return [{"passage": text, "query": qa["query"], "entities": entities,
                 "answers": sorted(set(_gold_answers(qa["answers"], f"query {qa['idx']}"))),
                 "idx": {"passage": row["idx"], "query": qa["idx"]}} for qa in row["qas"]]
    if task.benchmark == "mrqa":     # a header line, then one context per line -> one example per question
        if "header" in row:
            return []
        # the answers found in the context (`detected_answers`), as the Hub copy's answers with their spans
        return [{"context": row["context"], "question": qa["question"], "qid": qa["qid"],
                 "answers": _gold_answers(qa["detected_answers"], f"question {qa['qid']}")} for qa in row["qas"]]
    if task.name == "wsc":           # the spans sit in a nested "target" object
        row.update(row.pop("target"))
    missing = [name for name in (*task.fields, task.label_key) if name not in row]
    if missing:
        raise KeyError(f"missing field(s) {missing}")
    row["label"] = _label_id(task, row[task.label_key], where)
    return [row]


def _gold_answers(answers: list, question: str) -> list[str]:
    """The texts of an extractive question's gold answers: at least one, each a text (training needs a target,
    scoring a reference)."""
    texts = [answer["text"] for answer in answers]
    if not texts:
        raise ValueError(f"{question} has no gold answer")
    if bad := [text for text in texts if not isinstance(text, str)]:
        raise ValueError(f"{question} has answer(s) {bad[:3]} that are not text")
    return texts


def _read_yelp(path: Path, task: Task) -> list[dict]:
    """Yelp-2's CSV as the Hub's loader reads it: a line is `"2","text"`; the text keeps the file's
    escapes (doubled quotes, a backslash before n); label "1" (negative) -> 0, "2" (positive) -> 1."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            text = text.rstrip("\r\n")
            if text[:5] not in ('"1","', '"2","') or len(text) < 6 or not text.endswith('"'):
                raise DataError(f"{path} line {line}: not a Yelp-2 row (\"1\" or \"2\", a comma, then the quoted "
                                f"text), found {text[:20]!r}; fix or remove the row")
            examples.append({"text": text[5:-1].strip(), "label": int(text[1]) - 1})
    return examples


def _glue(folder: str, columns: dict[str, str], label: str, header=None, validation=("dev.tsv",)):
    """A GLUE task folder: train.tsv plus dev file(s)."""
    splits = {"train": "train.tsv"}
    names = ["validation"] if len(validation) == 1 else ["validation_matched", "validation_mismatched"]
    splits.update(zip(names, validation))
    return ("glue", folder, splits, partial(_read_tsv, columns=columns, label=label, header=header))


def _superglue(folder: str):
    return ("superglue", folder, {"train": "train.jsonl", "validation": "val.jsonl"}, _read_jsonl)


def _mrqa(name: str):
    return ("mrqa", "", {"train": f"train/{name}.jsonl.gz", "validation": f"dev/{name}.jsonl.gz"}, _read_jsonl)


# Per task, the local layouts it can be read from, in order of preference:
# (benchmark folder, task folder, {official split: file name}, reader). The splits named
# are the ones the split rule reads, from the Hub too (unlabelled test sets are never read).
LOCAL_LAYOUTS: dict[str, list[tuple[str, str, dict[str, str], Callable]]] = {
    "cola": [_glue("CoLA", {"sentence": "sentence"}, "label",
                   header=("source", "label", "original_label", "sentence"))],
    "sst2": [_glue("SST-2", {"sentence": "sentence"}, "label")],
    "mrpc": [_glue("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality")],
    "qqp": [_glue("QQP", {"question1": "question1", "question2": "question2"}, "is_duplicate")],
    "stsb": [_glue("STS-B", {"sentence1": "sentence1", "sentence2": "sentence2"}, "score")],
    "mnli": [_glue("MNLI", {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label",
                   validation=("dev_matched.tsv", "dev_mismatched.tsv"))],
    "qnli": [_glue("QNLI", {"question": "question", "sentence": "sentence"}, "label")],
    "rte": [_glue("RTE", {"sentence1": "sentence1", "sentence2": "sentence2"}, "label")],   # GLUE's, as the official runs
    "boolq": [_superglue("BoolQ")],
    "cb": [_superglue("CB")],
    "multirc": [_superglue("MultiRC")],
    "wic": [_superglue("WiC")],
    "wsc": [_superglue("WSC")],
    "copa": [_superglue("COPA")],
    "record": [_superglue("ReCoRD")],
    "nq": [_mrqa("NaturalQuestionsShort")],
    "hotpotqa": [_mrqa("HotpotQA")],
    "searchqa": [_mrqa("SearchQA")],
    "newsqa": [_mrqa("NewsQA")],
    "winogrande": [("winogrande", "", {"train": "train_xl.jsonl", "validation": "dev.jsonl"}, _read_jsonl)],
    "yelp": [("yelp_review_polarity_csv", "", {"train": "train.csv", "test": "test.csv"}, _read_yelp)],
    "scitail": [("SciTailV1.1", "snli_format", {"train": "scitail_1.0_train.txt",
                                                "validation": "scitail_1.0_dev.txt"}, _read_jsonl)],
    "paws": [("paws", "final", {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"},
              partial(_read_tsv, columns={"sentence1": "sentence1", "sentence2": "sentence2"}, label="label"))],
}


def _load_local(task: Task, root: Path) -> dict[str, list[dict]]:
    """Official splits of `task` from a local folder, or a DataError naming the missing split files."""
    tried, incomplete = [], []
    for benchmark, folder, splits, read in LOCAL_LAYOUTS[task.name]:
        # root may be the benchmark folder's parent (root/glue/SST-2) or the benchmark folder (root/SST-2)
        for base in (root / benchmark / folder, root / folder):
            files = {split: base / name for split, name in splits.items()}
            missing = [split for split, path in files.items() if not path.is_file()]
            if not missing:
                examples = {}
                for split, path in files.items():
                    try:
                        examples[split] = read(path, task)
                    except UnicodeDecodeError as error:
                        raise DataError(f"{path} is not UTF-8 text (byte {error.object[error.start:error.start + 1]!r}"
                                        f" cannot be decoded); convert the file to UTF-8") from None
                    except (OSError, EOFError) as error:   # unreadable, or a cut or corrupt .gz
                        raise DataError(f"{path} could not be read ({error}); re-download it") from None
                return examples
            tried += [str(path) for path in files.values()]
            if len(missing) < len(files):
                incomplete.append(f"{base} has no file for the {' and '.join(missing)} split ("
                                  + ", ".join(str(files[split]) for split in missing) + ")")
    if incomplete:
        raise DataError(f"incomplete data for task {task.name!r}: " + "; ".join(incomplete)
                        + f". The task needs all of its official splits ({', '.join(splits)}). {DATA_HINT}")
    raise DataError(f"no data files for task {task.name!r} under {root}. Looked for these files "
                    "(a task folder needs all of its split files):\n  " + "\n  ".join(tried) + f"\n{DATA_HINT}")


# --------------------------------------------------------------------------- #
# The Hugging Face Hub
# --------------------------------------------------------------------------- #

HUB_IDS = {name: ("nyu-mll/glue", name) for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")}
HUB_IDS.update({name: ("aps/super_glue", name) for name in ("boolq", "cb", "multirc", "wic")})
HUB_IDS["wsc"] = ("aps/super_glue", "wsc.fixed")     # the version with span texts fixed, as the official code
HUB_IDS.update({"copa": ("aps/super_glue", "copa"), "record": ("aps/super_glue", "record"),
                "nq": ("lucadiliello/naturalquestionsshortqa", None), "hotpotqa": ("lucadiliello/hotpotqa", None),
                "searchqa": ("lucadiliello/searchqa", None), "newsqa": ("lucadiliello/newsqa", None),
                "winogrande": ("allenai/winogrande", "winogrande_xl"), "yelp": ("fancyzhx/yelp_polarity", None),
                "scitail": ("allenai/scitail", "snli_format"),
                "paws": ("google-research-datasets/paws", "labeled_final")})


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(task: Task) -> dict[str, list[dict]]:
    repo, config = HUB_IDS[task.name]
    offline = any(os.environ.get(v, "0") not in ("", "0", "false", "False")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    # `datasets` retries for ~30 s without network: check first, unless the user asked for the
    # cache only (HF_HUB_OFFLINE=1) or uses a proxy (then a direct connection says nothing).
    if not offline and not proxied and not _hub_reachable():
        raise DataError(f"cannot reach the Hugging Face Hub to download {repo} ({config}) for task "
                        f"{task.name!r}. {DATA_HINT} (If the data set is in your Hugging Face cache, "
                        "set HF_HUB_OFFLINE=1 to use it.)")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        import datasets
        loaded = datasets.load_dataset(repo, config)
    except Exception as error:   # network, unknown config, cache miss when offline, ...
        raise DataError(f"could not load {repo} ({config}) from the Hugging Face Hub ({one_line(error)}). "
                        f"{DATA_HINT}") from error
    splits = LOCAL_LAYOUTS[task.name][0][2]      # the official splits the split rule reads
    if missing := [split for split in splits if split not in loaded]:
        raise DataError(f"{repo} ({config}) on the Hub has no {' or '.join(missing)} split for task {task.name!r}")
    official = {split: loaded[split].to_list() for split in splits}
    if task.label_key != "label":                # SciTail's gold_label, WinoGrande's answer -> the label id
        for split, examples in official.items():
            for i, example in enumerate(examples):
                example["label"] = _label_id(task, example[task.label_key], f"{repo} {split} row {i}")
    return official


# --------------------------------------------------------------------------- #
# Splits
# --------------------------------------------------------------------------- #

def split_permutation(n: int, seed: int = SPLIT_SEED) -> list[int]:
    """The shuffle of the split rule: torch.randperm with a generator seeded `seed` (official code)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def make_splits(task: Task | str, official: dict[str, list[dict]], seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """Apply the split rule of docs/methods.md section 6 to the official splits ("train", "validation", ...)."""
    task = get_task(task)
    if task.name == "mnli":
        return {"train": official["train"], "validation": official["validation_mismatched"],
                "test": official["validation_matched"]}
    if task.name == "paws":
        return {split: official[split] for split in ("train", "validation", "test")}
    if task.name in LARGE_TASKS:
        train, order = official["train"], split_permutation(len(official["train"]), seed)
        rest = [train[i] for i in order[LARGE_VALIDATION_SIZE:]]     # the shuffled order is kept
        return {"train": rest[:YELP_TRAIN_ROWS] if task.name == "yelp" else rest,
                "validation": [train[i] for i in order[:LARGE_VALIDATION_SIZE]],
                "test": official["test" if task.name == "yelp" else "validation"]}
    dev = official["validation"]
    order, half = split_permutation(len(dev), seed), len(dev) // 2
    return {"train": official["train"], "validation": [dev[i] for i in order[:half]],
            "test": [dev[i] for i in order[half:]]}


def split_source(task: Task | str, split: str) -> str:
    """Where `make_splits` takes a split's examples from, in words: which official file, and which part of it.

    >>> split_source("sst2", "test")
    "glue/SST-2/dev.tsv (the official validation set; the test set's labels are not public)"
    """
    task = get_task(task)
    if task.make_splits is not None:
        return f"{task.name}'s {split} examples, made by code"
    benchmark, folder, files, _ = LOCAL_LAYOUTS[task.name][0]
    file = lambda official: "/".join(part for part in (benchmark, folder, files[official]) if part)  # noqa: E731
    if task.name == "mnli":
        return {"train": file("train"), "validation": f"{file('validation_mismatched')} (mismatched)",
                "test": f"{file('validation_matched')} (matched; the test set's labels are not public)"}[split]
    if task.name == "paws":
        return file(split)
    if task.name in LARGE_TASKS:
        held = f"{LARGE_VALIDATION_SIZE:,} rows of {file('train')} drawn with seed {SPLIT_SEED}"
        return {"train": f"{file('train')} less the {LARGE_VALIDATION_SIZE:,} validation rows" + (
                    f", the first {YELP_TRAIN_ROWS:,} of the rest" if task.name == "yelp" else ""),
                "validation": held,
                "test": f"{file('test')} (the official test set)" if task.name == "yelp" else
                        f"{file('validation')} (the official validation set; the test set's labels are not public)"
                }[split]
    half = f"of {file('validation')} (the official validation set), split with seed {SPLIT_SEED}"
    return {"train": file("train"), "validation": f"one half {half}", "test": f"the other half {half}"}[split]


def load_official_splits(task: Task | str, data_dir: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """The splits as distributed ("train", "validation"; MNLI "validation_matched"/"_mismatched"),
    from `data_dir`, else $MINIDEPT_DATA, else the Hub. The unlabelled official test sets are not read."""
    task = get_task(task)
    root = data_dir if data_dir is not None else os.environ.get("MINIDEPT_DATA") or None
    if root is None:
        return _load_hub(task)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist. {DATA_HINT}")
    return _load_local(task, root)


def load_splits(task: Task | str, data_dir: str | os.PathLike | None = None,
                seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """{"train", "validation", "test"} lists of examples of `task` (see the module docstring).

    Keep `seed` at 42 to get the paper's splits; it is not the run seed.
    """
    task = get_task(task)
    if task.make_splits is not None:    # a task made by code (the demo) has its own splits
        return task.make_splits()
    splits = make_splits(task, load_official_splits(task, data_dir), seed)
    if task.name == "record":           # one training row per gold answer, as the official code
        splits["train"] = [{**example, "answers": [answer]} for example in splits["train"]
                           for answer in example["answers"]]
    return splits


def k_shot(task: Task | str, examples: Sequence[dict], k: int, seed: int) -> list[dict]:
    """K training examples in all, by the official rule (docs/methods.md section 5), in the order drawn.

    One pass over `examples` shuffled as `datasets.Dataset.shuffle(seed=seed)` shuffles
    (numpy's default_rng(seed).permutation): an example is taken while its class holds
    fewer than K // C (C classes), or whatever its class once K - 1 are taken; the pass
    stops at K. STS-B counts two classes, target score <= 2.5 and above. Like the official
    code this can take fewer than K: C * (K // C) when that is below K - 1 (CB, K = 32: 30).
    """
    task = get_task(task)
    classes = 2 if task.is_regression else task.num_classes
    if not classes:
        raise ValueError(f"{task.name}'s answers are free text: the few-shot rule needs classes")
    counts, chosen = [0] * classes, []
    for i in np.random.default_rng(seed).permutation(len(examples)).tolist():
        if len(chosen) == k:
            break
        label = examples[i]["label"]
        label = int(float(stsb_target(label)) > 2.5) if task.is_regression else int(label)
        if counts[label] < k // classes or len(chosen) == k - 1:
            counts[label] += 1
            chosen.append(i)
    if not chosen:
        raise ValueError(f"the few-shot rule takes no example of {task.name} for K={k} ({classes} classes, "
                         f"K // C = 0 of each): choose K = 1 or at least {classes}")
    return [examples[i] for i in chosen]


# --------------------------------------------------------------------------- #
# Tokenisation and batches
# --------------------------------------------------------------------------- #

def encode_examples(task: Task | str, examples: Sequence[dict], tokenizer, max_length: int,
                    decoder_only: bool, eos_id: int, prefix: str = "") -> tuple[list[dict], int]:
    """Tokenise examples for an encoder-decoder (T5) or a decoder-only model; return (rows, number truncated).
    `prefix` goes in front of every source (the pocket models' task prefix in pretraining: "sst2 ").

    Each row has lists "input_ids" and "labels" and "target", what a prediction is scored
    against: the target string, or an extractive task's list of gold answers (the first
    is the training target), each as the official evaluation sees it (`round_trip_gold`).
    For a decoder-only model also "prompt_length" (the tokens before the target: what
    `generate` is given).
    """
    task = get_task(task)
    pairs = [format_example(task, example) for example in examples]
    sources = [prefix + source for source, _ in pairs]
    targets = [target for _, target in pairs]
    references = targets
    if task.answers:
        # the official T5 runs cut a gold to max_length = 20 tokens, </s> included; decoder-only: whole
        cut = None if decoder_only else GENERATION_MAX_LENGTH - 1
        references = [[round_trip_gold(tokenizer, gold, cut) for gold in task.answers(example)]
                      for example in examples]
    encoded, truncated = [], 0
    if not decoder_only:
        # T5's tokenizer.json appends </s> itself (post-processor); add it where one does not.
        source_ids = [e.ids for e in tokenize(tokenizer.encode_batch, sources)]
        target_ids = [e.ids for e in tokenize(tokenizer.encode_batch, targets)]
        for src, tgt, reference in zip(source_ids, target_ids, references):
            src = src if src and src[-1] == eos_id else src + [eos_id]
            tgt = tgt if tgt and tgt[-1] == eos_id else tgt + [eos_id]
            if len(src) > max_length:
                src, truncated = src[:max_length - 1] + [eos_id], truncated + 1
            encoded.append({"input_ids": src, "labels": tgt, "target": reference})
        return encoded, truncated

    # Decoder-only: the source gets what the tokenizer puts around a text (Llama: <s> in front,
    # as in pretraining; GPT-2: nothing), the cue and the target nothing. The source and the cue
    # " Label : " are tokenised apart so truncation can cut the source alone; with GPT-2's
    # byte-level BPE this gives the ids of the joined text (SentencePiece tokenizers such as
    # Llama 2's mark the start of each part with a space: docs/reproduction.md, the deviations).
    # An extractive task keeps room for the answer tokens evaluation decodes after the cue, whatever
    # its gold answer's length.
    cue = tokenize(tokenizer.encode, GPT2_ANSWER_CUE, add_special_tokens=False).ids
    source_ids = [e.ids for e in tokenize(tokenizer.encode_batch, sources, add_special_tokens=True)]
    target_ids = [e.ids for e in tokenize(tokenizer.encode_batch, targets, add_special_tokens=False)]
    for src, tgt, target, reference in zip(source_ids, target_ids, targets, references):
        answer_room = max(len(tgt) + 1, answer_tokens(False) if task.answers else 0)   # + 1: the closing eos
        room = max_length - len(cue) - answer_room
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for the source: the cue and "
                             f"target {target!r} alone take {len(cue) + answer_room} tokens")
        if len(src) > room:
            src, truncated = src[:room], truncated + 1
        prompt, answer = src + cue, tgt + [eos_id]
        encoded.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer,
                        "prompt_length": len(prompt), "target": reference})
    return encoded, truncated


def tokenize(call: Callable, *args, **kwargs):
    """`call(*args, **kwargs)`, a method of a `tokenizers` tokenizer, with a panic of its Rust code turned into one
    line: `pyo3_runtime.PanicException` is a BaseException, so it passes every `except Exception`, and it is how
    the library reports, for one, that it could not start its thread pool (EAGAIN on a loaded machine)."""
    try:
        return call(*args, **kwargs)
    except BaseException as error:
        if type(error).__name__ != "PanicException":
            raise
        raise DataError(f"the tokenizer failed ({one_line(error)}): the machine may be out of threads or memory; "
                        "run again with fewer processes, or with TOKENIZERS_PARALLELISM=false (no thread pool)") from None


def collate(rows: Sequence[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad encoded rows into tensors, to the batch's longest row (or to `pad_to` positions, as the official
    code pads every input to s), on the RIGHT.

    input_ids, attention_mask (B, T) and labels (B, Tl, padded with -100); rows of a
    decoder-only model also give the prompt alone (source + cue, for `generate`):
    prompt_ids, prompt_mask (B, P).
    """
    if not rows:
        raise ValueError("cannot collate an empty batch")
    columns = {"input_ids": ([r["input_ids"] for r in rows], pad_id),
               "attention_mask": ([[1] * len(r["input_ids"]) for r in rows], 0),
               "labels": ([r["labels"] for r in rows], IGNORE_INDEX)}
    if "prompt_length" in rows[0]:   # decoder-only: the prompt alone, for generate
        columns["prompt_ids"] = ([r["input_ids"][:r["prompt_length"]] for r in rows], pad_id)
        columns["prompt_mask"] = ([[1] * r["prompt_length"] for r in rows], 0)
    padded = {name: pad_sequence([torch.tensor(x, dtype=torch.long) for x in lists], batch_first=True,
                                 padding_value=value) for name, (lists, value) in columns.items()}
    if pad_to is not None:   # the inputs to exactly pad_to positions (and a decoder-only model's labels, aligned)
        aligned = (("labels", IGNORE_INDEX),) if "prompt_length" in rows[0] else ()
        for name, value in (("input_ids", pad_id), ("attention_mask", 0), ("prompt_ids", pad_id), ("prompt_mask", 0),
                            *aligned):
            if name in padded and padded[name].shape[1] < pad_to:
                padded[name] = F.pad(padded[name], (0, pad_to - padded[name].shape[1]), value=value)
    return padded


# transformers' `clean_up_tokenization_spaces`, on by default in the official runs' version (4.26.1):
# these replacements, in this order, after decoding
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """Token ids -> text as the official evaluation decodes them: special tokens (T5's <unk> too)
    dropped, the clean-up of CLEAN_UP ("U . S ." -> "U. S.", "John ' s" -> "John's"), stripped."""
    text = tokenize(tokenizer.decode, list(ids), skip_special_tokens=True)
    for spaced, joined in CLEAN_UP:
        text = text.replace(spaced, joined)
    return text.strip()


def round_trip_gold(tokenizer, gold: str, max_tokens: int | None = None) -> str:
    """A gold answer as the official evaluation scores it: tokenised, cut to `max_tokens`, decoded back.

    The official code decodes the tokenised target, not the gold string, so whatever the
    tokenizer cannot write is gone from the gold too. With T5's vocabulary:
    "naïve café" -> "nave café", "Đặng Văn Lâm" -> "ng Văn Lâm", "20 km²" -> "20 km2".
    """
    return decode_text(tokenizer, tokenize(tokenizer.encode, gold, add_special_tokens=False).ids[:max_tokens])


def decode_predictions(tokenizer, generated, eos_id: int, pad_id: int) -> list[str]:
    """Generated ids (B, n) -> strings for `tasks.score`: cut at the first eos, drop pads, `decode_text`."""
    texts = []
    for row in (generated.tolist() if isinstance(generated, torch.Tensor) else generated):
        if eos_id in row:
            row = row[:row.index(eos_id)]
        texts.append(decode_text(tokenizer, [t for t in row if t != pad_id]))
    return texts


GROUP_BATCHES = 50  # length grouping sorts windows of this many batches


def batches(n: int, batch_size: int, seed: int | None = None, epoch: int = 0,
            drop_last: bool = False, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Example indices of one epoch cut into batches: shuffled by (seed, epoch), or in order if seed is None.

    The order depends on these arguments only, so a resumed run that knows its step
    continues with exactly the data it would have seen (`minidept.train`).

    With `lengths` (one per example), batches are grouped by length: the shuffled
    order is cut into windows of GROUP_BATCHES batches, each window is sorted by
    length and cut into batches, and the full batches are shuffled again. Rows of
    a batch then have similar lengths, so dynamic padding adds few pads; which
    examples share a window, and the order of batches, stay random.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if lengths is not None and len(lengths) != n:
        raise ValueError(f"lengths has {len(lengths)} entries for {n} examples")
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    if lengths is None:
        return [order[i:i + batch_size].tolist() for i in range(0, stop, batch_size)]
    full = n - n % batch_size  # whole batches are grouped; a last partial batch stays last
    window = GROUP_BATCHES * batch_size
    grouped = []
    for start in range(0, full, window):
        chunk = order[start:min(start + window, full)]
        chunk = chunk[np.argsort(np.asarray(lengths)[chunk], kind="stable")]
        grouped += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    np.random.default_rng([seed or 0, epoch, 1]).shuffle(grouped)
    if stop > full:
        grouped.append(order[full:].tolist())
    return grouped
