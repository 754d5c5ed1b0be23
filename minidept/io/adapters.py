"""Adapter files: minidept's own (docs/adapter-format.md) and PEFT prompt-tuning folders.

`save_adapter(model, path)` writes a prompted model's trainable tensors with its config and
its backbone's identity; `load_adapter(path, backbone)` rebuilds the prompted model (a file,
a run folder, a PEFT folder or a Hub repository: `find_adapter`), checked against the
backbone before anything is built; `write_peft_adapter` writes a PT adapter in PEFT's layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (CONFIG_FILE, CheckpointError, copy_into, read_config, read_safetensors, save_tensors,
                          write_json)
from ..methods import PromptConfig
from ..prompted import PromptedModel
from .hub import hub_snapshot, is_hub_id

ADAPTER_FORMAT = "minidept-adapter-2"
OLD_FORMATS = {"minidept-adapter-1": {"update.": "offset."}}   # read too: tensor names renamed since
MAX_PROMPT_LENGTH = 4096   # prompt vectors: far above any published prompt (l = 100), far below what exhausts memory
ADAPTER_FILE = "adapter.safetensors"   # in a run folder, beside the run's config.json
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"   # a PEFT adapter folder
PEFT_MINIDEPT_KEY = "minidept"   # in PEFT_WEIGHTS' metadata: the settings PEFT has no field for (max_length)
ADAPTER_PATTERNS = [ADAPTER_FILE, CONFIG_FILE, "results.json", PEFT_CONFIG, PEFT_WEIGHTS]   # all we fetch


def find_adapter(name_or_path: str | os.PathLike) -> Path:
    """The adapter that `name_or_path` names, on this machine: a minidept adapter file, or a PEFT adapter folder.

    Accepted: an adapter file; a run folder of `minidept.train` (its adapter.safetensors);
    a PEFT prompt-tuning folder (adapter_config.json + adapter_model.safetensors); a Hub
    repository `owner/name` holding either, downloaded with huggingface_hub.
    """
    path = Path(name_or_path).expanduser()
    if not path.exists() and is_hub_id(str(name_or_path)) and "/" in str(name_or_path):
        path = hub_snapshot(str(name_or_path), ADAPTER_PATTERNS, f"Or, if {str(name_or_path)!r} was meant "
                            "as a local path, it does not exist.")
    if path.is_file() or (path / PEFT_CONFIG).is_file():
        return path
    if (path / ADAPTER_FILE).is_file():
        return path / ADAPTER_FILE
    raise CheckpointError(f"no adapter at {path}: pass an adapter .safetensors file, a run folder of "
                          f"minidept.train (holding {ADAPTER_FILE}), a PEFT prompt-tuning folder "
                          f"({PEFT_CONFIG} + {PEFT_WEIGHTS}) or a Hub repository owner/name")


def read_adapter(name_or_path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter (`find_adapter` says which paths and names are accepted).

    A minidept adapter is a safetensors file written by `minidept.save_adapter`
    (docs/adapter-format.md); a PEFT prompt-tuning folder is read by `read_peft_adapter`.
    """
    path = find_adapter(name_or_path)
    if path.is_dir():
        return read_peft_adapter(path)
    metadata, tensors = read_safetensors(path)
    for old, new in OLD_FORMATS.get(metadata.get("format"), {}).items():
        tensors = {new + name[len(old):] if name.startswith(old) else name: t for name, t in tensors.items()}
        metadata = {**metadata, "format": ADAPTER_FORMAT}
    if metadata.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not a minidept adapter (metadata format={metadata.get('format')!r}); "
                              "adapters are written by minidept.save_adapter")
    return metadata, tensors


def read_peft_adapter(folder: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A PEFT prompt-tuning folder as a minidept PT adapter: (metadata, {"prompt.P": (n, d)}).

    Only prompts in front of the input fit minidept's PT: peft_type PROMPT_TUNING with
    num_transformer_submodules 1 (with 2, an encoder-decoder also gets a decoder prompt).
    """
    config = read_config(folder, PEFT_CONFIG)
    kind, parts = config.get("peft_type"), config.get("num_transformer_submodules") or 1
    if kind != "PROMPT_TUNING" or parts != 1:
        raise CheckpointError(f"{folder / PEFT_CONFIG}: peft_type {kind!r} with num_transformer_submodules "
                              f"{parts}; minidept reads PEFT prompt tuning with one prompt in front of the input "
                              "(PROMPT_TUNING, num_transformer_submodules 1)")
    n, d = config.get("num_virtual_tokens"), config.get("token_dim")
    for name, value in (("num_virtual_tokens", n), ("token_dim", d)):
        if type(value) is not int or value < 1:   # "20" would print as 20 in the shape message below
            raise CheckpointError(f"{folder / PEFT_CONFIG}: {name} must be a whole number above 0, found "
                                  f"{json.dumps(value)}; re-export the adapter")
    weights_metadata, tensors = read_safetensors(folder / PEFT_WEIGHTS)
    P = tensors.get("prompt_embeddings")
    if P is None or tuple(P.shape) != (n, d):
        raise CheckpointError(f"{folder / PEFT_WEIGHTS} must hold prompt_embeddings of shape (num_virtual_tokens, "
                              f"token_dim) = ({n}, {d}); found {dict((k, tuple(t.shape)) for k, t in tensors.items())}")
    if not P.is_floating_point():   # integer or bool values would be cast to float silently
        raise CheckpointError(f"{folder / PEFT_WEIGHTS}: prompt_embeddings are {P.dtype}, not floating point: "
                              "they are not a trained prompt; re-export the adapter")
    # PEFT has no max_length (PT's parameters do not depend on it); minidept's export keeps the run's in the
    # weights file's metadata, which PEFT does not read, so that a run on a short context reads back as it was
    try:
        exported = json.loads(weights_metadata.get(PEFT_MINIDEPT_KEY) or "{}")
    except ValueError:
        exported = {}
    settings = {"method": "pt", "l": n}
    if isinstance(exported, dict) and exported.get("max_length") is not None:
        settings["max_length"] = exported["max_length"]
    metadata = {"format": ADAPTER_FORMAT, "config": json.dumps(settings), "d_model": str(d)}
    for key, value in (("base_model", config.get("base_model_name_or_path")),
                       ("base_model_revision", config.get("revision"))):
        if value:
            metadata[key] = str(value)
    return metadata, {"prompt.P": P.float()}


def write_peft_adapter(folder: str | os.PathLike, metadata: dict[str, str], tensors: dict[str, torch.Tensor],
                       encoder_decoder: bool) -> dict:
    """A minidept PT adapter as a PEFT prompt-tuning folder, for `PeftModel.from_pretrained(model, folder)`;
    returns the adapter_config.json written."""
    method = json.loads(metadata["config"])["method"]
    if method != "pt":
        raise CheckpointError(f"PEFT has no adapter type for {method}: only PT adapters export to PEFT. "
                              "docs/adapter-format.md describes minidept's adapter file for other code")
    P = tensors["prompt.P"]
    config = {
        "peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM",
        "num_virtual_tokens": P.shape[0], "token_dim": P.shape[1], "num_transformer_submodules": 1,
        "base_model_name_or_path": metadata.get("base_model"), "revision": metadata.get("base_model_revision"),
        "prompt_tuning_init": "RANDOM", "inference_mode": True}
    write_json(Path(folder) / PEFT_CONFIG, config)
    settings = {"max_length": json.loads(metadata["config"]).get("max_length")}   # read back by read_peft_adapter
    save_tensors({"prompt_embeddings": P}, Path(folder) / PEFT_WEIGHTS,
                 {"format": "pt", PEFT_MINIDEPT_KEY: json.dumps(settings)})
    return config


# --------------------------------------------------------------------------- #
# A prompted model's adapter: save, check, load
# --------------------------------------------------------------------------- #

def backbone_config_hash(backbone: nn.Module) -> str:
    """A short hash of the backbone's config: adapters remember which backbone they were trained on."""
    text = json.dumps(dataclasses.asdict(backbone.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def adapter_settings(metadata: dict[str, str], path) -> dict:
    """The method settings in an adapter's metadata (a JSON object of PromptConfig fields), checked: one
    CheckpointError naming the adapter and the key or value at fault."""
    try:
        settings = json.loads(metadata["config"])
    except (KeyError, TypeError, ValueError):
        settings = None
    if not isinstance(settings, dict) or "method" not in settings:
        raise CheckpointError(f"adapter {path}: its metadata holds no config object with a method (the settings "
                              "minidept.save_adapter writes); re-save the adapter")
    unknown = sorted(set(settings) - {field.name for field in dataclasses.fields(PromptConfig)})
    if unknown:
        raise CheckpointError(f"adapter {path}: unknown config key(s) {', '.join(unknown)}; the keys are "
                              f"PromptConfig's fields ({', '.join(field.name for field in dataclasses.fields(PromptConfig))})")
    try:
        PromptConfig(**settings)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"adapter {path}: {error}") from None
    return settings


def adapter_config(metadata: dict[str, str], tensors: dict[str, torch.Tensor], backbone: nn.Module, path) -> PromptConfig:
    """An adapter's PromptConfig for `backbone`, checked before anything is built: its settings, the backbone's
    family and width, as many values as the settings imply (settings that disagree with the tensors, such as a
    max_length of 10**9, would otherwise allocate what they say) and finite values."""
    config = PromptConfig(**adapter_settings(metadata, path))
    if max(config.l, config.m or 0) > MAX_PROMPT_LENGTH:   # every input would carry it: memory grows with its square
        raise CheckpointError(f"adapter {path}: a prompt of {max(config.l, config.m or 0):,} vectors is longer than "
                              f"minidept takes ({MAX_PROMPT_LENGTH:,}; the papers use 100)")
    model_type, d = backbone.model_type, backbone.d_model
    if metadata.get("model_type", model_type) != model_type or metadata.get("d_model") != str(d):
        raise CheckpointError(
            f"adapter {path} was trained on a {metadata.get('model_type', 'backbone')} with d_model="
            f"{metadata.get('d_model')}; this backbone is a {model_type} with d_model={d}: load it onto the "
            "backbone it was trained on")
    try:
        with warnings.catch_warnings():   # an over-budget note waits until the values below are checked
            warnings.simplefilter("ignore")
            config = config.resolve(d, backbone.context_length)
    except ValueError as error:
        raise CheckpointError(f"adapter {path}: {error}") from None
    held = sum(t.numel() for t in tensors.values())
    if config.count(d) != held:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise CheckpointError(f"adapter {path}: its settings ({config.method}, m={config.m}, r={config.r}, "
                              f"max_length={config.max_length}, d={d}) make {config.count(d):,} trainable values, "
                              f"its tensors ({shapes}) hold {held:,}: the settings do not belong to these tensors; "
                              "re-save the adapter")
    broken = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if broken:
        raise CheckpointError(f"adapter {path} holds NaN or infinite values ({', '.join(broken)}): it comes from a "
                              "diverged run; use an adapter saved before the divergence")
    return config


def save_adapter(model: PromptedModel, path: str | os.PathLike) -> None:
    """One safetensors file: the trainable tensors; the config and the backbone's identity as metadata
    (docs/adapter-format.md), with its Hub id and revision or folder when `load_model` loaded it."""
    source = {"base_model": getattr(model.backbone, "name_or_path", None),
              "base_model_revision": getattr(model.backbone, "revision", None)}
    save_tensors(model.adapter_state_dict(), path, {
        "format": ADAPTER_FORMAT, "config": model.config.to_json(), "model_type": model.backbone.model_type,
        "d_model": str(model.backbone.d_model), "backbone_config_hash": backbone_config_hash(model.backbone),
        **{key: value for key, value in source.items() if value}})


def load_adapter(path: str | os.PathLike, backbone: nn.Module, read=None) -> PromptedModel:
    """The prompted model of an adapter (a file, a run folder, a PEFT prompt-tuning folder or a Hub
    repository: `find_adapter`), rebuilt on `backbone` (checked against the adapter)."""
    metadata, tensors = read or read_adapter(path)
    model = PromptedModel(backbone, adapter_config(metadata, tensors, backbone, path))
    load_adapter_into(model, path, (metadata, tensors))
    return model


def load_adapter_into(model: PromptedModel, path: str | os.PathLike, read=None) -> None:
    """Copy an adapter's tensors into `model`; the adapter must match its backbone and config."""
    metadata, tensors = read or read_adapter(path)
    config = adapter_config(metadata, tensors, model.backbone, path)
    config_hash = backbone_config_hash(model.backbone)
    if metadata.get("backbone_config_hash", config_hash) != config_hash:   # a PEFT adapter has none
        warnings.warn(f"adapter {path} was trained on a backbone with a different config "
                      f"(hash {metadata['backbone_config_hash']} vs {config_hash}); "
                      "outputs may not be what was trained", stacklevel=2)
    trained_on = metadata.get("base_model"), metadata.get("base_model_revision")
    here = getattr(model.backbone, "name_or_path", None), getattr(model.backbone, "revision", None)
    if trained_on[0] and here[0] and trained_on != here:   # names differ; the weights may still be the same
        warnings.warn(f"adapter {path} was trained on {' at revision '.join(filter(None, trained_on))}; "
                      f"this backbone is {' at revision '.join(filter(None, here))}", stacklevel=2)
    if config != model.config:
        raise CheckpointError(f"adapter {path} has config {metadata['config']}, this model has "
                              f"{model.config.to_json()}: use minidept.load_adapter(path, backbone)")
    copy_into(model.adapter_state_dict(), tensors, f"adapter {path}")
    if model.folded is not None:
        model.fold()
