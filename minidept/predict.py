"""Label a text with a trained adapter: `python -m minidept.predict --adapter PATH "some text"`.

Prints the generated label, followed by its name when the task has one:

    $ python -m minidept.predict --adapter runs/sst2-dept-t5-base-seed42 "a gorgeous, witty film"
    1 (positive)

A task with several fields takes one text per field, in the task's order
(`--task rte "A cat sat." "A cat exists."`). With no text, each line of stdin
is one example (fields separated by tabs). For WSC, mark the noun `* noun *`
and the pronoun `# pronoun #` in the text yourself. `--raw` prints only the
generated string.
"""

from __future__ import annotations

import dataclasses
import sys

from .data import encode_examples
from .evaluate import load_for_inference
from .io import CheckpointError
from .tasks import Task
from .train import Parser, UsageError, _task, answer_tokens, predict


def example_from_texts(task: Task, texts: list[str]) -> dict:
    """An example dict for `task` from one text per field (the label is a placeholder)."""
    if len(texts) != len(task.fields):
        raise UsageError(f"task {task.name} takes {len(task.fields)} text(s), one per field "
                         f"({', '.join(task.fields)}); got {len(texts)}")
    return {**dict(zip(task.fields, texts)), "label": 0}


def label_texts(model, tokenizer, task: Task, examples: list[list[str]]) -> list[str]:
    """Greedy labels for a list of examples, each a list of field texts."""
    # The texts are used as given: a copy of the task under another name skips the
    # per-task source preparation (WSC's span marking needs span indices we do not have).
    plain = dataclasses.replace(task, name=f"{task.name}-input")
    rows, _ = encode_examples(plain, [example_from_texts(task, t) for t in examples], tokenizer,
                              model.model_type, model.config.max_length)
    return predict(model, rows, tokenizer, answer_tokens(task, tokenizer, model.model_type))


def build_parser() -> Parser:
    p = Parser(prog="python -m minidept.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("texts", nargs="*", help="the example's field texts (none: read examples from stdin)")
    p.add_argument("--adapter", required=True, help="adapter .safetensors file or run folder")
    p.add_argument("--task", help="task whose fields and labels to use (default: the run's)")
    p.add_argument("--model", help="backbone: Hub id, folder or demo name (default: the run's)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--raw", action="store_true", help="print only the generated string")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:   # --help, or a bad option (already reported): return, so main() can be called in-process
        return exit.code
    try:
        model, tokenizer, run = load_for_inference(args.adapter, args.model, args.tokenizer, args.device)
        name = args.task or run.get("task")
        if not name:
            raise UsageError("pass --task: there is no config.json of the run next to the adapter")
        task = _task(name)
        examples = [args.texts] if args.texts else [line.rstrip("\n").split("\t") for line in sys.stdin if line.strip()]
        labels = label_texts(model, tokenizer, task, examples)
    except (UsageError, CheckpointError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for label in labels:
        named = label in task.targets and not args.raw
        print(f"{label} ({task.label_names[int(label)]})" if named else label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
