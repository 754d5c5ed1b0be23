"""A run folder's config.json and results.json, read and checked once for every command that reads them.

`minidept.train` writes `{"run": {option: value, ...}, "model_type": ..., ...}`: the run's
options (TrainConfig's fields) under "run", facts about the model beside them. A file edited
by hand, cut short or written by something else is refused here, with one line naming the
file, the key and what it should hold, instead of a KeyError or TypeError later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import CONFIG_FILE, CheckpointError
from ..methods import METHODS
from .backbones import DTYPES

TEXT, NUMBER = (str,), (int, float)
# The run's options every reader relies on, and the type of each (None is allowed where the run may leave it unset).
REQUIRED = {"task": TEXT, "method": TEXT}
OPTIONAL = {"model": TEXT, "tokenizer": TEXT, "data_dir": TEXT, "dtype": TEXT, "device": TEXT, "init": TEXT, "init_text": TEXT,
            "init_from": TEXT, "output_dir": TEXT, "l": (int,), "m": (int,), "r": (int,), "max_length": (int,),
            "batch_size": (int,), "grad_accum": (int,), "max_steps": (int,), "warmup_steps": (int,),
            "eval_every": (int,), "save_every": (int,), "log_every": (int,), "eval_batch_size": (int,),
            "max_eval_examples": (int,), "k_shot": (int,), "seed": (int,), "lr_prompt": NUMBER,
            "lr_lowrank": NUMBER, "group_by_length": (bool,), "activation_checkpointing": (bool,)}
MAX_JSON_BYTES = 10 * 2**20     # a run's config.json and results.json are a few kilobytes
RESULTS_FILE = "results.json"   # best validation and test metrics of a finished run
FACTS = {"model_type": TEXT, "d_model": (int,), "world_size": (int,), "trainable_parameters": (int,),
         "prompt_config": (dict,), "examples": (dict,), "truncated": (dict,)}


NAMES = {dict: "an object", list: "a list", str: "text", bool: "true or false", int: "an integer", float: "a number",
         type(None): "null"}


def _kind(value) -> str:
    return NAMES.get(type(value), type(value).__name__)


def _read_object(file: Path, fix: str) -> dict:
    """The JSON object in `file` (a run's config.json or results.json), or a one-line CheckpointError."""
    try:
        if not file.is_file():   # a folder, or a pipe that would never end
            raise ValueError("not a regular file")
        if file.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"{file.stat().st_size:,} bytes")
        found = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:   # json recurses once per level: [[[[...]]]]
        raise CheckpointError(f"{file} cannot be read as a run's {file.name} ({type(error).__name__}: "
                              f"{str(error)[:200]}); {fix}") from None
    if not isinstance(found, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {_kind(found)}; {fix}")
    return found


def read_run_config(folder: str | os.PathLike, known: set[str] | None = None) -> dict:
    """A run folder's config.json as a dict, checked: a JSON object of at most MAX_JSON_BYTES with a "run"
    object that names the task and method as text; every option in REQUIRED / OPTIONAL and every fact in
    FACTS of its type. `known`: every option a run may have (`TrainConfig`'s fields), to refuse unknown
    ones too. Raises a one-line CheckpointError naming the file, the key and what it must hold."""
    file = Path(folder) / CONFIG_FILE
    fix = "restore the config.json the run wrote"
    config = _read_object(file, fix)
    run = config.get("run")
    if not isinstance(run, dict):
        found = f"found {_kind(run)}" if "run" in config else "it has none"
        raise CheckpointError(f"{file}: \"run\" must be an object of the run's options, {found}; {fix}")
    missing = [key for key in REQUIRED if run.get(key) is None]
    if missing:
        raise CheckpointError(f"{file}: \"run\" does not name the run's {' and '.join(missing)}; {fix}")
    unknown = sorted(set(run) - known) if known is not None else []
    if unknown:
        raise CheckpointError(f"{file}: unknown option(s) {', '.join(unknown)} in \"run\"; {fix}")
    for where, values, types in (("run.", run, {**REQUIRED, **OPTIONAL}), ("", config, FACTS)):
        for key, allowed in types.items():
            value = values.get(key)
            fits = bool in allowed if isinstance(value, bool) else isinstance(value, allowed)   # true is no number
            if value is not None and not fits:
                raise CheckpointError(f"{file}: {where}{key} must be {NAMES[allowed[0]]}, found {_kind(value)} "
                                      f"({str(value)[:40]}); {fix}")
    if run["method"] not in METHODS:
        raise CheckpointError(f"{file}: run.method {run['method']!r} is not one of {', '.join(METHODS)}; {fix}")
    if run.get("dtype") is not None and run["dtype"] not in DTYPES:
        raise CheckpointError(f"{file}: run.dtype {run['dtype']!r} is not one of {', '.join(DTYPES)}; {fix}")
    return config


def read_run_results(folder: str | os.PathLike) -> dict:
    """A finished run's results.json, checked: "validation" and "test" null or objects of metric -> number
    (or null: a non-finite score), "examples" an object of split -> count, "best_step" a step or null."""
    file = Path(folder) / RESULTS_FILE
    fix = "restore the results.json the run wrote, or train again"
    results = _read_object(file, fix)
    for split in ("validation", "test"):
        scores = results.get(split)
        if scores is not None and not (isinstance(scores, dict) and all(
                value is None or type(value) in (int, float) for value in scores.values())):
            raise CheckpointError(f"{file}: \"{split}\" must be an object of metric -> number, found "
                                  f"{str(scores)[:60]}; {fix}")
    counts, best = results.get("examples", {}), results.get("best_step")
    if not (isinstance(counts, dict) and all(type(n) is int for n in counts.values())):
        raise CheckpointError(f"{file}: \"examples\" must be an object of split -> count, found {str(counts)[:60]}; "
                              f"{fix}")
    if best is not None and type(best) is not int:
        raise CheckpointError(f"{file}: \"best_step\" must be a step number, found {_kind(best)}; {fix}")
    return results
