"""The training loop: what one step of prompt tuning does, on one screen.

    for step in range(max_steps):
        lr = base_lr * lr_factor(step)            # linear warmup from 0, then linear decay to 0
        loss = model(**batch)                      # [P ; E'(x)] through the frozen backbone
        loss.backward()                            # gradients reach only the adapter (P_s, A, B, ...)
        clip the gradient norm; AdamW step
        every eval_every steps: score the validation split, keep the best

The loop knows no files: everything a run adds around it (the run folder, logs, a progress
bar, the training state for resume, Ctrl-C, several processes) comes in through `Hooks`.
`minidept/run/train.py` is such a run (`python -m minidept.train`); a notebook can call
`train_loop` with no hooks at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rates for update number `step` (0-based).

    As the official runs (transformers' linear schedule): `step / warmup_steps` during
    the warmup, so the first update has learning rate 0, then linear decay that would
    reach 0 at `max_steps` (the last update gets 1/(max - warmup)).
    """
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


class Diverged(ArithmeticError):
    """A non-finite loss or gradient norm at `step`: the update was not applied."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"non-finite loss {loss}, gradient norm {grad_norm} at step {step}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


@dataclass
class Progress:
    """The loop's own state: the steps done and the best validation score so far (saved for resume)."""
    step: int = 0
    best: float | None = None          # the best score of `metric`
    best_step: int | None = None
    best_scores: dict | None = None    # every metric at the best step


class Hooks:
    """What a run adds to the loop. Every default does nothing; a run overrides what it needs."""

    def stop_requested(self) -> bool:                    # Ctrl-C, SIGTERM: checked between steps
        return False

    def reduce(self, loss: torch.Tensor, params: list) -> torch.Tensor:   # torchrun: sum over processes
        return loss

    def after_step(self, step: int, loss: float, grad_norm: float, seconds: float, optimizer) -> None:
        pass                                             # log a record, move a progress bar

    def after_evaluation(self, step: int, scores: dict, improved: bool) -> None:
        pass                                             # log; save the adapter when it improved

    def save(self, step: int, progress: Progress) -> None:
        pass                                             # the training state, for resume


def train_loop(model, optimizer, batch_at: Callable[[int], Iterable[tuple[dict, float]]], max_steps: int, *,
               warmup_steps: int = 0, clip_norm: float = 1.0, progress: Progress | None = None,
               stop_at: int | None = None, evaluate: Callable | None = None, metric: str | None = None,
               eval_every: int = 0, save_every: int = 0, hooks: Hooks = Hooks()) -> Progress:
    """Train from `progress.step` (0 for a new run) to `max_steps` (or `stop_at`); return the progress.

    batch_at(step): the batch of that step as (model inputs, weight) pairs, one pair unless the
    batch is cut into micro-batches (gradient accumulation), each weighted by its share of the
    batch; the batch depends on the step alone, so a resumed run sees what it would have seen.
    evaluate(model) -> {metric: value}: run every `eval_every` steps and at `max_steps`.
    The learning rates follow `lr_factor` from the rates the optimizer was built with.
    Raises `Diverged` before applying an update with a non-finite loss or gradient norm.
    """
    progress = progress or Progress()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()                                        # dropout on, the backbone's too (T5 trains with 0.1)
    while progress.step < (stop_at or max_steps) and not hooks.stop_requested():
        started, step = time.perf_counter(), progress.step
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step, warmup_steps, max_steps)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for inputs, weight in batch_at(step):            # one micro-batch, unless gradient accumulation
            part = model(**inputs) * weight              # mean cross-entropy over the labelled tokens
            part.backward()                              # the backbone is frozen: only the adapter gets gradients
            loss = loss + part.detach().cpu()
        loss = float(hooks.reduce(loss, params))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise Diverged(step + 1, loss, grad_norm)
        optimizer.step()
        progress.step = step = step + 1
        hooks.after_step(step, loss, grad_norm, time.perf_counter() - started, optimizer)

        if evaluate is not None and (step % eval_every == 0 or step == max_steps):
            scores = evaluate(model)
            score, best = scores[metric], progress.best
            improved = best is None or (not math.isnan(score) and (math.isnan(best) or score > best))
            if improved:
                progress.best, progress.best_step, progress.best_scores = score, step, scores
            hooks.after_evaluation(step, scores, improved)
            model.train()
        if (save_every and step % save_every == 0) or step == (stop_at or max_steps) or hooks.stop_requested():
            hooks.save(step, progress)
    return progress
