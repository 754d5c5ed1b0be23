"""A demo that needs nothing downloaded: `python -m minidept.demo`.

It trains vanilla prompt tuning (PT) and DePT with `minidept.train` on
- the demo T5 (`--model demo`, `minidept.models`): a tiny config written in the
  code, with RANDOM weights, and a byte-level tokenizer built in code;
- the demo task (`--task demo`, `minidept.tasks`): synthetic sentiment sentences
  made by code ("the film was superb" -> positive), cast like SST-2.

What it shows: the whole pipeline (tokenise, batch, prompt in front of a frozen
backbone, two learning rates, warmup and decay, greedy decoding, scoring,
saving and reloading the adapter) and the optimisation (the loss goes down).
What it cannot show: the accuracy of prompt tuning on a pretrained model. A
frozen random network has no knowledge for a prompt to steer, so the accuracy
here says little about the methods; the paper's numbers need a pretrained T5
(`python -m minidept.train --model ./t5-base --task sst2`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..run.cli import Parser
from ..run.evaluate import load_for_inference, predict
from ..io.backbones import DEMO_T5, VOCAB_SIZE, load_backbone
from ..data.tasks import get_task, synthetic_sentiment
from ..io.adapters import load_adapter_into
from ..io.adapters import ADAPTER_FILE
from ..run.folder import LOG_FILE
from ..run.train import TrainConfig, setup, train

SHOWS = """What this shows: the whole pipeline runs (byte tokenizer, batches, a prompt in front of a
frozen model, AdamW with two learning rates, warmup and decay, greedy decoding, scoring,
saving and reloading the adapter), and the optimisation works: the loss falls as the
prompt pushes the frozen model towards the task's format (a label, then </s>).
At this size the steps/s say little; DePT's saving from its shorter prompt shows on real
models and inputs (python -m minidept.bench)."""

CANNOT = """What it cannot show: how accurate prompt tuning is. The backbone has RANDOM weights and
knows nothing about words, and the prompt only steers what the backbone already knows,
so accuracy stays near chance (50%) however long it trains, or below it while the
outputs are not yet labels (an output that is not a label counts as wrong). The paper's
numbers need a pretrained T5: python -m minidept.train --task sst2 --model ./t5-base
--data-dir DATA"""

DEPT_LOSS = """Why DePT's loss ends above PT's here ({dept:.2f} against {pt:.2f}): both train {n:,} numbers, but PT
spends them on {l} free prompt vectors and DePT on {m} vectors plus A and B, whose offset starts at
zero (B = 0) and grows at a learning rate {ratio:.0f} times smaller than the prompt's. In a short
run on a random backbone the longer free prompt steers the output faster. The paper compares the
accuracy of long runs on pretrained models, which a few hundred steps on a random one do not test."""

SAME_LABEL = """Why every test prediction of {who} is {label!r}: the prompt has learned the answer's format (a
label, then </s>), but on a random backbone nothing within the prompt's reach separates positive
from negative sentences, so the lowest loss it can find is one label for every input. Accuracy is
then the share of that label in the test split ({share:.0f}%), whatever the method."""

NO_LABEL = """Why every test prediction of {who} is {label!r}, which is no label: after {steps} steps the prompt has
not yet learned the answer's format (a label, then </s>); more steps (--steps) get there."""


def run_method(method: str, steps: int, out: Path, model_name: str = "demo") -> dict:
    """Train one method on the demo task with minidept.train; return a summary for printing."""
    config = TrainConfig(task="demo", model=model_name, method=method, max_steps=steps, batch_size=16,
                         eval_every=max(1, steps // 2), log_every=max(1, steps // 10), output_dir=str(out), quiet=True)
    results = train(config, log=lambda *_: None)
    # The saved adapter, reloaded onto a fresh backbone, must predict exactly what the trained model predicted.
    config, model, tokenizer, task, data, facts = setup(dataclasses.replace(config, resume=True), log=lambda *_: None)
    load_adapter_into(model, out / ADAPTER_FILE)
    reloaded = load_for_inference(out)[0]
    predictions = predict(model, data["test"], tokenizer)
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    return {"config": config, "facts": facts, "results": results, "predictions": predictions,
            "same_after_reload": predict(reloaded, data["test"], tokenizer) == predictions,
            "losses": [(r["step"], r["loss"]) for r in records if "loss" in r],
            "examples": list(zip(synthetic_sentiment()["test"][:3], predictions[:3]))}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m minidept.demo", description=__doc__.split("\n\n")[0])   # one-line errors
    parser.add_argument("--steps", type=int, default=get_task("demo").max_steps, help="training steps per method")
    parser.add_argument("--output-dir", help="keep the two runs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models are fastest on 1)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    backbone = load_backbone("demo")[0]
    splits = synthetic_sentiment()
    n_params = sum(p.numel() for p in backbone.parameters())
    print("minidept demo: prompt tuning on a tiny T5 with RANDOM weights; nothing downloaded.")
    print(f"  backbone  T5 v1.1 layout, d_model {DEMO_T5.d_model}, {DEMO_T5.num_layers}+{DEMO_T5.num_decoder_layers} "
          f"layers, {n_params:,} parameters, random and frozen")
    print(f"  tokenizer raw bytes ({VOCAB_SIZE} tokens: 256 bytes + <pad> </s> <unk>)")
    print(f"  task      synthetic sentiment, {len(splits['train'])} train / {len(splits['validation'])} validation / "
          f"{len(splits['test'])} test, e.g. \"sentence: {splits['train'][0]['sentence']}\" -> "
          f"\"{splits['train'][0]['label']}\"")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output_dir) if args.output_dir else Path(tmp)
        summaries = {}
        for method, title in (("pt", "PT (vanilla prompt tuning)"), ("dept", "DePT")):
            summary = summaries[method] = run_method(method, args.steps, root / method)
            config, facts, results = summary["config"], summary["facts"], summary["results"]
            shape = f"l={config.l}" if method == "pt" else f"m={config.m}, r={config.r}"
            print(f"\n{title}: {shape}, {facts['trainable_parameters']:,} trainable parameters "
                  f"(budget l*d = {facts['budget_l_times_d']:,}), {args.steps} steps of batch {config.batch_size}")
            print("  loss  " + "  ".join(f"{step}: {loss:.2f}" for step, loss in summary["losses"]))
            print(f"  best validation accuracy {results['validation']['accuracy']:.1f} on "
                  f"{results['examples']['validation']} examples (step {results['best_step']}), test accuracy "
                  f"{results['test']['accuracy']:.1f} on {results['examples']['test']} examples, "
                  f"{results['steps_per_s']:.1f} steps/s")
            print("  test predictions: " + ", ".join(f"\"{ex['sentence']}\" -> {pred!r} (gold {ex['label']})"
                                                     for ex, pred in summary["examples"]))
            print(f"  adapter saved and reloaded onto a fresh backbone: "
                  f"{'identical predictions' if summary['same_after_reload'] else 'PREDICTIONS DIFFER'}")
        if args.output_dir:
            print(f"\nruns kept in {root}: try python -m minidept.evaluate --adapter {root / 'dept'} --split test")
    pt, dept = summaries["pt"], summaries["dept"]
    if dept["losses"][-1][1] > pt["losses"][-1][1]:
        print("\n" + DEPT_LOSS.format(dept=dept["losses"][-1][1], pt=pt["losses"][-1][1], l=pt["config"].l,
                                      n=dept["facts"]["trainable_parameters"], m=dept["config"].m,
                                      ratio=dept["config"].lr_prompt / dept["config"].lr_lowrank))
    same = {}   # the one prediction a method gives every test sentence -> the methods that do
    for who, summary in (("PT", pt), ("DePT", dept)):
        if len(set(summary["predictions"])) == 1:
            same.setdefault(summary["predictions"][0], []).append(who)
    for label, who in same.items():
        share = 100 * sum(str(ex["label"]) == label for ex in splits["test"]) / len(splits["test"])
        print("\n" + (SAME_LABEL if label in get_task("demo").targets else NO_LABEL).format(
            who=" and ".join(who), label=label, share=share, steps=args.steps))
    print("\n" + SHOWS + "\n\n" + CANNOT)
    print(f"\n(finished in {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
