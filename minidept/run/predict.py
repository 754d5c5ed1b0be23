"""Label a text with a trained adapter: `python -m minidept.predict --adapter PATH "some text"`.

Prints the generated label, followed by its name when the task has one:

    $ python -m minidept.predict --adapter runs/sst2-dept-t5-base-seed42 "a gorgeous, witty film"
    1 (positive)

When the model generated something else (an untrained or random model may), that
raw generation is printed quoted, with a note that it is not one of the task's labels.

A task with one field takes one example per text (`"good" "bad"`: two labels, one a line). A task
with several fields takes one text per field, in the task's order (`--task rte "A cat sat." "A cat
exists."`). With no text, each line of stdin is one example (fields separated by tabs). For WSC,
mark the noun `* noun *` and the pronoun `# pronoun #` in the text yourself. `--raw` prints only
the generated string. A text is cut to what max_length tokens can hold before it is tokenised.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from .cli import command, UsageError, as_run, option, parse
from ..data.load import encode_examples
from .evaluate import load_for_inference, predict, task_of
from ..io.backbones import DTYPES
from ..data.tasks import Task


STDIN_HINT = "one example a line, its fields separated by tabs"


def longest_token(tokenizer) -> int:
    """The most characters one token of the vocabulary stands for (a byte-level token: bytes, so at least as many)."""
    return max(len(token) for token in tokenizer.get_vocab())


def label_texts(model, tokenizer, task: Task, examples: list[list[str]]) -> list[str]:
    """Greedy labels for a list of examples, each a list of field texts (one per field of the task).

    A text is cut to max_length tokens' worth of characters (4 x max_length x the vocabulary's longest
    token) before it is tokenised: what is cut could not have been among the first max_length tokens
    (unless the tokenizer's normaliser deletes most of the text, such as long runs of spaces), and a
    50 MB line costs no more than a short one.
    """
    limit = 4 * model.config.max_length * longest_token(tokenizer)
    for texts in examples:
        if len(texts) != len(task.fields):
            raise UsageError(f"task {task.name} takes {len(task.fields)} text(s) per example, one per field "
                             f"({', '.join(task.fields)}); got {len(texts)}. For several examples, pass them on "
                             f"standard input, {STDIN_HINT}")
        for text in texts:   # bytes that were not UTF-8 arrive as lone surrogates (argv, a C locale's stdin)
            try:
                text[:limit].encode("utf-8")
            except (TypeError, AttributeError, UnicodeEncodeError):   # not a str, or lone surrogates
                raise UsageError(f"the text {str(text)[:80]!r} is not UTF-8 text; pass UTF-8 (e.g. iconv -t utf-8)") from None
    examples = [[text[:limit] for text in texts] for texts in examples]
    # The texts are used as given: a copy of the task under another name skips the
    # per-task source preparation (WSC's span marking needs span indices we do not have).
    plain = dataclasses.replace(task, name=f"{task.name}-input")
    examples = [{**dict(zip(task.fields, texts)), "label": 0, "answers": [""]} for texts in examples]
    rows, _ = encode_examples(plain, examples, tokenizer, model.config.max_length,
                              not model.backbone.is_encoder_decoder, model.eos_id)
    return predict(model, rows, tokenizer)


@dataclass
class PredictConfig:
    texts: list = option(None, "the texts: one example each for a one-field task, else one example's fields in the "
                               f"task's order (none: read examples from standard input, {STDIN_HINT})")
    adapter: str = option(None, "adapter file, run folder, PEFT prompt-tuning folder or Hub repository owner/name",
                          required=True)
    task: str = option(None, "task whose fields and labels to use (default: the run's)")
    model: str = option(None, "backbone: Hub id, folder or demo name (default: the one the adapter was trained on)")
    tokenizer: str = option(None, "tokenizer folder (default: the run's, else the model's)")
    device: str = option("auto", "default auto", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option(None, "the backbone's dtype (default: the run's, else float32)", choices=tuple(DTYPES))
    raw: bool = option(False, "print only the generated string")


@command("python -m minidept.predict")
def main(argv: list[str] | None, prog: str) -> int | None:
    args = parse(PredictConfig, argv, prog, __doc__.split("\n\n")[0], positional="texts")
    model, tokenizer, run = load_for_inference(args.adapter, args.model, args.tokenizer, args.device, args.dtype)
    task = task_of(args.task, run)
    if not args.texts and sys.stdin.isatty():   # not silence while it waits for a terminal's input
        print(f"{as_run(prog)}: reading examples from standard input, {STDIN_HINT}; end with Ctrl-D", file=sys.stderr)
    try:
        if args.texts:
            examples = [[text] for text in args.texts] if len(task.fields) == 1 else [args.texts]
        else:
            examples = [line.rstrip("\n").split("\t") for line in sys.stdin if line.strip()]
    except UnicodeDecodeError as error:
        raise UsageError(f"standard input is not UTF-8 text ({error}); pass UTF-8 (e.g. iconv -t utf-8)") from None
    for label in label_texts(model, tokenizer, task, examples):
        if args.raw or task.answers or (task.is_regression and label.replace(".", "", 1).isdigit()):
            print(label)
        elif label in task.targets:
            print(f"{label} ({task.label_names[int(label)]})")
        else:
            print(f"{label!r}: the model's raw generation, not a label of {task.name} "
                  f"({', '.join(task.targets) or 'a number from 0 to 5'})")


if __name__ == "__main__":
    sys.exit(main())
