"""Every file minidept reads or writes: model folders, adapters, training states.

One reader per format (`read_config`, `read_state_dict`, `read_safetensors`,
`read_adapter` and `read_peft_adapter`; docs/adapter-format.md describes the
adapter files for other code), one writer (`atomic_write`: a temporary file, flushed to disk, renamed over the target,
so a crash never leaves half a file) and one strict copy into a model (`copy_into`).
Nothing is ever unpickled: weights come from safetensors, a legacy
`pytorch_model.bin` is read with `torch.load(weights_only=True)`. Every failure is a
`CheckpointError` that names the file and says what to do.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save


class CheckpointError(ValueError):
    """A model, adapter or state file is missing, corrupt, or does not fit the model."""


CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model",
                   "tokenizer_config.json", "special_tokens_map.json")
HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES]  # all we fetch
ADAPTER_FORMAT = "minidept-adapter-1"
STATE_FORMAT = "minidept-train-state-1"
ADAPTER_FILE = "adapter.safetensors"   # in a run folder, beside the run's config.json
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"   # a PEFT adapter folder
ADAPTER_PATTERNS = [ADAPTER_FILE, CONFIG_FILE, "results.json", PEFT_CONFIG, PEFT_WEIGHTS]   # all we fetch

OFFLINE_HINT = (
    "To run without network access, download the model once (for example "
    "`hf download t5-base --local-dir ./t5-base`) and pass the folder: "
    "`--model ./t5-base`. The folder needs config.json and model.safetensors "
    "(plus tokenizer files)."
)


# --------------------------------------------------------------------------- #
# Model folders: local or from the Hub
# --------------------------------------------------------------------------- #

def is_hub_id(name: str) -> bool:
    """`name` or `owner/name` that does not look like a path (a leading `.`, `/` or `~`, two slashes)."""
    return not (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name)


def hub_snapshot(repo_id: str, patterns: list[str], hint: str) -> Path:
    """The local copy of the files of Hub repository `repo_id` that match `patterns` (huggingface_hub's cache).

    With no network this fails within seconds with a CheckpointError ending in `hint`.
    """
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")       # fail fast when offline
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download            # installed with datasets
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # network errors, unknown or gated repository ...
        raise CheckpointError(f"could not get {repo_id!r} from the Hugging Face Hub ({one_line(error)}). "
                              f"{hint}") from error


def one_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, to quote another library's error inside ours."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder for `name_or_path`: the folder itself, or a Hub download (`t5-small`, `gpt2`, `owner/name`).

    With no network this fails within seconds and says how to pass a local folder instead.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{name!r} is a file; pass the folder that holds config.json")
    if not is_hub_id(name):   # meant as a local folder
        raise CheckpointError(f"model folder {name!r} does not exist. {OFFLINE_HINT}")
    folder = hub_snapshot(name, HUB_PATTERNS, OFFLINE_HINT)
    if not any(folder.glob("*.safetensors")):   # an old repository with pickled weights only
        folder = hub_snapshot(name, [PICKLE_FILE], OFFLINE_HINT)
    return folder


def read_config(folder: str | os.PathLike, name: str = CONFIG_FILE) -> dict:
    """The `config.json` (or another JSON file `name`) of a model or adapter folder as a dict."""
    file = Path(folder) / name
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: a model folder needs config.json next to its weights")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file} is not valid JSON ({error}); re-download it") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {type(config).__name__}")
    return config


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} could not be read as safetensors ({error}); it may be truncated "
                              "or corrupt: re-download or re-save it") from error


def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder: `model.safetensors`, else the sharded index, else `pytorch_model.bin`."""
    folder = Path(folder)
    single, index, pickle = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX, folder / PICKLE_FILE
    if single.is_file():
        return read_safetensors(single)[1]
    if index.is_file():
        weight_map = read_config(folder, SAFETENSORS_INDEX).get("weight_map")
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in [*weight_map, *weight_map.values()])):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names, found "
                                  f"{str(weight_map)[:80]}; re-download the model")
        shards = set(weight_map.values())
        # a shard is a file of this folder: never a path outside it (../.., /etc/passwd)
        outside = [shard for shard in shards
                   if Path(shard).is_absolute() or ".." in Path(shard).parts or not shard.endswith(".safetensors")]
        if outside:
            raise CheckpointError(f"{index} lists shards outside the model folder or not .safetensors "
                                  f"({', '.join(sorted(outside)[:3])}); a shard must be a .safetensors file in {folder}")
        tensors = {}
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder / shard} is listed in {index.name} but missing; re-download the model")
            tensors.update(read_safetensors(folder / shard)[1])
        return tensors
    if pickle.is_file():
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)   # never a full unpickle
        except Exception as error:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f"the object {found.group(1)}" if found else type(error).__name__
            raise CheckpointError(
                f"{pickle} could not be loaded safely: it holds more than plain tensors ({what}). "
                "minidept never unpickles arbitrary objects; convert the checkpoint to "
                "model.safetensors with a tool you trust") from error
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{pickle} does not hold a plain dict of tensors")
        return state
    raise CheckpointError(f"no weights in {folder}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {PICKLE_FILE}")


def open_checkpoint(name_or_path, model_class, config_class, dtype: torch.dtype = torch.float32):
    """(model with uninitialised weights, the checkpoint's tensors, folder, config.json) for a Hub id or folder.

    The model is built from `config_class.from_hf_config(config.json)` on the meta device
    (shapes only) and then allocated, so no random init is paid for: the caller fills every
    parameter from the tensors with `copy_into`.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}")
    folder = resolve_model_dir(name_or_path)
    hf_config = read_config(folder)
    try:
        config = config_class.from_hf_config(hf_config)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {error}") from error
    with torch.device("meta"):
        model = model_class(config).to(dtype)
    tensors = read_state_dict(folder)
    # allocate about what the weights could fill, never more: a config.json of an absurd size fails here
    # (one of about the right size fails in copy_into, which names every tensor that does not fit)
    needed, held = sum(p.numel() for p in model.parameters()), sum(t.numel() for t in tensors.values())
    if needed > 2 * held + 2**20:
        raise CheckpointError(f"{folder / CONFIG_FILE} describes a model of {needed:,} parameters, but the weights "
                              f"hold {held:,} values: check that config.json belongs to these weights")
    return model.to_empty(device="cpu"), tensors, folder, hf_config


# --------------------------------------------------------------------------- #
# The one strict copy into a model
# --------------------------------------------------------------------------- #

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


# --------------------------------------------------------------------------- #
# Writing, always atomically
# --------------------------------------------------------------------------- #

def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: `path` is either old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    try:
        # created like any new file (the umask applies), not mkstemp's 0600
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())   # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Tensors (contiguous CPU copies) and string metadata as one safetensors file, atomically."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write(path, save(plain, metadata=metadata))


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------- #
# Adapters and training states: safetensors files with a format name in the metadata
# --------------------------------------------------------------------------- #

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

    A minidept adapter is a safetensors file written by `PromptedModel.save_adapter`
    (docs/adapter-format.md); a PEFT prompt-tuning folder is read by `read_peft_adapter`.
    """
    path = find_adapter(name_or_path)
    if path.is_dir():
        return read_peft_adapter(path)
    metadata, tensors = read_safetensors(path)
    if metadata.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not a minidept adapter (metadata format={metadata.get('format')!r}); "
                              "adapters are written by PromptedModel.save_adapter")
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
    tensors = read_safetensors(folder / PEFT_WEIGHTS)[1]
    P = tensors.get("prompt_embeddings")
    n, d = config.get("num_virtual_tokens"), config.get("token_dim")
    if P is None or tuple(P.shape) != (n, d):
        raise CheckpointError(f"{folder / PEFT_WEIGHTS} must hold prompt_embeddings of shape (num_virtual_tokens, "
                              f"token_dim) = ({n}, {d}); found {dict((k, tuple(t.shape)) for k, t in tensors.items())}")
    metadata = {"format": ADAPTER_FORMAT, "config": json.dumps({"method": "pt", "l": n}), "d_model": str(d)}
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
    save_tensors({"prompt_embeddings": P}, Path(folder) / PEFT_WEIGHTS, {"format": "pt"})
    return config


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
