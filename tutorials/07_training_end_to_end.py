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
# Here we use the pocket T5 (`--model pocket-t5`, `docs/pocket.md`): a small T5
# (4.85M parameters, width 256) that minidept pretrained from scratch on a CPU and
# ships in the package, so the tutorial needs no network and trains in seconds.
# It learned sentiment in pretraining, always behind the task prefix
# `sst2 sentence: ...`; we give it the text without that prefix, as the DePT
# runs give t5-base, and the prompt has to take the prefix's place. With
# `MINIDEPT_DATA` set we train on the real SST-2; without it, on the embedded
# demo task (`--task demo`: synthetic sentences like "the film was superb").
# The paper's DePT reaches 94.2% on SST-2 with t5-base; the pocket T5 reaches
# about 87% (`docs/pocket.md`).

# %%
import json
import os
import subprocess
import sys
import time

import torch

from minidept.io.backbones import model_dir

from tutorial_setup import DATA, FAST, NOTEBOOK, OUT, REPO, USE_DATA, plt  # shared set-up
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def minidept_cli(*args, stdin=None):
    """Run `python -m minidept.<args>` as a separate process, print its output, return it."""
    result = subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, text=True, env=ENV)
    print(result.stdout.rstrip())
    if result.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


# %% [markdown]
# ## The backbone
#
# `--model` takes a Hub id (`t5-base`), a folder holding `config.json`,
# `model.safetensors` and the tokenizer, exactly what `save_pretrained` writes
# (tutorial 1), or the name of a model shipped with minidept. `pocket-t5` is
# such a folder inside the package, with `recipe.json` beside the weights (how
# it was made and by which command, `python -m minidept.pretrain`) and
# `metrics.jsonl`, the log of its pretraining.

# %%
WORK = OUT / "07_training"
steps = 60 if FAST else (300 if USE_DATA else 200)
n_eval = 100 if FAST else 400                          # validation and test examples scored
common = ["--method", "dept", "--max-steps", str(steps), "--batch-size", "16", "--eval-every", str(steps // 2),
          "--log-every", "5", "--max-eval-examples", str(n_eval), "--threads", "1", "--quiet"]
pocket = model_dir("pocket-t5")
recipe = json.loads((pocket / "recipe.json").read_text())
print("pocket-t5 folder:", sorted(p.name for p in pocket.iterdir()))
print(f"pretrained on {', '.join(recipe['held_in'])} (behind their prefixes) and span corruption; "
      f"never saw {', '.join(recipe['held_out'])}")
if USE_DATA:
    task_options = ["--task", "sst2", "--model", "pocket-t5", "--data-dir", DATA]
else:
    task_options = ["--task", "demo", "--model", "pocket-t5"]
    print("no MINIDEPT_DATA: training on the embedded demo task")

# %% [markdown]
# You should see
#
# ```output
# pocket-t5 folder: ['config.json', 'metrics.jsonl', 'model.safetensors', 'recipe.json', 'tokenizer.json']
# pretrained on sst2, cola, stsb, cb, wic, wsc, copa (behind their prefixes) and span corruption; never saw mrpc, rte
# ```
#
# and, without the data,
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
# You should see the resolved settings, then the validation lines and the test
# accuracy of the best adapter, each with the number of examples it was
# measured on (`--max-eval-examples` caps the test split too). On SST-2:
# `m 60` and `r 20`, the budget's rank for `d = 256` and `s = 256`
# (`r = (l - m) d / (s + d) = 40 * 256 / 512`), `init text`, and
# `trainable_parameters 25600` = `budget_l_times_d 25600` (`l * d`):
#
# ```output data
#   l                        100
#   m                        60
#   r                        20
#   init                     text
#   trainable_parameters     25600
#   budget_l_times_d         25600
# ```
#
# Ours, 300 steps of batch 16 (about two minutes on one thread):
#
# ```output data full
# step    150  validation accuracy 84.75 on 400 examples  (best so far, adapter saved)
# step    300  validation accuracy 85.75 on 400 examples  (best so far, adapter saved)
# best validation accuracy 85.75 at step 300 on 400 examples; test accuracy 78.75 on 400 examples
# ```
#
# The validation split is 1,000 examples held out of GLUE's training set, the
# test split is GLUE's dev set (the official split rule, `docs/methods.md`):
# the two are not equally hard, and 400 examples make each number uncertain by
# about 2 points either way. The test suite's short run (60 steps, 100
# examples scored) prints
#
# ```output data fast
# step     30  validation accuracy 84.00 on 100 examples  (best so far, adapter saved)
# step     60  validation accuracy 81.00 on 100 examples
# best validation accuracy 84.00 at step 30 on 100 examples; test accuracy 81.00 on 100 examples
# ```
#
# On the demo: `l 20`, `m 4`, `r 12` (`(20 - 4) * 256 / (64 + 256)`, since
# the demo's inputs are at most `s = 64` tokens), 4,864 trainable numbers,
# under the budget of 5,120 because `r` is rounded down:
#
# ```output demo
#   l                        20
#   m                        4
#   r                        12
#   init                     text
#   trainable_parameters     4864
#   budget_l_times_d         5120
# ```
#
# ```output demo full
# step    100  validation accuracy 100.00 on 200 examples  (best so far, adapter saved)
# step    200  validation accuracy 100.00 on 200 examples
# best validation accuracy 100.00 at step 100 on 200 examples; test accuracy 100.00 on 200 examples
# ```
#
# ```output demo fast
# step     30  validation accuracy 99.00 on 100 examples  (best so far, adapter saved)
# step     60  validation accuracy 100.00 on 100 examples  (best so far, adapter saved)
# best validation accuracy 100.00 at step 60 on 100 examples; test accuracy 100.00 on 100 examples
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
# You should see the five files and `.lock`, which names the process of a run
# while it trains (a second run on the folder is refused); a training record
# with `step`, `loss` (the mean since the last record), both learning rates
# (`lr_prompt`, `lr_lowrank`, still rising at step 5: the warmup takes the
# first tenth of the steps), `grad_norm`, `steps_per_s` and `elapsed`; and an
# evaluation record with the split's metrics and the number of examples
# scored. In the test suite's short run on the demo (`~` marks numbers that
# depend on the machine):
#
# ```output demo fast
# files in the run folder: ['.lock', 'adapter.safetensors', 'config.json', 'metrics.jsonl', 'results.json', 'state.safetensors']
# results.json: {'best_step': 60, 'validation': {'accuracy': 100.0}, 'test': {'accuracy': 100.0}, 'examples': {'test': 100, 'validation': 100}, 'trainable_parameters': 4864, 'steps_per_s': ~13.994}
# first training record: {'step': 5, 'loss': 0.14179126918315887, 'lr_prompt': 0.19999999999999998, 'lr_lowrank': 0.006666666666666666, 'grad_norm': 0.07733051478862762, 'steps_per_s': ~11.905, 'elapsed': ~0.425}
# an evaluation record:  {'step': 30, 'split': 'validation', 'accuracy': 99.0, 'examples': 100, 'best': 99.0, 'elapsed': ~2.404}
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
# You should see `wrote .../training_loss.png`, and in it a loss that starts
# low and falls: the answer is one token and `</s>`, and the pocket T5 already
# writes a label for a sentence (from about 0.17 to about 0.1 on SST-2, from
# about 0.16 to under 0.01 on the demo); both learning rates rising for the
# first tenth of the run and then falling in a straight line to zero; and the
# validation accuracy as hollow points (on SST-2 between 81 and 86, on the
# demo at 100).
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
                     max_eval_examples=n_eval, output_dir=str(py_dir), overwrite=True, quiet=True)
python_results = train(config, log=lambda *_: None)   # the settings and the scores are in the run folder
python_losses = [json.loads(line)["loss"] for line in (py_dir / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
cli_losses = [r["loss"] for r in train_records]
print("train() returned status", python_results["status"], "| steps:", python_results["steps"], "| trainable:",
      python_results["trainable_parameters"])
print(f"test accuracy {python_results['test']['accuracy']:.1f} (CLI: {results['test']['accuracy']:.1f})")
print(f"max |loss from Python - loss from the CLI| = {max(abs(a - b) for a, b in zip(python_losses, cli_losses)):.1e}")

# %% [markdown]
# You should see `status done`, the number of steps and trainable parameters,
# the same test accuracy as the command-line run and a loss difference of 0
# (the same computation, in another process):
#
# ```output demo fast
# train() returned status done | steps: 60 | trainable: 4864
# test accuracy 100.0 (CLI: 100.0)
# max |loss from Python - loss from the CLI| = 0.0e+00
# ```
#
# ```output data fast
# train() returned status done | steps: 60 | trainable: 25600
# test accuracy 81.0 (CLI: 81.0)
# max |loss from Python - loss from the CLI| = 0.0e+00
# ```
#
# `setup(config)` is the first half of `train`: it resolves every setting and
# returns the prompted model, the tokenizer, the task and the encoded splits,
# without training. Its model has the prompt as initialised (the embeddings of
# the official init text, and `B = 0`), so we can score the frozen model
# before any training on the same test examples.

# %%
from minidept.run.evaluate import evaluate

resolved, model, tokenizer, task, data, facts = setup(config, log=lambda *_: None)
print(f"{type(model).__name__}: {model.config.method}, m={model.config.m}, r={model.config.r} | "
      f"{len(data['train']):,} training examples")
before = evaluate(model, data["test"], task, tokenizer)["accuracy"]
print(f"test accuracy on the run's {len(data['test'])} test examples: {before:.2f} with the prompt as initialised, "
      f"{results['test']['accuracy']:.2f} after training")

# %% [markdown]
# You should see the model description, 66,349 SST-2 training examples (2,000
# for the demo), and the accuracy before and after:
#
# ```output demo
# PromptedModel: dept, m=4, r=12 | 2,000 training examples
# ```
#
# ```output demo fast
# test accuracy on the run's 100 test examples: 77.00 with the prompt as initialised, 100.00 after training
# ```
#
# ```output demo full
# test accuracy on the run's 200 test examples: 69.50 with the prompt as initialised, 100.00 after training
# ```
#
# ```output data
# PromptedModel: dept, m=60, r=20 | 66,349 training examples
# ```
#
# ```output data fast
# test accuracy on the run's 100 test examples: 84.00 with the prompt as initialised, 81.00 after training
# ```
#
# ```output data full
# test accuracy on the run's 400 test examples: 75.00 with the prompt as initialised, 78.75 after training
# ```
#
# On the demo the prompt takes the frozen model from 69.5% to 100% (from 77%
# in the short run). On SST-2 the gain is smaller: 75.00 -> 78.75 on 400 test
# examples in 300 steps, and in the test suite's 60 steps 84 -> 81 on the first
# 100 (which are easier; one example is one point, so that is 3 examples).
# The pocket T5 already answers SST-2 without its prefix fairly well (84.0%
# on the validation split, `docs/pocket.md`) and the init text ("Classify this
# text is postive or not:") reads like a sentiment question, so there is less
# to gain. In the longer runs of `docs/pocket.md` (500 steps, all 1,000
# validation examples) DePT reaches 86.9 on validation, as high as the model
# with its own prefix (86.9): the prompt recovers what the prefix unlocks. A
# small model's skill is what it is; the prompt changes how it is asked.
#
# ## Evaluating an adapter
#
# `python -m minidept.evaluate` loads the backbone named in the run's
# `config.json` (here `pocket-t5`), puts the adapter in front of it and scores
# a split. `--predictions FILE` writes every example's source, reference and
# prediction.

# %%
predictions_file = WORK / "test-predictions.jsonl"
minidept_cli("minidept.evaluate", "--adapter", str(cli_dir), "--split", "test", "--max-examples", str(n_eval),
             "--predictions", str(predictions_file))
for line in predictions_file.read_text().splitlines()[:3]:
    print(line)

# %% [markdown]
# You should see a JSON line with `"split": "test"`, the file that split comes
# from (`"source"`: on SST-2 GLUE's dev.tsv, as the test labels are not
# public), the number of examples and the accuracy the training run printed
# for its best adapter (78.75 on SST-2 in the full run), then three
# predictions:
#
# ```output demo fast
# {"task": "demo", "split": "test", "source": "demo's test examples, made by code", "examples": 100, "truncated": 0, "accuracy": 100.0}
# {"source": "sentence: i found it boring", "reference": "0", "prediction": "0"}
# {"source": "sentence: it felt good to me", "reference": "1", "prediction": "1"}
# ```
#
# ```output data fast
# {"task": "sst2", "split": "test", "source": "glue/SST-2/dev.tsv (the official validation set; the test set's labels are not public)", "examples": 100, "truncated": 0, "accuracy": 81.0}
# {"source": "sentence: it 's a charming and often affecting journey . ", "reference": "1", "prediction": "1"}
# {"source": "sentence: unflinchingly bleak and desperate ", "reference": "0", "prediction": "0"}
# ```
#
# The same from Python: `evaluate.load_for_inference` rebuilds the prompted
# model from the adapter file, `evaluate.evaluate` scores encoded examples.

# %%
from minidept.run.evaluate import load_for_inference

reloaded, tokenizer, saved_run = load_for_inference(cli_dir)     # backbone from the run's config.json
print(type(reloaded).__name__, reloaded.config.method, "| trained on", saved_run["model"])
print("test accuracy of the reloaded adapter:", evaluate(reloaded, data["test"], task, tokenizer))

# %% [markdown]
# You should see the accuracy the command printed, `{'accuracy': ...}`:
#
# ```output demo
# PromptedModel dept | trained on pocket-t5
# test accuracy of the reloaded adapter: {'accuracy': 100.0}
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
# You should see the two labels with their names, then the same two as a
# Python list:
#
# ```output
# 1 (positive)
# 0 (negative)
# labels from Python: ['1', '0']
# ```
#
# An output that is no label (a random backbone writes such strings) would be
# printed quoted, with a note that it is the model's raw generation.
#
# ## Where to go from here
#
# - The real run: `python -m minidept.train --task sst2 --model t5-base`
#   (or `--model ./t5-base`, a downloaded folder, on a machine without
#   network); `--model pocket-t5 --max-steps 500` for the long pocket runs of
#   `docs/pocket.md`; add `--method pt`, `adept` or `ept` to compare methods,
#   `--k-shot 16` for few-shot training, `--init-from ADAPTER` to start from an
#   adapter trained on another task.
# - Long runs: `--stop-at STEP` stops and saves, `--resume` continues with
#   exactly the losses the run would have had; Ctrl-C saves the state too, and
#   after a `kill -9` the same command plus `--resume` ends with the same run.
# - `python -m minidept.tools.bench` measures what the shorter prompt saves on your
#   hardware (tutorial 4 did a small version of it).
