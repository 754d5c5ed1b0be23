"""Share a trained adapter on the Hugging Face Hub: `python -m minidept.push RUN owner/name`.

Uploads the run's adapter.safetensors, results.json and config.json (without the
absolute paths of this machine: the data folder, the output folder, a local
model folder, in the adapter's metadata too) with a model card, README.md: the method
and its budget, the base model (a local folder by its name only), the task, the
validation and test metrics with their example counts, and a command that trains the
same adapter. Log in first (`hf auth login`) or set HF_TOKEN.
Anyone can then pass `owner/name` wherever minidept takes an adapter
(`python -m minidept.evaluate --adapter owner/name`, `--init-from owner/name`).
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..io.adapters import ADAPTER_FILE, read_adapter

from ..io.checkpoint import CONFIG_FILE, CheckpointError, read_safetensors, save_tensors, write_json

from ..io.hub import is_hub_id
from ..io.runs import read_run_config, read_run_results

from ..errors import one_line
from ..run.cli import command, UsageError, option, parse
from ..io.backbones import BUILT_IN_MODELS
from ..run.config import command_line
from ..run.folder import RESULTS_FILE

NAMES = {"pt": "PT (prompt tuning)", "dept": "DePT", "adept": "ADePT", "ept": "EPT"}


@dataclass
class PushConfig:
    run: str = option(None, "the run folder of minidept.train", metavar="RUN")
    repo_id: str = option(None, "the Hub repository to create or update", metavar="owner/name")
    private: bool = option(False, "create the repository as a private one")


def scores(split: dict | None, count: int | None) -> str:
    if not split:
        return "not measured (the run did not finish)"
    text = ", ".join(f"{name} {value:.2f}" for name, value in split.items())
    return text + (f" on {count} examples" if count else "")


def portable(run: dict) -> dict:
    """The run's settings without the absolute paths of the machine that trained it."""
    return {k: v for k, v in run.items() if not (isinstance(v, str) and Path(v).is_absolute())}


def upload_fix(error: Exception) -> str:
    """What to do about a failed upload: the network, the login, or the rights on the repository."""
    names = {cls.__name__ for cls in type(error).__mro__}
    status = getattr(getattr(error, "response", None), "status_code", None)
    if "OfflineModeIsEnabled" in names:
        return "HF_HUB_OFFLINE is set: unset it to upload"
    if names & {"ConnectionError", "TransportError", "TimeoutError", "Timeout", "TimeoutException"}:
        return "the Hub cannot be reached: check the network connection (or a proxy's settings) and try again"
    if status == 403:
        return "this login may not write to that repository: push to one of your own, or ask for write access"
    return "log in with `hf auth login` or set HF_TOKEN"


def model_card(repo_id: str, run: dict, facts: dict, results: dict, metadata: dict) -> str:
    """README.md of the Hub repository: what the adapter is, how well it does, how it was made and used."""
    base = metadata.get("base_model") or run.get("model")
    revision = metadata.get("base_model_revision")
    local = Path(str(base)).is_absolute()
    config, counts = facts.get("prompt_config", {}), results.get("examples", {})
    shape = f"l={config.get('l')}" if run["method"] == "pt" else f"m={config.get('m')}, r={config.get('r')}"
    front = ["---", "library_name: minidept", "tags: [minidept, prompt-tuning, " + run["method"] + "]"]
    front += [f"base_model: {base}"] if base and not local and base not in BUILT_IN_MODELS else []
    return "\n".join(front + [
        "---", "",
        f"# {NAMES[run['method']]} adapter for {Path(str(base)).name if local else base} on {run['task']}", "",
        "A soft prompt trained with minidept in front of a frozen backbone; only these tensors were trained.", "",
        "| | |", "|---|---|",
        f"| method | {NAMES[run['method']]}, {shape}, max_length {config.get('max_length')} |",
        f"| trainable parameters | {facts.get('trainable_parameters', 0):,} (PT's budget l*d = "
        f"{facts.get('budget_l_times_d', 0):,}) |",
        f"| base model | {Path(str(base)).name if local else base}" + (f" at revision {revision}" if revision else "")
        + (" (a local folder of the machine that trained it: pass --model)" if local else "") + " |",
        f"| task | {run['task']} |",
        f"| validation (best, step {results.get('best_step')}) | "
        f"{scores(results.get('validation'), counts.get('validation'))} |",
        f"| test | {scores(results.get('test'), counts.get('test'))} |",
        "", "## Use it", "", "```bash",
        f"python -m minidept.evaluate --adapter {repo_id}",
        f"python -m minidept.predict --adapter {repo_id} \"some text\"", "```", "",
        "## How it was trained", "", "```bash", shlex.join(["python", "-m", "minidept.train", *command_line(portable(run))]),
        "```", ""])


@command("python -m minidept.push")
def main(argv: list[str] | None, prog: str) -> int | None:
    args = parse(PushConfig, argv, prog, __doc__.split("\n\n")[0], positional=("run", "repo_id"))
    folder, repo_id = Path(args.run), args.repo_id
    if not is_hub_id(repo_id) or repo_id.count("/") != 1:
        raise UsageError(f"{repo_id!r} is not a Hub repository: give it as owner/name")
    if not (folder / ADAPTER_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise UsageError(f"{folder} is not a run folder of minidept.train: it needs {ADAPTER_FILE} and "
                         f"{CONFIG_FILE}")
    metadata = read_adapter(folder / ADAPTER_FILE)[0]
    saved = read_run_config(folder)
    results = read_run_results(folder) if (folder / RESULTS_FILE).is_file() else {}
    run, facts = saved["run"], {k: v for k, v in saved.items() if k != "run"}
    from huggingface_hub import HfApi   # installed with datasets
    with tempfile.TemporaryDirectory() as staging:
        adapter_metadata, tensors = read_safetensors(folder / ADAPTER_FILE)
        if portable(adapter_metadata) == adapter_metadata:
            shutil.copy(folder / ADAPTER_FILE, staging)
        else:   # saved again without the local model folder's path
            save_tensors(tensors, Path(staging) / ADAPTER_FILE, portable(adapter_metadata))
        write_json(Path(staging) / CONFIG_FILE, {**saved, "run": portable(run)})
        if results:
            write_json(Path(staging) / RESULTS_FILE, results)
        card = model_card(repo_id, run, facts, results, metadata)
        (Path(staging) / "README.md").write_text(card, encoding="utf-8")
        try:
            api = HfApi()
            api.create_repo(repo_id, private=args.private, exist_ok=True)
            api.upload_folder(folder_path=staging, repo_id=repo_id,
                              commit_message=f"minidept {run['method']} adapter for {run['task']}")
        except Exception as error:   # not logged in, no network, no rights on the repository ...
            raise CheckpointError(f"could not upload to {repo_id!r} ({one_line(error)}); {upload_fix(error)}") \
                from error
        print(f"uploaded {', '.join(sorted(p.name for p in Path(staging).iterdir()))} to {repo_id}; "
              f"use it with --adapter {repo_id}")


if __name__ == "__main__":
    sys.exit(main())
