"""Every setting of a training run, declared once: the command line's options and the Python API.

`python -m minidept.train --max-steps 100` is `train(TrainConfig(max_steps=100))`. A field's
default is the value for every task; `None` means "derived", and its help says from what: the
task's published DePT setting (the table in `minidept/data/tasks.py`, docs/methods.md section
5), the budget rule for `r`, or another option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.tasks import TASKS
from ..io.backbones import DTYPES
from ..methods import DEFAULT_INIT_TEXT, INITS, METHODS
from .cli import option

TASK_DEFAULT = "the task's value in minidept/data/tasks.py (the released runs', else minidept's choice)"
MAX_WARMUP = 500
BUILT_IN_STEPS, BUILT_IN_EVAL_EVERY = 500, 100   # the models built into minidept train in minutes, not hours


@dataclass
class TrainConfig:
    """Every setting of a training run (`help(TrainConfig)` lists them with their defaults)."""
    task: str | None = option(None, f"required: {', '.join(TASKS)}")
    model: str = option("t5-base", "Hub id or local folder with config.json + model.safetensors; pocket-t5 / "
                                   "pocket-gpt2 for the small T5 / GPT-2 pretrained by minidept (no download); "
                                   "demo / demo-gpt2 / demo-llama "
                                   "for tiny RANDOM models (mechanics only)")
    tokenizer: str | None = option(None, "folder with the tokenizer files (None: the model's)")
    method: str = option("dept", "the method", choices=METHODS)
    l: int | None = option(None, "vanilla prompt length: PT's length and everyone's budget l*d (None: the task's, "
                                 "100; 20 for the demo task)")
    m: int | None = option(None, f"short prompt length (None: {TASK_DEFAULT}; PT: l)")
    r: int | None = option(None, "rank of DePT/EPT, bottleneck of ADePT (None: the largest within l*d)")
    max_length: int | None = option(None, f"s, the longest input in tokens (None: {TASK_DEFAULT}, 256 mostly, "
                                           "lowered to fit a GPT-2 or Llama context after the prompt)")
    init: str = option("text", "prompt initialisation: the embeddings of --init-text's tokens and end-of-sequence "
                               "cycled to the prompt's length (the official runs), vocabulary rows, or random",
                       choices=INITS)
    init_text: str = option(DEFAULT_INIT_TEXT, "the text of --init text (the official runs' text, sic)")
    init_from: str | None = option(None, "start from an adapter trained on another task (transfer): a file, a run "
                                         "folder, a PEFT prompt-tuning folder or a Hub repository owner/name",
                                   metavar="ADAPTER")
    batch_size: int | None = option(None, f"examples per optimizer step, over all processes (None: {TASK_DEFAULT})")
    grad_accum: int | None = option(None, "split each process's share of a batch into K micro-batches, one backward "
                                          f"each, one step: less memory, the same result (None: {TASK_DEFAULT}: 1, "
                                          "MRQA and ReCoRD 2)", metavar="K")
    group_by_length: bool = option(False, "batch training examples of similar length (less padding, faster; off in "
                                          "the paper's code)")
    max_steps: int | None = option(None, f"None: {TASK_DEFAULT}; {BUILT_IN_STEPS} on the models built into minidept")
    warmup_steps: int | None = option(None, f"None: min({MAX_WARMUP}, max_steps // 10)")
    lr_prompt: float | None = option(None, f"learning rate of the prompt (None: {TASK_DEFAULT})")
    lr_lowrank: float | None = option(None, f"learning rate of A, B / the offset network (None: {TASK_DEFAULT})")
    eval_every: int | None = option(None, f"evaluate on the validation split every N steps (None: 1000; "
                                          f"{BUILT_IN_EVAL_EVERY} on the models built into minidept)")
    save_every: int | None = option(None, "save the training state every N steps (None: --eval-every)")
    log_every: int = option(10, "write a training record to metrics.jsonl every N steps")
    eval_batch_size: int = option(64, "examples per generation batch in evaluation")
    max_eval_examples: int | None = option(None, "score at most N examples of the validation split and of the test "
                                                 "split too (quick runs; the counts are printed and saved)")
    k_shot: int | None = option(None, "train on K examples in all, as the official runs: one pass over the training "
                                      "split shuffled with --seed, taking an example while its class has fewer than "
                                      "K // C (C classes), or whatever its class once K - 1 are taken (STS-B: two "
                                      "classes, score <= 2.5 and above)", metavar="K")
    data_dir: str | None = option(None, "folder with the task's original files (None: $MINIDEPT_DATA, else the Hub)")
    output_dir: str | None = option(None, "the run folder (None: runs/{task}-{method}-{model}-seed{seed})")
    seed: int = option(42, "seeds the prompt init, dropout and the data order")
    device: str = option("auto", "auto: CUDA, else Apple's MPS, else the CPU", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option("float32", "the frozen backbone's dtype (float16 on GPUs only); the adapter, its gradients, "
                                   "AdamW's state and the loss stay float32", choices=tuple(DTYPES))
    activation_checkpointing: bool = option(False, "keep only each frozen block's input and recompute the block in "
                                                   "the backward pass: less memory, one more forward")
    # how to run, not what: never saved with the run
    resume: bool = option(False, "continue the run in --output-dir from its saved state; settings left at their "
                                 "default are taken from its config.json")
    overwrite: bool = option(False, "start again in an --output-dir that holds a run")
    stop_at: int | None = option(None, "stop after this step and save the state (the schedule still follows "
                                       "--max-steps); continue with --resume", metavar="STEP")
    threads: int | None = option(None, "CPU threads for torch (None: torch's choice, all cores; on a busy machine "
                                       "fewer are often faster)")
    quiet: bool = option(False, "no progress bar")
    report_to: str | None = option(None, "also send metrics.jsonl's records to TensorBoard (RUN/tensorboard) or W&B; "
                                         "needs pip install 'minidept[tensorboard]' or 'minidept[wandb]'",
                                   choices=("tensorboard", "wandb"))


DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
NOT_SAVED = ("resume", "overwrite", "stop_at", "threads", "quiet", "report_to")
# Settings that a resumed run must share with the saved one (the others may change, with a note).
FIXED_ON_RESUME = ("task", "model", "method", "l", "m", "r", "max_length", "init", "init_text", "init_from",
                   "batch_size", "group_by_length", "k_shot", "seed")


def command_line(settings: dict) -> list[str]:
    """The options of `python -m minidept.train` that give these settings (TrainConfig's fields; defaults, unset
    ones and false flags left out)."""
    argv = []
    for field in dataclasses.fields(TrainConfig):
        value = settings.get(field.name)
        if value is not None and value is not False and value != DEFAULTS[field.name]:
            argv += [f"--{field.name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv
