"""Data: the split rule on the real files, local layouts, offline failure, few-shot,
tokenisation with the real T5 and GPT-2 tokenizers, padding and batch order."""

from __future__ import annotations

import inspect
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minidept
from minidept.data import load as data
from minidept.data.load import (DataError, batches, collate, decode_predictions, encode_examples, k_shot, load_official_splits, load_splits, make_splits)
from minidept.data.tasks import GPT2_ANSWER_CUE, answer_tokens, format_example, get_task, score


# --------------------------------------------------------------------------- #
# Splits on the real data
# --------------------------------------------------------------------------- #

# (train, validation, test) after the split rule of docs/methods.md §6
SPLIT_SIZES = {
    "sst2": (66_349, 1_000, 872),       # published
    "cb": (250, 28, 28),                # published
    "rte": (2_490, 138, 139),           # published
    "cola": (8_551, 521, 522),          # dev 1,043 -> 521 + 522
    "mrpc": (3_667, 204, 204),          # the local train.tsv has 3,667 rows (Hub: 3,668); dev 408
    "stsb": (5_749, 750, 750),          # dev 1,500
    "wic": (5_428, 319, 319),           # val 638
    "wsc": (554, 52, 52),               # val 104
    "multirc": (27_243, 2_424, 2_424),  # one example per candidate answer: 456 / 83 paragraphs
    "copa": (400, 50, 50),              # val 100
}

# every real file of the data folder: task -> {file: number of examples}
REAL_FILES = {
    "wic": {"superglue/WiC/train.jsonl": 5_428, "superglue/WiC/val.jsonl": 638},
    "wsc": {"superglue/WSC/train.jsonl": 554, "superglue/WSC/val.jsonl": 104},
    "multirc": {"superglue/MultiRC/train.jsonl": 27_243, "superglue/MultiRC/val.jsonl": 4_848},
    "copa": {"superglue/COPA/train.jsonl": 400, "superglue/COPA/val.jsonl": 100},
    "cb": {"superglue/CB/train.jsonl": 250, "superglue/CB/val.jsonl": 56},
    "boolq": {"superglue/BoolQ/val.jsonl": 3_270},
    "qnli": {"glue/QNLI/dev.tsv": 5_463},
}


@pytest.fixture(scope="module")
def sst2(data_dir):
    return load_splits("sst2", data_dir)


@pytest.mark.parametrize("name", sorted(SPLIT_SIZES))
def test_split_sizes(data_dir, name):
    splits = load_splits(name, data_dir)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == SPLIT_SIZES[name]
    for split in splits.values():    # every example formats (labels valid, fields present)
        for example in split[:50]:
            format_example(name, example)


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_every_real_file_reads_and_casts(data_dir, name):
    """Each file through its task's reader; every example casts (labels valid, fields present)."""
    reader = data.LOCAL_LAYOUTS[name][0][3]
    for file, n in REAL_FILES[name].items():
        examples = reader(data_dir / file, get_task(name))
        assert len(examples) == n
        casts = [format_example(name, e) for e in examples]
        assert {target for _, target in casts} == set(get_task(name).targets)
    if name == "multirc":   # the answers of one question share its idx
        assert examples[0]["idx"] == {"paragraph": 0, "question": 0, "answer": 0}


@pytest.mark.parametrize("name, missing", [("boolq", "superglue/BoolQ/train.jsonl"), ("qnli", "glue/QNLI/train.tsv")])
def test_a_task_with_some_official_files_names_the_missing_split(data_dir, name, missing):
    with pytest.raises(DataError) as error:
        load_splits(name, data_dir)
    message = str(error.value)
    assert f"no file for the train split ({data_dir / missing})" in message
    assert "incomplete data" in message and "--data-dir" in message


def test_split_is_a_partition_of_the_official_sets(data_dir, sst2):
    official = load_official_splits("sst2", data_dir)
    key = lambda e: (e["sentence"], e["label"])  # noqa: E731
    assert Counter(map(key, sst2["train"] + sst2["validation"])) == Counter(map(key, official["train"]))
    assert sst2["test"] == official["validation"]
    cb, cb_official = load_splits("cb", data_dir), load_official_splits("cb", data_dir)
    assert cb["train"] == cb_official["train"]
    assert sorted(e["idx"] for e in cb["validation"] + cb["test"]) == [e["idx"] for e in cb_official["validation"]]


def test_split_uses_the_fixed_seed_and_the_official_permutation(data_dir):
    cb_official = load_official_splits("cb", data_dir)["validation"]
    order = torch.randperm(56, generator=torch.Generator().manual_seed(42)).tolist()
    cb = load_splits("cb", data_dir)
    assert [e["idx"] for e in cb["validation"]] == [cb_official[i]["idx"] for i in order[:28]]
    assert load_splits("cb", data_dir) == cb                              # deterministic
    assert load_splits("cb", data_dir, seed=7)["validation"] != cb["validation"]


def test_label_ids_match_the_hub(data_dir):
    rte = load_official_splits("rte", data_dir)
    assert rte["validation"][0]["label"] == 1            # "not_entailment"; entailment = 0 as in nyu-mll/glue
    cb = load_official_splits("cb", data_dir)
    assert cb["validation"][0]["label"] == 1             # "contradiction"; entailment 0, neutral 2
    assert Counter(e["label"] for e in cb["train"]) == {1: 119, 0: 115, 2: 16}


def test_layouts_agree(data_dir, monkeypatch):
    # root with glue/ inside, the glue/ folder itself, and MINIDEPT_DATA all give the same splits
    via_root = load_splits("mrpc", data_dir)
    assert load_splits("mrpc", data_dir / "glue") == via_root
    monkeypatch.setenv("MINIDEPT_DATA", str(data_dir))
    assert load_splits("mrpc") == via_root
    assert via_root["train"][0]["sentence1"].startswith("Amrozi")  # byte-order mark of MRPC's header removed


def test_rte_reads_the_glue_files_only(data_dir, tmp_path):
    """As the official runs: GLUE's RTE. SuperGLUE's copy (premise/hypothesis) quotes some sentences
    differently, so a folder holding only it is refused rather than read as a substitute."""
    assert "idx" not in load_splits("rte", data_dir)["train"][0]    # GLUE's files
    (tmp_path / "superglue").mkdir()
    (tmp_path / "superglue" / "RTE").symlink_to(data_dir / "superglue" / "RTE")
    with pytest.raises(DataError, match="RTE/dev.tsv"):
        load_splits("rte", tmp_path)


@settings(max_examples=30, deadline=None)
@given(n_train=st.integers(1001, 1300), n_dev=st.integers(1, 60), name=st.sampled_from(["sst2", "cb", "mrpc"]))
def test_make_splits_is_a_partition(n_train, n_dev, name):
    official = {"train": [{"id": f"t{i}"} for i in range(n_train)],
                "validation": [{"id": f"v{i}"} for i in range(n_dev)]}
    splits = make_splits(name, official)
    ids = lambda split: [e["id"] for e in splits[split]]  # noqa: E731
    if name == "sst2":
        assert len(ids("validation")) == 1000 and ids("test") == [e["id"] for e in official["validation"]]
        assert sorted(ids("train") + ids("validation")) == sorted(e["id"] for e in official["train"])
    else:
        assert len(ids("validation")) == n_dev // 2 and ids("train") == [e["id"] for e in official["train"]]
        assert sorted(ids("validation") + ids("test")) == sorted(e["id"] for e in official["validation"])


def test_yelp_keeps_100000_training_rows_after_the_validation_rows_are_taken_out():
    """As the official train.py: split first (1,000 shuffled rows for validation), then the first 100,000
    rows of the shuffled rest; the official test split is the test set."""
    n = 101_500
    official = {"train": list(range(n)), "test": ["t"]}
    splits = make_splits("yelp", official)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(42)).tolist()
    assert splits["validation"] == order[:1000] and splits["test"] == ["t"]
    assert splits["train"] == order[1000:101_000]        # shuffled order kept, not the file's first rows
    assert max(splits["validation"] + splits["train"]) > 100_000


def test_paws_keeps_its_own_splits():
    official = {"train": [1], "validation": [2], "test": [3]}
    assert make_splits("paws", official) == {"train": [1], "validation": [2], "test": [3]}


def test_record_trains_on_one_row_per_gold_answer(monkeypatch):
    example = lambda i, answers: {"passage": "p", "query": "q", "entities": answers, "answers": answers}  # noqa: E731
    official = {"train": [example(i, ["A", "B"] if i % 2 else ["C"]) for i in range(1002)],
                "validation": [example(0, ["A", "B"])]}
    monkeypatch.setattr(data, "load_official_splits", lambda task, data_dir=None: official)
    splits = load_splits("record")
    left = torch.randperm(1002, generator=torch.Generator().manual_seed(42)).tolist()[1000:]   # 2 examples
    assert [e["answers"] for e in splits["train"]] == [[a] for i in left for a in official["train"][i]["answers"]]
    assert all(len(e["answers"]) in (1, 2) for e in splits["validation"]) and len(splits["validation"]) == 1000
    assert splits["test"][0]["answers"] == ["A", "B"]       # evaluation scores against every gold answer


def test_mnli_uses_mismatched_for_validation():
    official = {"train": [1], "validation_matched": [2], "validation_mismatched": [3]}
    assert make_splits("mnli", official) == {"train": [1], "validation": [3], "test": [2]}


# --------------------------------------------------------------------------- #
# Missing data, offline Hub
# --------------------------------------------------------------------------- #

def test_missing_files_are_all_named(tmp_path):
    with pytest.raises(DataError) as error:
        load_splits("sst2", tmp_path)
    message = str(error.value)
    for path in ("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", "SST-2/train.tsv", "SST-2/dev.tsv"):
        assert str(tmp_path / path) in message
    assert "--data-dir" in message and "MINIDEPT_DATA" in message


def test_partial_folder_names_the_missing_file(tmp_path):
    (tmp_path / "CB").mkdir()
    (tmp_path / "CB" / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n')
    with pytest.raises(DataError, match="val.jsonl"):
        load_splits("cb", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_splits("cb", tmp_path / "nowhere")


def test_offline_hub_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.delenv("MINIDEPT_DATA", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="--data-dir") as error:
        load_splits("cb")
    assert "MINIDEPT_DATA" in str(error.value) and "aps/super_glue" in str(error.value)


def test_hub_errors_become_data_errors(monkeypatch):
    # with HF_HUB_OFFLINE=1 the check is skipped and `datasets` itself fails (cache miss, or no network)
    monkeypatch.delenv("MINIDEPT_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-minidept-hf-home")
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="MINIDEPT_DATA"):
        load_splits("sst2")


# --------------------------------------------------------------------------- #
# The other local formats, on small made-up files
# --------------------------------------------------------------------------- #

def _write(path: Path, lines: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_other_glue_formats(tmp_path):
    qqp = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", '0\t1\t2\tWhy "so"?\tHow so?\t1',
           "1\t3\t4\tbroken row"]                             # a short row is skipped, as `datasets` does
    _write(tmp_path / "QQP" / "train.tsv", qqp)
    _write(tmp_path / "QQP" / "dev.tsv", qqp)
    with pytest.warns(UserWarning, match=r"train.tsv: skipped 1 row\(s\) without 6 tab-separated fields \(line\(s\) 3\)"):
        splits = load_official_splits("qqp", tmp_path)
    assert splits["train"] == [{"question1": 'Why "so"?', "question2": "How so?", "label": 1}]

    head = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label"
    _write(tmp_path / "MNLI" / "train.tsv", [head, "0\t1\t1e\tfiction\tIt rains.\tIt is wet.\tentailment"])
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [head, "0\t1\t1c\tfiction\tA.\tB.\tcontradiction"])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [head, "0\t1\t1n\tletters\tC.\tD.\tneutral"])
    splits = load_splits("mnli", tmp_path)
    assert splits["validation"] == [{"premise": "C.", "hypothesis": "D.", "label": 1}]
    assert splits["test"] == [{"premise": "A.", "hypothesis": "B.", "label": 2}]

    _write(tmp_path / "QNLI" / "train.tsv", ["index\tquestion\tsentence\tlabel", "0\tWho?\tAnn.\tnot_entailment"])
    _write(tmp_path / "QNLI" / "dev.tsv", ["index\tquestion\tsentence\tlabel", "0\tWho?\tAnn.\tentailment"])
    assert load_official_splits("qnli", tmp_path)["train"][0]["label"] == 1

    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "fine\tmaybe"])
    _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "fine\t1"])
    with pytest.raises(DataError, match="train.tsv line 2: label 'maybe'"):
        load_official_splits("sst2", tmp_path)


SST2_DEV = ["sentence\tlabel", "fine\t1"]
STSB_HEAD = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
CB_ROW = {"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0}


@pytest.mark.parametrize("task, files, message", [
    ("sst2", {"SST-2/train.tsv": b"", "SST-2/dev.tsv": SST2_DEV}, "train.tsv is empty: a GLUE file starts with its "
                                                                   "header row"),
    ("sst2", {"SST-2/train.tsv": ["sentence\tlabel", "ok\t1", "x" * 140_000 + "\t1"], "SST-2/dev.tsv": SST2_DEV},
     r"train.tsv line 3: field larger than field limit \(131072\); fix or remove the row"),
    ("sst2", {"SST-2/train.tsv": b"sentence\tlabel\ncaf\xe9\t1\n", "SST-2/dev.tsv": SST2_DEV},
     r"train.tsv is not UTF-8 text \(byte b'\\xe9' cannot be decoded\); convert the file to UTF-8"),
    ("stsb", {"STS-B/train.tsv": [STSB_HEAD, "0\tg\tf\t2012\t0\tnone\tnone\tA.\tB.\tnan"],
              "STS-B/dev.tsv": [STSB_HEAD, "0\tg\tf\t2012\t0\tnone\tnone\tA.\tB.\t1.0"]},
     "train.tsv line 2: score 'nan' is not a finite number; fix or remove the row"),
    ("stsb", {"STS-B/train.tsv": [STSB_HEAD, "0\tg\tf\t2012\t0\tnone\tnone\tA.\tB.\t1.0"],
              "STS-B/dev.tsv": [STSB_HEAD, "0\tg\tf\t2012\t0\tnone\tnone\tA.\tB.\tinf"]},
     "dev.tsv line 2: score 'inf' is not a finite number"),
    ("cb", {"CB/train.jsonl": [json.dumps({**CB_ROW, "premise": None})], "CB/val.jsonl": [json.dumps(CB_ROW)]},
     "train.jsonl line 1: not a cb example .*field 'premise' is None, not text"),
    ("cb", {"CB/train.jsonl": [json.dumps(CB_ROW)], "CB/val.jsonl": [json.dumps({**CB_ROW, "hypothesis": 5})]},
     "val.jsonl line 1: not a cb example .*field 'hypothesis' is 5, not text"),
    ("newsqa", {"mrqa/train/NewsQA.jsonl.gz": b"\x1f\x8b\x08\x00cut", "mrqa/dev/NewsQA.jsonl.gz": b""},
     r"NewsQA.jsonl.gz could not be read \(.*\); re-download it"),
], ids=["empty tsv", "long field", "not utf-8", "nan score", "inf score", "null text", "numeric text", "cut gzip"])
def test_a_bad_file_or_row_is_named_with_the_fix(task, files, message, tmp_path):
    for name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(content)
        else:
            _write(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        load_official_splits(task, tmp_path)


RECORD_ROW = {"idx": 0, "passage": {"text": "Ann met Bo.", "entities": [{"start": 0, "end": 2}, {"start": 8, "end": 9}]},
              "qas": [{"query": "@placeholder met Bo.", "idx": 0, "answers": [{"start": 0, "end": 2, "text": "Ann"}]}]}
MRQA_ROW = {"context": "Ann met Bo.", "qas": [{"question": "Who met Bo?", "qid": "q1",
                                               "detected_answers": [{"text": "Ann", "char_spans": [[0, 2]]}]}]}
WINOGRANDE_ROW = {"sentence": "Ann helped Bo because _ was kind.", "option1": "Ann", "option2": "Bo", "answer": "1"}


def _gzip_lines(path: Path, rows: list):
    import gzip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode()))


def _with(row: dict, **changes) -> dict:
    """A deep copy of `row` with the first question's answers (or the passage's entities) changed."""
    row = json.loads(json.dumps(row))
    if "qas" in row and "answers" in changes:
        row["qas"][0]["answers" if "passage" in row else "detected_answers"] = changes.pop("answers")
    if "entities" in changes:
        row["passage"]["entities"] = changes.pop("entities")
    return {**row, **changes}


@pytest.mark.parametrize("task, split, row, message", [
    ("record", "val", _with(RECORD_ROW, answers=[]), "val.jsonl line 1: not a record example .*query 0 has no gold "
                                                     "answer"),
    ("record", "train", _with(RECORD_ROW, answers=[]), "train.jsonl line 1: .*query 0 has no gold answer"),
    ("record", "val", _with(RECORD_ROW, answers=[{"text": None}]), r"query 0 has answer\(s\) \[None\] that are not "
                                                                    "text"),
    ("record", "train", _with(RECORD_ROW, entities=[{"start": 8, "end": 40}]), r"entity span\(s\) \[\(8, 40\)\] are "
                                                                              "not .* within the passage of 11"),
    ("record", "train", _with(RECORD_ROW, entities=[{"start": 5, "end": 2}]), r"entity span\(s\) \[\(5, 2\)\]"),
    ("newsqa", "dev", _with(MRQA_ROW, answers=[]), "dev/NewsQA.jsonl.gz line 2: not a newsqa example .*question q1 "
                                                   "has no gold answer"),
    ("newsqa", "train", _with(MRQA_ROW, answers=[{"text": 42}]), r"train/NewsQA.jsonl.gz line 2: .*question q1 has "
                                                                 r"answer\(s\) \[42\] that are not text"),
    ("winogrande", "dev", {**WINOGRANDE_ROW, "answer": "²"}, "dev.jsonl line 1: label '²' is not one of "
                                                             r"\['1', '2'\]; fix or remove the row"),
    ("winogrande", "train", {**WINOGRANDE_ROW, "answer": "0"}, "train_xl.jsonl line 1: label '0' is not one of "
                                                               r"\['1', '2'\]; fix"),
], ids=["record no answer", "record training row without answer", "record null answer", "record span past the end",
        "record span backwards", "mrqa no answer", "mrqa numeric answer", "winogrande superscript", "winogrande 0"])
def test_a_broken_extractive_or_winogrande_row_is_named_with_file_and_line(task, split, row, message, tmp_path):
    good = {"record": RECORD_ROW, "newsqa": MRQA_ROW, "winogrande": WINOGRANDE_ROW}[task]
    rows = {"train": [good], "dev" if task != "record" else "val": [good]}
    rows[split] = [row]
    for name, content in rows.items():
        if task == "record":
            _write(tmp_path / "superglue" / "ReCoRD" / f"{name}.jsonl", [json.dumps(r) for r in content])
        elif task == "newsqa":
            _gzip_lines(tmp_path / "mrqa" / name / "NewsQA.jsonl.gz", [{"header": {}}] + content)
        else:
            _write(tmp_path / "winogrande" / ("train_xl.jsonl" if name == "train" else "dev.jsonl"),
                   [json.dumps(r) for r in content])
    with pytest.raises(DataError, match=message):
        load_official_splits(task, tmp_path)
    rows[split] = [good]                                                 # the good rows read
    if task == "newsqa":
        _gzip_lines(tmp_path / "mrqa" / split / "NewsQA.jsonl.gz", [{"header": {}}, good])
    else:
        name = {"record": f"superglue/ReCoRD/{split}.jsonl", "winogrande": "winogrande/" + (
            "train_xl.jsonl" if split == "train" else "dev.jsonl")}[task]
        _write(tmp_path / name, [json.dumps(good)])
    official = load_official_splits(task, tmp_path)
    assert official[{"val": "validation", "dev": "validation"}.get(split, split)][0]["label" if task == "winogrande"
                                                                                   else "answers"] in (0, ["Ann"])


def test_yelp_rows_are_the_label_a_comma_and_the_quoted_text(tmp_path):
    folder = tmp_path / "yelp_review_polarity_csv"
    _write(folder / "train.csv", ['"2","Great food, ""really"" good.\\nWill return."', '"1","meh"'])
    _write(folder / "test.csv", ['"12","x"'])
    with pytest.raises(DataError, match=r"test.csv line 1: not a Yelp-2 row .*found '\"12\",\"x\"'; fix or remove"):
        load_official_splits("yelp", tmp_path)
    for broken in ('"1"', '"1","', '"2";"text"', '"3","text"'):
        _write(folder / "test.csv", [broken])
        with pytest.raises(DataError, match="test.csv line 1: not a Yelp-2 row"):
            load_official_splits("yelp", tmp_path)
    _write(folder / "test.csv", ['"1","x"'])
    official = load_official_splits("yelp", tmp_path)
    assert official["train"] == [{"text": 'Great food, ""really"" good.\\nWill return.', "label": 1},
                                 {"text": "meh", "label": 0}]
    assert official["test"] == [{"text": "x", "label": 0}]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    _write(tmp_path / "CB" / "train.jsonl", ['{"premise": "a", "hypothesis": "b", "label": "neutral"}',
                                             '{"premise": "a", "label": "neutral"}'])
    _write(tmp_path / "CB" / "val.jsonl", ["{not json"])
    with pytest.raises(DataError, match=r"train.jsonl line 2: .*missing field\(s\) \['hypothesis'\]"):
        load_official_splits("cb", tmp_path)


def test_superglue_formats(tmp_path):
    def jsonl(task_folder, rows):
        for split in ("train", "val"):
            _write(tmp_path / "superglue" / task_folder / f"{split}.jsonl", [json.dumps(r) for r in rows])

    jsonl("BoolQ", [{"question": "is it", "passage": "It is.", "label": True, "idx": 0}])
    jsonl("WiC", [{"word": "bank", "sentence1": "A.", "sentence2": "B.", "start1": 0, "end1": 1, "start2": 0,
                   "end2": 1, "label": False, "idx": 0}])
    jsonl("WSC", [{"text": "The cup fell because it was round .", "label": True, "idx": 0,
                   "target": {"span1_index": 1, "span1_text": "cup", "span2_index": 4, "span2_text": "it"}}])
    jsonl("MultiRC", [{"idx": 0, "passage": {"text": "Sue ran.", "questions": [
        {"question": "Who ran?", "idx": 0, "answers": [{"text": "Sue", "idx": 0, "label": 1},
                                                       {"text": "Bo", "idx": 1, "label": 0}]}]}}])
    root = tmp_path
    assert format_example("boolq", load_splits("boolq", root)["train"][0]) == \
        ("question: is it passage: It is.", "1")
    assert format_example("wic", load_splits("wic", root)["train"][0]) == \
        ("sentence1: A. sentence2: B. word: bank", "0")
    assert format_example("wsc", load_splits("wsc", root)["train"][0]) == \
        ("text: The * cup * fell because # it # was round .", "1")
    multirc = load_splits("multirc", root)["train"]
    assert [format_example("multirc", e) for e in multirc] == [
        ("question: Who ran? answer: Sue paragraph: Sue ran.", "1"),
        ("question: Who ran? answer: Bo paragraph: Sue ran.", "0")]
    assert multirc[1]["idx"] == {"paragraph": 0, "question": 0, "answer": 1}


# --------------------------------------------------------------------------- #
# Few-shot
# --------------------------------------------------------------------------- #

def k_shot_as_the_official_code(task, rows, k, seed):
    """The official rule, written apart from minidept's: shuffle with `datasets`, then one greedy pass."""
    import datasets

    shuffled = datasets.Dataset.from_list([{"row": i} for i in range(len(rows))]).shuffle(seed=seed)
    classes = 2 if task == "stsb" else max(int(row["label"]) for row in rows) + 1
    counts, taken = Counter(), []
    for i in shuffled["row"]:
        if len(taken) == k:
            break
        target = format_example(task, rows[i])[1]
        label = ("0" if float(target) <= 2.5 else "1") if task == "stsb" else target
        if counts[label] < k // classes or len(taken) == k - 1:
            counts[label] += 1
            taken.append(rows[i])
    return taken


def test_the_permutation_is_the_one_of_datasets_shuffle():
    import datasets

    for n, seed in ((2, 0), (250, 42), (3_000, 7)):   # two classes of n / 2: K = n takes every example in turn
        shuffled = datasets.Dataset.from_list([{"i": i} for i in range(n)]).shuffle(seed=seed)
        examples = [{"i": i, "label": i % 2} for i in range(n)]
        assert [e["i"] for e in k_shot("sst2", examples, n, seed)] == shuffled["i"]


@pytest.mark.parametrize("task, k, seed", [("cb", 16, 42), ("cb", 4, 1), ("cb", 32, 7), ("rte", 16, 0),
                                           ("stsb", 16, 42), ("stsb", 5, 3)])
def test_k_shot_is_the_official_rule(data_dir, task, k, seed):
    train = load_splits(task, data_dir)["train"]
    few = k_shot(task, train, k, seed)
    assert few == k_shot_as_the_official_code(task, train, k, seed)
    counts = sorted(Counter(e["label"] > 2.5 if task == "stsb" else e["label"] for e in few).values())
    if task == "cb":   # K // C of each of the three classes, then one more only once K - 1 are taken
        assert counts == {4: [1, 1, 2], 16: [5, 5, 6], 32: [10, 10, 10]}[k]
    else:
        assert len(few) == k
    assert few != k_shot(task, train, k, seed + 1)


def test_k_shot_can_take_fewer_than_k_but_not_none():
    examples = [{"label": 0}] * 10 + [{"label": 1}] * 2
    assert len(k_shot("sst2", examples, 5, 0)) == 5        # 2 of each, then one more
    assert len(k_shot("sst2", examples, 8, 0)) == 6        # 4 of class 0 and the only 2 of class 1: K - 1 never
    with pytest.raises(ValueError, match="takes no example of cb for K=2"):
        k_shot("cb", [{"label": i % 3} for i in range(30)], 2, 0)   # K // C = 0 and K - 1 = 1 is never reached


# --------------------------------------------------------------------------- #
# Tokenisation and padding with the real tokenizers
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def t5_tokenizer(data_dir):
    return minidept.load_tokenizer(data_dir / "t5-tokenizer")


@pytest.fixture(scope="module")
def gpt2_tokenizer(data_dir):
    return minidept.load_tokenizer(data_dir / "gpt2-tokenizer")


@pytest.fixture(scope="module")
def sentences(sst2):
    return sst2["train"][:64]


def test_t5_encode_and_collate(t5_tokenizer, sentences):
    rows, truncated = encode_examples("sst2", sentences, t5_tokenizer, 256, False, 1)
    assert truncated == 0
    for row, example in zip(rows, sentences):
        source, target = format_example("sst2", example)
        assert row["input_ids"] == t5_tokenizer.encode(source).ids and row["input_ids"][-1] == 1   # </s>
        assert row["labels"] == t5_tokenizer.encode(target).ids == {"0": [3, 632, 1], "1": [209, 1]}[target]
        assert row["target"] == target
    batch = collate(rows[:8], pad_id=0)
    lengths = [len(r["input_ids"]) for r in rows[:8]]
    assert batch["input_ids"].shape == (8, max(lengths))
    assert batch["labels"].shape == (8, max(len(r["labels"]) for r in rows[:8]))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for b, n in enumerate(lengths):                        # right padding with pad id 0
        assert batch["input_ids"][b, n:].eq(0).all() and batch["attention_mask"][b, n:].eq(0).all()
        m = len(rows[b]["labels"])
        assert batch["labels"][b, :m].tolist() == rows[b]["labels"] and batch["labels"][b, m:].eq(-100).all()


def test_t5_truncation_is_counted_and_keeps_eos(t5_tokenizer, sentences):
    full, _ = encode_examples("sst2", sentences, t5_tokenizer, 10_000, False, 1)
    rows, truncated = encode_examples("sst2", sentences, t5_tokenizer, 8, False, 1)
    assert truncated == sum(len(r["input_ids"]) > 8 for r in full) > 0
    for short, long in zip(rows, full):
        assert len(short["input_ids"]) == min(8, len(long["input_ids"])) and short["input_ids"][-1] == 1
        assert short["input_ids"][:-1] == long["input_ids"][:len(short["input_ids"]) - 1]
        assert short["labels"] == long["labels"]


def test_gpt2_encode_and_collate(gpt2_tokenizer, sentences):
    eos = gpt2_tokenizer.token_to_id("<|endoftext|>")
    rows, truncated = encode_examples("sst2", sentences, gpt2_tokenizer, 256, True, eos)
    assert truncated == 0
    for row, example in zip(rows, sentences):
        source, target = format_example("sst2", example)
        prompt = gpt2_tokenizer.encode(source + GPT2_ANSWER_CUE).ids   # the joined text tokenises the same
        target_ids = gpt2_tokenizer.encode(target).ids
        assert row["input_ids"] == prompt + target_ids + [eos]
        assert row["prompt_length"] == len(prompt)
        assert row["labels"] == [-100] * len(prompt) + target_ids + [eos]
    batch = collate(rows[:8], pad_id=eos)
    for b, row in enumerate(rows[:8]):
        n, p = len(row["input_ids"]), row["prompt_length"]
        assert batch["input_ids"][b, :n].tolist() == row["input_ids"]
        assert batch["labels"][b, n:].eq(-100).all() and batch["attention_mask"][b].sum() == n
        assert batch["prompt_ids"][b, :p].tolist() == row["input_ids"][:p]
        assert batch["prompt_mask"][b].sum() == p and batch["prompt_ids"][b, p:].eq(eos).all()
    assert gpt2_tokenizer.decode(batch["prompt_ids"][0, :rows[0]["prompt_length"]].tolist()).endswith(" Label : ")


def test_gpt2_truncation_cuts_the_source_only(gpt2_tokenizer, sentences):
    eos = gpt2_tokenizer.token_to_id("<|endoftext|>")
    full, _ = encode_examples("sst2", sentences, gpt2_tokenizer, 10_000, True, eos)
    rows, truncated = encode_examples("sst2", sentences, gpt2_tokenizer, 12, True, eos)
    assert truncated == sum(len(r["input_ids"]) > 12 for r in full) > 0
    cue = gpt2_tokenizer.encode(" Label : ").ids
    for short, long in zip(rows, full):
        assert len(short["input_ids"]) <= 12
        p = short["prompt_length"]
        assert short["input_ids"][p - len(cue):p] == cue                   # cue kept
        assert short["input_ids"][p:] == long["input_ids"][long["prompt_length"]:]   # target + eos kept
        assert short["input_ids"][:p - len(cue)] == long["input_ids"][:p - len(cue)]
    with pytest.raises(ValueError, match="no room for the source"):
        encode_examples("sst2", sentences[:1], gpt2_tokenizer, 5, True, eos)


def test_llama_rows_start_with_bos_and_the_answer_has_none(data_dir, sentences):
    """Llama: <s> in front of the source (the tokenizer's own, as in pretraining), none before the answer."""
    tokenizer = minidept.load_tokenizer(data_dir / "llama2-tokenizer")
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    rows, _ = encode_examples("sst2", sentences, tokenizer, 256, True, eos)
    short, truncated = encode_examples("sst2", sentences, tokenizer, 12, True, eos)
    cue = tokenizer.encode(GPT2_ANSWER_CUE, add_special_tokens=False).ids
    assert (bos, eos, cue) == (1, 2, [29871, 15796, 584, 29871])   # SentencePiece: the cue starts with a space
    for row, cut, example in zip(rows, short, sentences):
        source, target = format_example("sst2", example)
        answer = tokenizer.encode(target, add_special_tokens=False).ids + [eos]
        assert row["input_ids"] == tokenizer.encode(source).ids + cue + answer and row["input_ids"][0] == bos
        assert row["input_ids"].count(bos) == 1 and row["labels"][row["prompt_length"]:] == answer
        assert cut["input_ids"][0] == bos and len(cut["input_ids"]) <= 12     # truncation keeps <s>
    assert truncated > 0


def test_a_panic_of_the_tokenizer_is_one_line(t5_tokenizer):
    """The Rust library's panic (a BaseException, e.g. its thread pool failing to start under load) becomes a
    one-line DataError where minidept tokenizes; the test processes use no thread pool at all."""
    assert os.environ.get("TOKENIZERS_PARALLELISM") == "false"           # tests/conftest.py, for subprocesses too
    PanicException = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})

    class Panicking:
        def __getattr__(self, name):
            return getattr(t5_tokenizer, name)

        def encode_batch(self, *args, **kwargs):
            raise PanicException("The global thread pool has not been initialized.: ThreadPoolBuildError { kind: "
                                 "IOError(Os { code: 11, kind: WouldBlock })}\nstack backtrace: ...")

    for decoder_only in (False, True):
        with pytest.raises(DataError) as error:
            encode_examples("sst2", [{"sentence": "fine", "label": 1}], Panicking(), 64, decoder_only, 1)
        assert str(error.value).startswith("the tokenizer failed (PanicException: The global thread pool has not "
                                           "been initialized.") and "\n" not in str(error.value)
        assert "TOKENIZERS_PARALLELISM=false" in str(error.value)
    with pytest.raises(KeyboardInterrupt):                                 # other BaseExceptions pass
        data.tokenize(lambda: (_ for _ in ()).throw(KeyboardInterrupt))


def test_decode_predictions(t5_tokenizer, gpt2_tokenizer):
    # T5: eos 1, pad 0; GPT-2: eos = pad = 50256
    assert decode_predictions(t5_tokenizer, torch.tensor([[3, 632, 1, 0], [3, 209, 1, 0]]), 1, 0) == ["0", "1"]
    assert decode_predictions(gpt2_tokenizer, [[16, 50256, 50256], [15, 50256, 50256]], 50256, 50256) == ["1", "0"]
    # cut at the first eos; pads before it dropped (T5 fills finished rows with pad)
    assert decode_predictions(t5_tokenizer, [[0, 209, 1, 632], [209, 0, 0, 0]], 1, 0) == ["1", "1"]


def test_decode_predictions_cleans_up_spaces_as_the_official_evaluation(t5_tokenizer):
    # transformers 4.26.1's batch_decode: special tokens (<unk> too) dropped, no space before . , ? ! or 's
    ids = t5_tokenizer.encode("John ' s U . S . visit , <unk> ok ?", add_special_tokens=False).ids
    assert decode_predictions(t5_tokenizer, [ids + [1]], 1, 0) == ["John's U. S. visit, ok?"]


@pytest.mark.parametrize("model_name, most", [("demo", 19), ("demo-gpt2", 20)])
def test_a_model_that_never_ends_writes_19_new_tokens_on_t5_and_20_on_gpt2(model_name, most):
    """The official `max_length = 20` counts T5's decoder start token (19 new tokens); GPT-2's is s + 20."""
    import dataclasses
    from minidept.io.backbones import load_backbone
    from minidept.prompted import PromptedModel
    from minidept.methods import PromptConfig
    from minidept.run.evaluate import predict
    backbone, tokenizer = load_backbone(model_name)
    model = PromptedModel(backbone, PromptConfig("dept", l=20, m=4, max_length=64))
    rows, _ = encode_examples("nq", [{"question": "Who?", "context": "Ann won.", "answers": ["Ann"]}], tokenizer, 64,
                              model_name == "demo-gpt2", model.eos_id)
    backbone.config = dataclasses.replace(backbone.config, eos_token_id=10**6)   # an id it can never write
    lengths, generate = [], model.generate
    model.generate = lambda *args, **kwargs: lengths.append((out := generate(*args, **kwargs)).shape[1]) or out
    predict(model, rows, tokenizer)
    assert lengths == [most]


def test_the_official_max_length_of_20_leaves_19_new_tokens_to_t5_and_20_to_gpt2(hf_t5, hf_gpt2):
    """The oracle for `answer_tokens`: transformers' `generate(max_length=20)` (the official
    `generation_max_length`) on an encoder-decoder, and `max_length = s + 20` on a decoder-only model
    with `s` input positions, neither allowed to stop early."""
    t5, gpt2 = hf_t5[0], hf_gpt2[0]
    ids = torch.tensor([[5, 6, 7, 1]])
    out = t5.generate(ids, attention_mask=torch.ones_like(ids), max_length=20, do_sample=False, num_beams=1,
                      eos_token_id=None, suppress_tokens=[1])
    assert out.shape[1] - 1 == answer_tokens(True) == 19          # the first column is the decoder's start token
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    out = gpt2.generate(ids, attention_mask=torch.ones_like(ids), max_length=ids.shape[1] + 20, do_sample=False,
                        num_beams=1, eos_token_id=None, pad_token_id=0, suppress_tokens=[127])
    assert out.shape[1] - ids.shape[1] == answer_tokens(False) == 20


# gold answers and what the official evaluation makes of them after a trip through T5's vocabulary
ROUND_TRIP_CASES = ["naïve café", "Đặng Văn Lâm", "20 km²", "John ' s", "U . S . Army", "don't", "Hello ?!",
                    "the 1998 FIFA World Cup final , held at the Stade de France in Saint - Denis near Paris on 12 July",
                    " two  spaces ", "a <unk> b"]


def test_gold_round_trip_matches_transformers(data_dir, t5_tokenizer, gpt2_tokenizer):
    """The official golds: `batch_decode(tokenizer(gold, max_length=20, truncation=True).input_ids,
    skip_special_tokens=True)` with 4.26.1's clean-up, stripped; decoder-only (GPT-2) golds are not cut."""
    transformers = pytest.importorskip("transformers")
    hf_t5 = transformers.T5TokenizerFast.from_pretrained(data_dir / "t5-tokenizer")
    hf_gpt2 = transformers.GPT2TokenizerFast.from_pretrained(data_dir / "gpt2-tokenizer")
    expected = [text.strip() for text in hf_t5.batch_decode(hf_t5(ROUND_TRIP_CASES, max_length=20, truncation=True)
                                                            .input_ids, skip_special_tokens=True,
                                                            clean_up_tokenization_spaces=True)]
    assert [data.round_trip_gold(t5_tokenizer, gold, 19) for gold in ROUND_TRIP_CASES] == expected
    assert expected[:3] == ["nave café", "ng Văn Lâm", "20 km2"] and expected[3] == "John's"
    assert expected[7] == "the 1998 FIFA World Cup final, held at the Stade de France in Saint"   # 19 tokens
    # recent transformers no longer cleans up BPE output; 4.26.1 did, with the same function
    expected = [hf_gpt2.clean_up_tokenization(text).strip() for text in
                hf_gpt2.batch_decode(hf_gpt2(ROUND_TRIP_CASES).input_ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)]
    assert [data.round_trip_gold(gpt2_tokenizer, gold) for gold in ROUND_TRIP_CASES] == expected
    assert expected[0] == "naïve café" and expected[3] == "John's"


def test_extractive_golds_are_scored_after_the_round_trip(t5_tokenizer):
    """The model's best possible output for "naïve café" is "nave café" (T5 has no "ï"): EM 100, as officially;
    against the raw gold it would score 0. The clean-up changes F1's tokens too ("John ' s" -> "John's")."""
    examples = [{"question": "Who?", "context": "x", "answers": ["naïve café"]},
                {"question": "Who?", "context": "x", "answers": ["John's dog"]},
                {"question": "Who?", "context": "x", "answers": ["20 km²", "twenty km²"]}]
    rows, _ = encode_examples("nq", examples, t5_tokenizer, 64, False, 1)
    assert [row["target"] for row in rows] == [["nave café"], ["John's dog"], ["20 km2", "twenty km2"]]
    best = [data.decode_text(t5_tokenizer, t5_tokenizer.encode(row["target"][0], add_special_tokens=False).ids)
            for row in rows]
    assert score("nq", best, [row["target"] for row in rows]) == {"squad_em": 100.0, "squad_f1": 100.0}
    raw = [[format_example("nq", example)[1]] for example in examples]    # the padded gold strings
    assert score("nq", best, raw)["squad_em"] < 100.0
    assert score("nq", ["John's"], [rows[1]["target"]])["squad_f1"] == pytest.approx(100 * 2 / 3)


def test_t5_eos_is_added_where_the_tokenizer_does_not(gpt2_tokenizer):
    """encode_examples for an encoder-decoder ends source and target with eos_id, whatever the tokenizer does."""
    rows, _ = encode_examples("sst2", [{"sentence": "a film", "label": 1}], gpt2_tokenizer, 256, False, 50256)
    assert rows[0]["input_ids"] == gpt2_tokenizer.encode("sentence: a film").ids + [50256]
    assert rows[0]["labels"] == gpt2_tokenizer.encode("1").ids + [50256]


def test_collate_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="cannot collate an empty batch"):
        collate([], 0)


row_ids = st.lists(st.integers(2, 500), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(row_ids, row_ids), min_size=1, max_size=6), st.sampled_from(["t5", "gpt2"]))
def test_collate_unpads_to_the_inputs(rows, model_type):
    """T5 rows are (input_ids, labels); decoder-only rows also carry prompt_length and give prompt_ids/prompt_mask."""
    # made-up encoded rows; for GPT-2 the first len(source) tokens are the prompt
    encoded = [{"input_ids": src, "labels": tgt} if model_type == "t5" else
               {"input_ids": src + tgt, "labels": [-100] * len(src) + tgt, "prompt_length": len(src)}
               for src, tgt in rows]
    batch = collate(encoded, pad_id=0)
    assert ("prompt_ids" in batch) == ("prompt_mask" in batch) == (model_type == "gpt2")
    for b, row in enumerate(encoded):
        mask = batch["attention_mask"][b].bool()
        assert batch["input_ids"][b][mask].tolist() == row["input_ids"]
        assert mask.tolist() == [True] * len(row["input_ids"]) + [False] * (mask.numel() - len(row["input_ids"]))
        labels = batch["labels"][b].tolist()
        assert labels[:len(row["labels"])] == row["labels"] and set(labels[len(row["labels"]):]) <= {-100}
        if model_type == "gpt2":
            assert batch["prompt_ids"][b][batch["prompt_mask"][b].bool()].tolist() == rows[b][0]


# --------------------------------------------------------------------------- #
# Batch order
# --------------------------------------------------------------------------- #

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 40), st.integers(0, 10**6), st.integers(0, 5))
def test_batches_partition_and_depend_only_on_seed_and_epoch(n, batch_size, seed, epoch):
    one = batches(n, batch_size, seed, epoch)
    assert one == batches(n, batch_size, seed, epoch)
    assert sorted(i for batch in one for i in batch) == list(range(n))
    assert all(len(batch) == batch_size for batch in one[:-1])
    assert batches(n, batch_size) == [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 12), st.integers(0, 10**6), st.integers(0, 3), st.booleans(),
       st.data())
def test_grouped_batches_partition_and_pad_less(n, batch_size, seed, epoch, drop_last, data):
    lengths = data.draw(st.lists(st.integers(1, 256), min_size=n, max_size=n))
    grouped = batches(n, batch_size, seed, epoch, drop_last, lengths)
    plain = batches(n, batch_size, seed, epoch, drop_last)
    assert grouped == batches(n, batch_size, seed, epoch, drop_last, lengths)   # depends on its arguments only
    # the same examples as the plain epoch, in batches of the same sizes
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    assert sorted(map(len, grouped)) == sorted(map(len, plain))

    def padded(bs):  # positions after padding each batch to its longest row
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)
    # within each window of GROUP_BATCHES batches, sorting is the partition with the least padding
    assert padded(grouped) <= padded(plain)


def test_grouped_batches_group_by_length():
    lengths = [5, 50] * 400                      # two lengths, interleaved
    grouped = batches(len(lengths), 8, seed=0, lengths=lengths)
    # 2 windows of 50 batches, each sorted: at most one batch per window mixes the two lengths
    assert sum(len({lengths[i] for i in b}) > 1 for b in grouped) <= 2
    assert sum(len({lengths[i] for i in b}) > 1 for b in batches(len(lengths), 8, seed=0)) > 90  # unsorted
    assert [len(b) for b in grouped] == [8] * 100
    assert grouped != batches(len(lengths), 8, seed=0, epoch=1, lengths=lengths)
    with pytest.raises(ValueError, match="lengths has 3 entries for 4 examples"):
        batches(4, 2, 0, lengths=[1, 2, 3])


def train_batch(n, batch_size, seed, step, lengths=None):
    """The batch of training step `step`, as minidept.train's loop picks it."""
    epoch, i = divmod(step, -(-n // batch_size))
    return batches(n, batch_size, seed, epoch, lengths=lengths)[i]


def test_train_batch_resumes_exactly():
    """The loop's batch depends on (seed, step) only: a run resumed at any step sees the same data."""
    n, size, seed = 50, 8, 3
    stream = [train_batch(n, size, seed, step) for step in range(20)]
    # 7 batches an epoch, the last of 2 examples (kept, as the official runs), each epoch a new shuffle
    assert stream[:7] == batches(n, size, seed, epoch=0) and [len(b) for b in stream[:7]] == [8] * 6 + [2]
    assert stream[7:14] == batches(n, size, seed, epoch=1)
    assert stream[7:14] != stream[:7]
    assert [train_batch(n, size, seed, step) for step in range(10, 20)] == stream[10:]   # resume at step 10
    assert train_batch(5, 8, seed, 0) == batches(5, 8, seed, 0)[0] and len(train_batch(5, 8, seed, 0)) == 5
    lengths = list(range(n))
    grouped = [train_batch(n, size, seed, step, lengths) for step in range(20)]
    assert grouped[:7] == batches(n, size, seed, epoch=0, lengths=lengths)
    assert [train_batch(n, size, seed, step, lengths) for step in range(10, 20)] == grouped[10:]


def test_extractive_rows_carry_every_gold_answer_and_a_decoder_keeps_room_to_answer():
    from minidept.run.evaluate import predict
    from minidept.io.backbones import byte_tokenizer
    example = {"question": "Who?", "context": "Ann B. won. " * 30, "answers": ["Ann", "Ann B."]}
    t5, gpt2 = byte_tokenizer("t5"), byte_tokenizer("gpt2")
    rows, truncated = encode_examples("nq", [example], t5, 64, False, 1)
    # scored against every (padded, then decoded) gold answer; trained on the first; a long context is cut, counted
    assert rows[0]["target"] == ["Ann", "Ann B."] and rows[0]["labels"] == t5.encode("Ann").ids
    assert truncated == 1 and len(rows[0]["input_ids"]) == 64 and rows[0]["input_ids"][-1] == 1
    # decoder-only: the source is cut so that 20 answer tokens can follow the cue, whatever the gold answer's length
    rows, truncated = encode_examples("nq", [example], gpt2, 64, True, 1)
    assert truncated == 1 and rows[0]["prompt_length"] == 64 - answer_tokens(False) == 44
    assert rows[0]["input_ids"][44:] == gpt2.encode("Ann").ids + [1] and rows[0]["target"] == ["Ann", "Ann B."]
    # what evaluation decodes, for every task: 19 new tokens on T5, 20 on a decoder-only model
    assert inspect.signature(predict).parameters["max_new_tokens"].default is None
    assert (answer_tokens(True), answer_tokens(False)) == (19, 20)


@pytest.mark.parametrize("tokenizer_folder, eos_name", [("t5-tokenizer", "</s>"), ("gpt2-tokenizer", "<|endoftext|>"),
                                                        ("llama2-tokenizer", "</s>")])
def test_multi_token_answers_with_the_real_tokenizers(data_dir, tokenizer_folder, eos_name):
    """An MRQA answer is several tokens: T5 learns all of them then </s>; a decoder-only model (GPT-2, Llama)
    the same after the cue, and its source is cut so that 20 answer tokens fit within max_length."""
    tokenizer = minidept.load_tokenizer(data_dir / tokenizer_folder)
    eos, decoder_only = tokenizer.token_to_id(eos_name), tokenizer_folder != "t5-tokenizer"
    example = {"question": "Who won the 1998 World Cup?", "context": "France beat Brazil 3-0 in Paris. " * 40,
               "answers": ["France (national team)", "France"]}
    rows, truncated = encode_examples("nq", [example], tokenizer, 128, decoder_only, eos)
    answer = tokenizer.encode("France ( national team ) ", add_special_tokens=False).ids   # padded punctuation
    assert len(answer) > 3 and truncated == 1 and rows[0]["target"] == ["France ( national team )", "France"]
    labels = [t for t in rows[0]["labels"] if t != -100]
    assert labels == answer + [eos] and len(rows[0]["input_ids"]) <= 128
    if decoder_only:
        assert rows[0]["input_ids"][rows[0]["prompt_length"]:] == answer + [eos]
        assert rows[0]["prompt_length"] + answer_tokens(False) <= 128
