"""Score a trained adapter: `python -m minidept.evaluate --adapter PATH` (the test split by default).

PATH is an adapter file, a run folder of `minidept.train` (its adapter.safetensors),
a PEFT prompt-tuning folder, or a Hub repository `owner/name` holding one of these.
The backbone defaults to the one the adapter names (the Hub id or folder it was
trained on), the tokenizer, task and data folder to those in the run's config.json
next to the adapter; `--model`, `--task`, `--data-dir` override them (a --model
other than the adapter's is used, with a warning naming both). Prints the task's
metrics (percent), the number of examples scored and the official file the split is
taken from ("source": a test split is mostly half or all of the official validation
set, whose test labels are not public) as JSON, with a progress bar on a terminal's
stderr before; `--predictions FILE` then writes one JSON object a line with each
example's source, reference and prediction.

`predict` and `evaluate` below are what `minidept.train` scores its validation
and test splits with.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..io.checkpoint import CONFIG_FILE, atomic_write

from ..io.adapters import find_adapter, load_adapter, read_adapter
from ..io.runs import read_run_config
from .cli import command, UsageError, check_writable, option, parse
from ..data.load import collate, decode_predictions, encode_examples, load_splits, split_source
from ..io.backbones import DTYPES, load_backbone
from ..prompted import PromptedModel
from ..data.tasks import Task, answer_tokens, format_example, get_task, score


@torch.no_grad()
def predict(model: PromptedModel, rows: list[dict], tokenizer, max_new_tokens: int | None = None,
            batch_size: int = 64, progress: bool | None = False) -> list[str]:
    """Greedy predictions (stripped strings) for encoded rows, in their order.

    Up to `max_new_tokens`, by default as many as the official evaluation's `max_length = 20`
    allows (`tasks.answer_tokens`: 19 for T5, 20 for a decoder-only model); a batch stops once
    every row has produced end-of-sequence. Rows are batched by length (less padding) and
    the predictions put back in place. An output longer than a label is scored whole
    (invalid), never cut into one. A decoder-only model
    generates from the source + cue alone (`prompt_ids`), never seeing the answer, and
    at most up to s = max_length positions (DePT's rows). `progress`: a bar on stderr (None: on a terminal only).
    """
    was_training = model.training
    model.eval()
    device = model.prompt.P.device
    if max_new_tokens is None:
        max_new_tokens = answer_tokens(model.backbone.is_encoder_decoder)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    predictions = [""] * len(rows)
    bar = tqdm(total=len(rows), unit=" examples", desc="predicting", disable=None if progress is None else not progress)
    for start in range(0, len(rows), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate([rows[i] for i in chunk], model.pad_id)
        ids, mask, n_new = batch["input_ids"], batch["attention_mask"], max_new_tokens
        if "prompt_ids" in batch:
            ids, mask = batch["prompt_ids"], batch["prompt_mask"]
            n_new = min(max_new_tokens, model.config.max_length - ids.shape[1])
        generated = model.generate(ids.to(device), mask.to(device), max_new_tokens=n_new)
        for i, text in zip(chunk, decode_predictions(tokenizer, generated, model.eos_id, model.pad_id)):
            predictions[i] = text
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return predictions


def evaluate(model: PromptedModel, rows: list[dict], task: Task, tokenizer, batch_size: int = 64) -> dict[str, float]:
    """The task's metrics (percent) of greedy predictions on encoded rows."""
    predictions = predict(model, rows, tokenizer, batch_size=batch_size)
    return score(task, predictions, [row["target"] for row in rows])


def load_for_inference(adapter: str | Path, model: str | None = None, tokenizer: str | None = None,
                       device: str = "auto", dtype: str | None = None) -> tuple[PromptedModel, object, dict]:
    """(prompted model in eval mode, tokenizer, the run's settings or {}) for an adapter
    (a file, a run folder, a PEFT folder or a Hub repository: `checkpoints.find_adapter`).

    The backbone is `model`, else the one the adapter names, else the run's `--model` from
    the config.json next to the adapter; its dtype (a name of `models.DTYPES`) `dtype`, else
    the run's, else float32. The run's task is `run["task"]` (`task_of`). The run's config.json is read with
    `io.runs.read_run_config`: a malformed one is refused with one line.
    """
    path = find_adapter(adapter)
    run = read_run_config(path.parent)["run"] if path.is_file() and (path.parent / CONFIG_FILE).is_file() else {}
    metadata, tensors = read_adapter(path)
    name = model or metadata.get("base_model") or run.get("model")
    if not name:
        raise UsageError(f"{path} does not name the backbone it was trained on: pass --model (a Hub id or folder)")
    backbone, tok = load_backbone(name, tokenizer or (run.get("tokenizer") if not model else None),
                                  dtype=DTYPES[dtype or run.get("dtype") or "float32"], device=device)
    prompted = load_adapter(path, backbone, (metadata, tensors))
    return prompted.eval(), tok, run


def task_of(name: str | None, run: dict) -> Task:
    """The task `name`, else the run's."""
    if not (name or run.get("task")):
        raise UsageError("pass --task: there is no config.json of the run next to the adapter")
    return get_task(name or run["task"])


@dataclass
class EvaluateConfig:
    adapter: str = option(None, "adapter file, run folder, PEFT prompt-tuning folder or Hub repository owner/name",
                          required=True)
    task: str = option(None, "task to score (default: the run's)")
    split: str = option("test", "split to score (default test)", choices=("validation", "test", "train"))
    model: str = option(None, "backbone: Hub id, folder or demo name (default: the one the adapter was trained on)")
    tokenizer: str = option(None, "tokenizer folder (default: the run's, else the model's)")
    data_dir: str = option(None, "data folder (default: the run's, else $MINIDEPT_DATA, else the Hub)")
    batch_size: int = option(64, "examples per generation batch (default 64)")
    max_examples: int = option(None, "score only the first N examples of the split")
    device: str = option("auto", "default auto", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option(None, "the backbone's dtype (default: the run's, else float32)", choices=tuple(DTYPES))
    predictions: str = option(None, "also write the predictions here (JSON lines)", metavar="FILE")


@command("python -m minidept.evaluate")
def main(argv: list[str] | None, prog: str) -> int | None:
    args = parse(EvaluateConfig, argv, prog, __doc__.split("\n\n")[0])
    if args.batch_size < 1 or (args.max_examples is not None and args.max_examples < 1):
        raise UsageError("--batch-size and --max-examples must be at least 1")
    if args.predictions:   # checked first: an evaluation is not lost for want of a place to write it
        check_writable(args.predictions, "--predictions")
    model, tokenizer, run = load_for_inference(args.adapter, args.model, args.tokenizer, args.device, args.dtype)
    task = task_of(args.task, run)
    examples = load_splits(task, args.data_dir or run.get("data_dir"))[args.split]
    examples = examples[:args.max_examples] if args.max_examples else examples
    rows, truncated = encode_examples(task, examples, tokenizer, model.config.max_length,
                                      not model.backbone.is_encoder_decoder, model.eos_id)
    predictions = predict(model, rows, tokenizer, batch_size=args.batch_size, progress=None)
    metrics = score(task, predictions, [row["target"] for row in rows])
    # the scores first: a failed write of the predictions below does not lose them
    print(json.dumps({"task": task.name, "split": args.split, "source": split_source(task, args.split),
                      "examples": len(rows), "truncated": truncated, **metrics}), flush=True)
    if args.predictions:
        lines = [json.dumps({"source": format_example(task, ex)[0], "reference": row["target"],
                             "prediction": pred}) for ex, row, pred in zip(examples, rows, predictions)]
        try:
            atomic_write(args.predictions, "".join(line + "\n" for line in lines).encode())
        except OSError as error:   # a full disk, a read-only folder
            raise UsageError(f"--predictions {args.predictions}: could not write it ({error.strerror or error}); "
                             "the scores above are complete") from None


if __name__ == "__main__":
    sys.exit(main())
