"""Filling a model from a checkpoint's tensors: the core's side of loading (files are read by minidept/io/).

`empty_model` builds a model from a config.json dict with no memory for its weights (the meta
device), then allocates them; `copy_into` fills them strictly. Each model's `from_checkpoint`
maps the checkpoint's names onto its own and calls both.
"""

from __future__ import annotations

import torch


class CheckpointError(ValueError):
    """A model, adapter or state file is missing, corrupt, or does not fit the model."""


def empty_model(model_class, config_class, hf_config: dict, tensors: dict, dtype: torch.dtype, source: str):
    """`model_class(config_class.from_hf_config(hf_config))` with allocated, unfilled weights of `dtype`: built on
    the meta device (shapes only), so no random init is paid for, and never larger than the tensors could fill
    (a config.json of an absurd size fails here)."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}")
    try:
        config = config_class.from_hf_config(hf_config)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{source} config.json: {error}") from error
    with torch.device("meta"):
        model = model_class(config).to(dtype)
    needed, held = sum(p.numel() for p in model.parameters()), sum(t.numel() for t in tensors.values())
    if needed > 2 * held + 2**20:   # one of about the right size fails in copy_into, naming every tensor
        raise CheckpointError(f"{source}: config.json describes a model of {needed:,} parameters, but the weights "
                              f"hold {held:,} values: check that config.json belongs to these weights")
    return model.to_empty(device="cpu")


def copy_into(params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str,
              hint: str = "check that the file belongs to this model") -> None:
    """Copy `tensors` into `params` (name -> parameter) in place, after checking that they fit exactly.

    Raises a `CheckpointError` (one line) listing every parameter left unfilled, every tensor
    left unused, every shape that differs and every integer tensor meant for a float parameter
    (quantized weights: copying would cast them silently); nothing is copied then.
    """
    missing = [name for name in params if name not in tensors]
    unexpected = [name for name in tensors if name not in params]
    mismatched = [f"{name}: {tuple(tensors[name].shape)} in the file, {tuple(p.shape)} in the model"
                  for name, p in params.items() if name in tensors and tensors[name].shape != p.shape]
    integer = [f"{name}: {tensors[name].dtype}" for name, p in params.items()
               if name in tensors and p.is_floating_point() and not tensors[name].is_floating_point()]
    if missing or unexpected or mismatched or integer:
        parts = [f"{title}: " + ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
                 for title, items in (("missing (not in the file)", missing),
                                      ("unexpected (not in the model)", unexpected), ("shape mismatch", mismatched),
                                      ("not floating point (quantized weights are not supported)", integer))
                 if items]
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts) + f"; {hint}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
