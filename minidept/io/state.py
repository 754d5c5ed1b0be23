"""Training states: the trainable tensors, AdamW's moments and the random generators of a run, for --resume.

One safetensors file, nothing pickled: tensors by name (`param.*`, `optimizer.*`, `rng.*`) and
the loop's progress (step, best score, ...) as JSON metadata.
"""

from __future__ import annotations

import json
import os

import torch

from .checkpoint import CheckpointError, copy_into, read_safetensors, save_tensors

STATE_FORMAT = "minidept-train-state-1"


def save_state(path: str | os.PathLike, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               progress: dict, rng: dict[str, torch.Tensor]) -> None:
    """A training state: parameters, AdamW's moments and the RNG as tensors; `progress` as JSON metadata."""
    tensors = {f"param.{name}": p for name, p in params.items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():   # AdamW: step, exp_avg, exp_avg_sq
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"rng.{name}": t for name, t in rng.items()})
    save_tensors(tensors, path, {"format": STATE_FORMAT, "progress": json.dumps(progress)})


def load_state(path: str | os.PathLike, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               progress_keys=("step",)) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore `params` and the optimizer's moments from `save_state`'s file; return (progress, rng).

    Everything is checked first (the progress record must have `progress_keys`): a file of another format
    or run raises a CheckpointError and changes nothing.
    """
    metadata, tensors = read_safetensors(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"param": {}, "optimizer": {}, "rng": {}}
    for name, t in tensors.items():
        kind, _, rest = name.partition(".")
        groups.setdefault(kind, {})[rest] = t
    moments: dict[str, dict] = {}
    for name, t in groups["optimizer"].items():
        index, _, key = name.partition(".")
        moments.setdefault(index, {})[key] = t
    ordered = [p for group in optimizer.param_groups for p in group["params"]]   # AdamW: step, exp_avg, exp_avg_sq
    try:
        progress = json.loads(metadata.get("progress", ""))
    except ValueError:
        progress = None
    problem = None
    if metadata.get("format") != STATE_FORMAT:
        problem = f"its format is {metadata.get('format')!r}"
    elif not (isinstance(progress, dict) and progress.keys() >= set(progress_keys)
              and isinstance(progress["step"], int)):
        problem = "its progress record is missing or incomplete"
    elif len(groups) > 3:
        problem = f"it holds unknown tensors ({', '.join(sorted(set(groups) - {'param', 'optimizer', 'rng'}))}.*)"
    elif moments and {i: {k: tuple(t.shape) for k, t in m.items()} for i, m in moments.items()} != {
            str(i): {"step": (), "exp_avg": tuple(p.shape), "exp_avg_sq": tuple(p.shape)} for i, p in enumerate(ordered)}:
        problem = "AdamW's moments do not fit the trainable tensors"   # (none: saved before the first update)
    elif "cpu" not in groups["rng"] or groups["rng"]["cpu"].shape != torch.get_rng_state().shape:
        problem = "its random state is missing"
    if problem:
        raise CheckpointError(f"{path} is not a training state of this run: {problem}. Resume with the settings the "
                              "run was started with, or start again with --overwrite")
    copy_into(params, groups["param"], str(path), hint="resume with the settings the run was started with")
    # the hyper-parameters (param_groups) come from this run's options; only the moments are restored
    optimizer.load_state_dict({"state": {int(i): m for i, m in moments.items()},
                               "param_groups": optimizer.state_dict()["param_groups"]})
    return progress, groups["rng"]
