# %% [markdown]
# # Tutorial 7: training end to end
#
# The earlier tutorials took the methods apart; this one trains one the way you
# would for real: on SST-2 (binary sentiment, GLUE) with `minidept.train`,
# first from the command line, then from Python. We read the run's log,
# plot it with `minidept.plot`, score the trained adapter with
# `minidept.evaluate` and label new sentences with `minidept.predict`.
#
# The real run of the paper is one command (a GPU and the Hub needed):
#
# ```
# python -m minidept.train --task sst2 --model t5-base      # DePT m=60, r=30, 30,000 steps of batch 32
# ```
#
# Here we use a *tiny random* T5 so the tutorial runs in a minute on a CPU.
# With `MINIDEPT_DATA` set we train on the real SST-2 text with the real T5
# tokenizer; without it, on the embedded demo task (`--task demo --model demo`).
# Either way the backbone knows no language, so expect the loss to fall (the
# prompt pushes the model towards the answer format) and the accuracy to stay
# near chance (50%), or below it while the outputs are not yet labels: a
# prompt can only steer what a pretrained model already knows. The paper's
# DePT reaches 94.2% on SST-2 with a pretrained T5-base.

# %%
import json
import os
import subprocess
import sys
import time

import torch

from minidept.models.t5 import T5
from minidept.io.checkpoint import save_pretrained

from tutorial_setup import DATA, FAST, NOTEBOOK, OUT, REPO, USE_DATA, plt, tiny_t5_config, tokenizer_dir  # shared
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def minidept_cli(*args, stdin=None):
    """Run `python -m minidept.<args>` as a separate process, print its output, return it."""
    result = subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, text=True, env=ENV)
    print(result.stdout.rstrip())
    if result.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


# %% [markdown]
# ## A backbone folder
#
# `--model` takes a Hub id or a folder holding `config.json` and
# `model.safetensors`, exactly what `save_pretrained` writes (tutorial 1). We
# save a tiny random T5 in the T5 v1.1 layout (gated-GELU, separate output
# head, as the demo model; a separate head is easier for a prompt to steer)
# with the real 32,128-row vocabulary, and point `--tokenizer` at the real T5
# tokenizer. Without the data folder we use the embedded demo instead.

# %%
WORK = OUT / "07_training"
steps = 30 if FAST else 200
common = ["--method", "dept", "--max-steps", str(steps), "--batch-size", "16", "--eval-every", str(steps // 2),
          "--log-every", "5", "--max-eval-examples", "100" if FAST else "400", "--threads", "1", "--quiet"]
if FAST:
    common += ["--k-shot", "16"]                       # the test suite: 16 examples in all, quicker to encode
if USE_DATA:
    torch.manual_seed(0)
    backbone_dir = WORK / "tiny-t5"
    tiny = T5(tiny_t5_config(32128, dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    save_pretrained(tiny, backbone_dir)
    task_options = ["--task", "sst2", "--model", str(backbone_dir), "--tokenizer", str(tokenizer_dir("t5")),
                    "--data-dir", DATA]
    print("backbone folder:", sorted(p.name for p in backbone_dir.iterdir()))
else:
    task_options = ["--task", "demo", "--model", "demo"]
    print("no MINIDEPT_DATA: training on the embedded demo task")

# %% [markdown]
# You should see
#
# ```output data
# backbone folder: ['config.json', 'model.safetensors']
# ```
#
# or, without the data,
#
# ```output demo
# no MINIDEPT_DATA: training on the embedded demo task
# ```
#
# ## From the command line
#
# Every option has a default from the official runs (`docs/methods.md`): for
# SST-2, DePT with `m = 60`, `lr_prompt = 0.3`, `lr_lowrank = 5e-4`, `l = 100`
# for the budget, inputs of at most 256 tokens, the prompt started from the
# embeddings of the official text "Classify this text is postive or not:" (sic)
# and its end-of-sequence token (`init text`), AdamW, linear warmup from a
# learning rate of 0 then decay, gradient clipping at 1.0. We shorten the run:
# a few hundred steps of batch 16 at most, evaluation on part of the validation
# split twice, and one CPU thread (fastest for a model this small).
# `--overwrite` lets us run the tutorial again in the same folder.

# %%
cli_dir = WORK / "cli-run"
began = time.perf_counter()
minidept_cli("minidept.train", *task_options, *common, "--output-dir", str(cli_dir), "--overwrite")
print(f"({time.perf_counter() - began:.0f} s)")

# %% [markdown]
# You should see the resolved settings (`m 60`, `r 8`: the budget's rank for
# `d = 64`, `s = 256`; `init text`; `trainable_parameters 6400` =
# `budget_l_times_d 6400`), then two validation lines and the test accuracy of
# the best adapter, each with the number of examples it was measured on
# (`--max-eval-examples` caps the test split too), all roughly at chance (ours
# on SST-2: 43.25% on validation, the share of the negative class there,
# because the model answers `0` to everything; 48.0% on the test examples).
# With the demo: `l 20`, `m 4`, `r 8`, 1,280 parameters, and 0% everywhere:
# after 200 steps this prompt still makes the random model write `V` and a
# stray byte instead of a label, and an output that is not a label counts as
# wrong (other seeds reach the format and 50%):
#
# ```output demo full
# step    100  validation accuracy 0.00 on 200 examples  (best so far, adapter saved)
# step    200  validation accuracy 0.00 on 200 examples
# best validation accuracy 0.00 at step 100 on 200 examples; test accuracy 0.00 on 200 examples
# ```
#
# Part of what the test suite's short run (`MINIDEPT_FAST=1`: 30 steps, 16
# training examples) prints on the demo:
#
# ```output demo fast
#   l                        20
#   m                        4
#   r                        8
#   init                     text
#   trainable_parameters     1280
#   budget_l_times_d         1280
# step     15  validation accuracy 0.00 on 100 examples  (best so far, adapter saved)
# step     30  validation accuracy 0.00 on 100 examples
# best validation accuracy 0.00 at step 15 on 100 examples; test accuracy 0.00 on 100 examples
# ```
#
# and on SST-2:
#
# ```output data fast
#   l                        100
#   m                        60
#   r                        8
#   init                     text
#   trainable_parameters     6400
#   budget_l_times_d         6400
# step     15  validation accuracy 0.00 on 100 examples  (best so far, adapter saved)
# step     30  validation accuracy 0.00 on 100 examples
# best validation accuracy 0.00 at step 15 on 100 examples; test accuracy 0.00 on 100 examples
# ```
#
# ## What a run leaves behind
#
# - `config.json`: every resolved setting (what was printed above);
# - `metrics.jsonl`: one JSON record a line, training records every
#   `--log-every` steps and evaluation records;
# - `adapter.safetensors`: the best adapter so far, only the trainable tensors;
# - `state.safetensors`: everything `--resume` needs to continue exactly
#   (tensors, AdamW moments, random state; never a pickle);
# - `results.json`: the best validation scores and the test scores.

# %%
print("files in the run folder:", sorted(p.name for p in cli_dir.iterdir()))
results = json.loads((cli_dir / "results.json").read_text())
print("results.json:", {key: results[key] for key in ("best_step", "validation", "test", "examples",
                                                      "trainable_parameters", "steps_per_s")})
records = [json.loads(line) for line in (cli_dir / "metrics.jsonl").read_text().splitlines()]
train_records = [r for r in records if "loss" in r]
eval_records = [r for r in records if r.get("split") == "validation"]
print("first training record:", train_records[0])
print("an evaluation record: ", eval_records[0])

# %% [markdown]
# You should see the five files and `.lock`, which names the process of a
# run while it trains (a second run on the folder is refused); a training record with `step`, `loss` (the
# mean since the last record), both learning rates (`lr_prompt`, `lr_lowrank`,
# a fifth of their peak at step 5: the warmup rises from 0 over 20 steps),
# `grad_norm`, `steps_per_s` and `elapsed`; and an evaluation record with the
# split's metrics and the number of examples scored. In the test suite's short
# run on the demo (a warmup of 3 steps, so the rates are already falling at
# step 5; `~` marks numbers that depend on the machine):
#
# ```output demo fast
# files in the run folder: ['.lock', 'adapter.safetensors', 'config.json', 'metrics.jsonl', 'results.json', 'state.safetensors']
# results.json: {'best_step': 15, 'validation': {'accuracy': 0.0}, 'test': {'accuracy': 0.0}, 'examples': {'test': 100, 'validation': 100}, 'trainable_parameters': 1280, 'steps_per_s': ~54.356}
# first training record: {'step': 5, 'loss': 5.942220211029053, 'lr_prompt': 0.28888888888888886, 'lr_lowrank': 0.009629629629629629, 'grad_norm': 0.0945395976305008, 'steps_per_s': ~33.035, 'elapsed': ~0.156}
# an evaluation record:  {'step': 15, 'split': 'validation', 'accuracy': 0.0, 'examples': 100, 'best': 0.0, 'elapsed': ~0.311}
# ```
#
# `python -m minidept.plot RUN [RUN ...] -o FILE` draws the log: the loss, the
# two learning-rate schedules and the validation metric against the step, for
# one run or several side by side (say PT and DePT).

# %%
if plt:
    minidept_cli("minidept.plot", str(cli_dir), "-o", str(OUT / "training_loss.png"))
    if NOTEBOOK:
        from IPython.display import Image, display
        display(Image(str(OUT / "training_loss.png")))

# %% [markdown]
# You should see `wrote .../training_loss.png`, and in it the loss falling
# steeply over the first steps and then slowly (from about 10.5, roughly
# `log(32128)`, to about 7.7 on SST-2; on the demo from about 6 to about 4),
# both learning rates rising for the first tenth of the run and then falling in
# a straight line to zero (the axes are linear), and the validation accuracy as
# hollow points near the dotted line of uniform guessing (50% for two classes;
# on the demo at 0, below it).
#
# ## From Python
#
# The command line is a thin layer over one dataclass and one function: every
# option of `python -m minidept.train` is a field of `TrainConfig` (with the
# same name, dashes as underscores), and `train(config)` is the whole run.
# Same options, same seed: the same losses.

# %%
from minidept.run.train import TrainConfig, setup, train

torch.set_num_threads(1)
py_dir = WORK / "python-run"
options = dict(zip([o[2:].replace("-", "_") for o in task_options[::2]], task_options[1::2]))
config = TrainConfig(**options, method="dept", max_steps=steps, batch_size=16, eval_every=steps // 2, log_every=5,
                     max_eval_examples=100 if FAST else 400, k_shot=16 if FAST else None,
                     output_dir=str(py_dir), overwrite=True, quiet=True)
python_results = train(config, log=lambda *_: None)   # the settings and the scores are in the run folder
python_losses = [json.loads(line)["loss"] for line in (py_dir / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
cli_losses = [r["loss"] for r in train_records]
print("train() returned status", python_results["status"], "| steps:", python_results["steps"], "| trainable:",
      python_results["trainable_parameters"])
print(f"test accuracy {python_results['test']['accuracy']:.1f} (CLI: {results['test']['accuracy']:.1f})")
print(f"max |loss from Python - loss from the CLI| = {max(abs(a - b) for a, b in zip(python_losses, cli_losses)):.1e}")

# %% [markdown]
# You should see `status done`, the number of steps and trainable parameters, the same
# test accuracy as the command-line run and a loss difference of 0 or about
# `1e-7` (the same computation, in another process). On the demo, in the
# test suite's short run:
#
# ```output demo fast
# train() returned status done | steps: 30 | trainable: 1280
# test accuracy 0.0 (CLI: 0.0)
# max |loss from Python - loss from the CLI| = ~0.0e+00
# ```
#
# `setup(config)` is the
# first half of `train`: it resolves every setting and returns the prompted
# model, the tokenizer, the task and the encoded splits, without training.

# %%
resolved, model, tokenizer, task, data, facts = setup(TrainConfig(**{**vars(config), "resume": True}),
                                                      log=lambda *_: None)
print(f"{type(model).__name__}: {model.config.method}, m={model.config.m}, r={model.config.r} | "
      f"{len(data['train']):,} training examples")

# %% [markdown]
# You should see the model description and 66,349 SST-2 training examples
# (2,000 for the demo; 16 with the test suite's `--k-shot 16`: K counts all
# examples, 8 of each class here):
#
# ```output demo fast
# PromptedModel: dept, m=4, r=8 | 16 training examples
# ```
#
# ```output data fast
# PromptedModel: dept, m=60, r=8 | 16 training examples
# ```
#
# ## Evaluating an adapter
#
# `python -m minidept.evaluate` loads the backbone named in the run's
# `config.json`, puts the adapter in front of it and scores a split.
# `--predictions FILE` writes every example's source, reference and prediction.

# %%
predictions_file = WORK / "test-predictions.jsonl"
minidept_cli("minidept.evaluate", "--adapter", str(cli_dir), "--split", "test", "--max-examples", "100",
             "--predictions", str(predictions_file))
for line in predictions_file.read_text().splitlines()[:3]:
    print(line)

# %% [markdown]
# You should see a JSON line with `"split": "test"`, the official file that split
# comes from (`"source"`: on SST-2 GLUE's dev.tsv, as the test labels are not
# public), `"examples": 100` and an accuracy near 50 on SST-2 (ours: 48.0; 0.0 on
# the demo, whose outputs are no labels), then three predictions. On this random backbone the prediction is
# often the same label for every input: the prompt has learned that the answer
# is a label, not which one. The demo's line, in the test suite's short run:
#
# ```output demo fast
# {"task": "demo", "split": "test", "source": "demo's test examples, made by code", "examples": 100, "truncated": 0, "accuracy": 0.0}
# ```
#
# The same from Python: `evaluate.load_for_inference` rebuilds the prompted
# model from the adapter file, `evaluate.evaluate` scores encoded examples.

# %%
from minidept.run.evaluate import evaluate, load_for_inference

reloaded, tokenizer, saved_run = load_for_inference(cli_dir)     # backbone from the run's config.json
print(type(reloaded).__name__, reloaded.config.method, "| trained on", saved_run["model"])
print("test accuracy of the reloaded adapter:", evaluate(reloaded, data["test"][:100], task, tokenizer))

# %% [markdown]
# You should see the accuracy the command printed, `{'accuracy': ...}`:
#
# ```output demo fast
# PromptedModel dept | trained on demo
# test accuracy of the reloaded adapter: {'accuracy': 0.0}
# ```
#
# ## Labelling new text
#
# `python -m minidept.predict` labels the texts given on the command line, or
# one example a line on stdin, and names the label (`--raw`: the bare string).

# %%
minidept_cli("minidept.predict", "--adapter", str(cli_dir),
             stdin="a gorgeous , witty , seductive movie .\nthe plot is nothing but boilerplate .\n")

# %%
from minidept.run.predict import label_texts

print("labels from Python:", label_texts(reloaded, tokenizer, task, [["a gorgeous , witty , seductive movie ."],
                                                                     ["the plot is nothing but boilerplate ."]]))

# %% [markdown]
# You should see two labels with their names, such as `1 (positive)` or
# `0 (negative)`, then the same two labels as a Python list. With a random
# backbone the two sentences may well get the same label, or (on the demo's
# byte vocabulary) a string that is no label at all, printed quoted with the
# note that it is the model's raw generation, not a label;
# with a trained T5-base adapter they should get `1` and `0`.
#
# ## Where to go from here
#
# - The real run: `python -m minidept.train --task sst2 --model t5-base`
#   (or `--model ./t5-base`, a downloaded folder, on a machine without
#   network); add `--method pt`, `adept` or `ept` to compare methods,
#   `--k-shot 16` for few-shot training, `--init-from ADAPTER` to start from an
#   adapter trained on another task.
# - Long runs: `--stop-at STEP` stops and saves, `--resume` continues with
#   exactly the losses the run would have had; Ctrl-C saves the state too, and
#   after a `kill -9` the same command plus `--resume` ends with the same run.
# - `python -m minidept.tools.bench` measures what the shorter prompt saves on your
#   hardware (tutorial 4 did a small version of it).
