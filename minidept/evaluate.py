"""Score a trained adapter: `python -m minidept.evaluate --adapter PATH --task T [--split test]`.

PATH is an adapter file or a run folder of `minidept.train` (its adapter.safetensors).
The backbone, tokenizer, task and data folder default to those in the run's
config.json next to the adapter; `--model`, `--task`, `--data-dir` override them.
Prints the task's metrics (percent) as JSON; `--predictions FILE` also writes
one JSON object a line with each example's source, reference and prediction.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .data import DataError, encode_examples
from .io import CheckpointError, write_bytes
from .prompts import PromptedModel
from .tasks import format_example, score
from .train import ADAPTER_FILE, CONFIG_FILE, Parser, UsageError, _task, answer_tokens, load_backbone, \
    pick_device, predict


def find_adapter(path: str | Path) -> tuple[Path, dict]:
    """(adapter file, the run's settings or {}) for an adapter file or a run folder."""
    path = Path(path)
    file = path / ADAPTER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"no adapter at {file}: pass an adapter .safetensors file or a run folder of "
                         "minidept.train (holding adapter.safetensors)")
    config = file.parent / CONFIG_FILE
    run = {}
    if config.is_file():
        try:
            run = json.loads(config.read_text(encoding="utf-8")).get("run", {})
        except ValueError:
            run = {}
    return file, run


def load_for_inference(adapter: str | Path, model: str | None = None, tokenizer: str | None = None,
                       device: str = "auto") -> tuple[PromptedModel, object, dict]:
    """(prompted model in eval mode, tokenizer, the run's settings) for an adapter.

    The backbone is `model`, else the run's `--model` from config.json next to the adapter.
    """
    file, run = find_adapter(adapter)
    name = model or run.get("model")
    if not name:
        raise UsageError(f"{file} has no config.json of its run next to it: pass --model (the backbone it "
                         "was trained on)")
    backbone, tok = load_backbone(name, tokenizer or (run.get("tokenizer") if not model else None))
    prompted = PromptedModel.from_adapter(file, backbone.to(pick_device(device)))
    return prompted.eval(), tok, run


def build_parser() -> Parser:
    p = Parser(prog="python -m minidept.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="adapter .safetensors file or run folder")
    p.add_argument("--task", help="task to score (default: the run's)")
    p.add_argument("--split", choices=("validation", "test", "train"), default="test")
    p.add_argument("--model", help="backbone: Hub id, folder or demo name (default: the run's)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--data-dir", help="data folder (default: the run's, else $MINIDEPT_DATA, else the Hub)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-examples", type=int, help="score only the first N examples of the split")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--predictions", metavar="FILE", help="also write the predictions here (JSON lines)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:   # --help, or a bad option (already reported): return, so main() can be called in-process
        return exit.code
    try:
        if args.batch_size < 1 or (args.max_examples is not None and args.max_examples < 1):
            raise UsageError("--batch-size and --max-examples must be at least 1")
        model, tokenizer, run = load_for_inference(args.adapter, args.model, args.tokenizer, args.device)
        name = args.task or run.get("task")
        if not name:
            raise UsageError("pass --task: there is no config.json of the run next to the adapter")
        task = _task(name)
        if task.name == "demo":
            from .demo import make_splits
            examples = make_splits()[args.split]
        else:
            from .data import load_splits
            examples = load_splits(task, args.data_dir or run.get("data_dir"))[args.split]
        examples = examples[:args.max_examples] if args.max_examples else examples
        rows, truncated = encode_examples(task, examples, tokenizer, model.model_type, model.config.max_length)
    except (UsageError, DataError, CheckpointError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    predictions = predict(model, rows, tokenizer, answer_tokens(task, tokenizer, model.model_type), args.batch_size)
    metrics = score(task, predictions, [row["target"] for row in rows])
    if args.predictions:
        lines = [json.dumps({"source": format_example(task, ex)[0], "reference": row["target"], "prediction": pred})
                 for ex, row, pred in zip(examples, rows, predictions)]
        write_bytes(args.predictions, "".join(line + "\n" for line in lines).encode())
    print(json.dumps({"task": task.name, "split": args.split, "examples": len(rows), "truncated": truncated,
                      **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
