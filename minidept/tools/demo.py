"""A demo that needs nothing downloaded: `python -m minidept.demo`.

It trains vanilla prompt tuning (PT) and DePT with `minidept.train` on
- the pocket T5 (`--model pocket-t5`, docs/pocket.md): a small T5 that minidept pretrained
  from scratch on a CPU (`python -m minidept.pretrain`) and ships in the package, FROZEN;
- the demo task (`--task demo`, `minidept/data/tasks.py`): synthetic sentiment sentences
  made by code ("the film was superb" -> positive), cast like SST-2 ("sentence: ..." -> "1").

The pocket model learned sentiment in pretraining, but always behind a task prefix
("sst2 sentence: ..."); CoLA's inputs look the same ("cola sentence: ..."), so without a
prefix it does not know which of its skills is asked for. The prompt takes the prefix's
place: it is scored before training (its first vectors, the official init text) and after,
and the adapter is saved, reloaded onto a fresh backbone and must predict the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..data.tasks import get_task, synthetic_sentiment
from ..io.adapters import ADAPTER_FILE, load_adapter_into
from ..io.backbones import SHIPPED_MODELS, load_backbone
from ..run.cli import Parser, UsageError, check_writable, command
from ..run.evaluate import evaluate, load_for_inference, predict
from ..run.folder import LOG_FILE
from ..run.train import TrainConfig, setup, train

def run_method(method: str, steps: int, out: Path, model_name: str = "pocket-t5") -> dict:
    """Train one method on the demo task with minidept.train; return a summary for printing."""
    config = TrainConfig(task="demo", model=model_name, method=method, max_steps=steps, batch_size=16,
                         eval_every=max(1, steps // 4), log_every=max(1, steps // 10), output_dir=str(out), quiet=True)
    # The untrained prompt: the frozen model with the prompt's first vectors in front
    _, model, tokenizer, task, data, _ = setup(config, log=lambda *_: None)
    before = evaluate(model, data["test"], task, tokenizer)["accuracy"]
    results = train(config, log=lambda *_: None)
    # The saved adapter, reloaded onto a fresh backbone, must predict exactly what the trained model predicted.
    config, model, tokenizer, task, data, facts = setup(dataclasses.replace(config, resume=True), log=lambda *_: None)
    load_adapter_into(model, out / ADAPTER_FILE)
    reloaded = load_for_inference(out)[0]
    predictions = predict(model, data["test"], tokenizer)
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    return {"config": config, "facts": facts, "results": results, "before": before, "predictions": predictions,
            "same_after_reload": predict(reloaded, data["test"], tokenizer) == predictions,
            "losses": [(r["step"], r["loss"]) for r in records if "loss" in r],
            "validation": [(r["step"], r["accuracy"]) for r in records if r.get("split") == "validation"],
            "examples": list(zip(synthetic_sentiment()["test"][:3], predictions[:3]))}


@command("python -m minidept.demo", "free some space or choose another --output-dir")
def main(argv: list[str] | None, prog: str) -> int | None:
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0])   # one-line errors
    steps = get_task("demo").max_steps
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps per method (default {steps})")
    parser.add_argument("--model", default="pocket-t5", help="the frozen backbone (default pocket-t5; pocket-gpt2: "
                                                             "the pocket GPT-2; demo: the tiny RANDOM T5, on which a "
                                                             "prompt learns nothing)")
    parser.add_argument("--output-dir", help="keep the two runs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (small models are fastest on 1)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if not 1 <= args.threads <= 4 * (os.cpu_count() or 1):
        parser.error(f"--threads {args.threads}: use 1 to {4 * (os.cpu_count() or 1)} (this machine has "
                     f"{os.cpu_count()} CPU cores)")
    if args.output_dir:
        check_writable(str(Path(args.output_dir) / "pt" / "config.json"), "--output-dir")
        if any((Path(args.output_dir) / method).exists() for method in ("pt", "dept")):
            raise UsageError(f"--output-dir {args.output_dir} already holds the demo's runs (pt/, dept/): choose "
                             "another --output-dir, or delete that one first")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    backbone, tokenizer = load_backbone(args.model)
    splits = synthetic_sentiment()
    n_params = sum(p.numel() for p in backbone.parameters())
    c = backbone.config
    layers = (f"{c.num_layers}+{c.num_decoder_layers}" if backbone.is_encoder_decoder else
              getattr(c, "n_layer", None) or c.num_hidden_layers)
    name = {"t5": "T5", "gpt2": "GPT-2", "llama": "Llama"}.get(backbone.model_type, backbone.model_type)
    shipped = args.model in SHIPPED_MODELS and not Path(args.model).is_dir()
    print(f"minidept demo: prompt tuning on the frozen {args.model}; nothing downloaded.")
    print(f"  backbone  {name}, d_model {backbone.d_model}, {layers} layers, {n_params:,} parameters, frozen"
          + (" (pretrained by minidept, docs/pocket.md)" if shipped else ""))
    print(f"  tokenizer {tokenizer.get_vocab_size():,} tokens")
    print(f"  task      synthetic sentiment, {len(splits['train'])} train / {len(splits['validation'])} validation / "
          f"{len(splits['test'])} test, e.g. \"sentence: {splits['train'][0]['sentence']}\" -> "
          f"\"{splits['train'][0]['label']}\" (no task prefix: the prompt takes its place)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output_dir) if args.output_dir else Path(tmp)
        for method, title in (("pt", "PT (vanilla prompt tuning)"), ("dept", "DePT")):
            summary = run_method(method, args.steps, root / method, args.model)
            config, facts, results = summary["config"], summary["facts"], summary["results"]
            shape = f"l={config.l}" if method == "pt" else f"m={config.m}, r={config.r}"
            print(f"\n{title}: {shape}, {facts['trainable_parameters']:,} trainable parameters "
                  f"(budget l*d = {facts['budget_l_times_d']:,}), {args.steps} steps of batch {config.batch_size}")
            print("  loss                 " + "  ".join(f"{step}: {loss:.2f}" for step, loss in summary["losses"]))
            print("  validation accuracy  " + "  ".join(f"{step}: {acc:.1f}" for step, acc in summary["validation"])
                  + f"  (on {results['examples']['validation']} examples)")
            print(f"  test accuracy {summary['before']:.1f} before training -> {results['test']['accuracy']:.1f} "
                  f"after (best step {results['best_step']}), on {results['examples']['test']} examples; "
                  f"{results['steps_per_s']:.1f} steps/s")
            print("  test predictions: " + ", ".join(f"\"{ex['sentence']}\" -> {pred!r} (gold {ex['label']})"
                                                     for ex, pred in summary["examples"]))
            print(f"  adapter saved and reloaded onto a fresh backbone: "
                  f"{'identical predictions' if summary['same_after_reload'] else 'PREDICTIONS DIFFER'}")
        if args.output_dir:
            print(f"\nruns kept in {root}: try python -m minidept.evaluate --adapter {root / 'dept'} --split test")
    print("\nOnly the prompt trained; the backbone stayed frozen. Real tasks: python -m minidept.train --task sst2 "
          f"--model {args.model if shipped else 'pocket-t5'} --data-dir DATA (docs/pocket.md)")
    print(f"\n(finished in {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
