"""Write an adapter for other tools: `python -m minidept.export RUN_OR_ADAPTER --format peft OUT/`.

`--format peft` writes a PEFT prompt-tuning folder (adapter_config.json +
adapter_model.safetensors) that `PeftModel.from_pretrained(transformers_model, OUT)`
loads, giving the logits minidept gives. Only PT adapters have a PEFT type; DePT,
ADePT and EPT adapters are minidept's own safetensors files, described for other
code in docs/adapter-format.md. minidept reads a PEFT prompt-tuning folder back
wherever it takes an adapter (`--adapter`, `--init-from`, `minidept.load_adapter`), with
the run's max_length (kept in the weights file's metadata, which PEFT ignores).

OUT is written whole or not at all: the files go to a temporary folder beside it, which
is then renamed to OUT (an earlier export there is replaced; a run folder or a folder
holding other files is refused).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..io.adapters import PEFT_CONFIG, PEFT_WEIGHTS, read_adapter, write_peft_adapter
from ..run.cli import command, UsageError, check_writable, option, parse
from ..models import MODEL_CLASSES
from ..io.adapters import adapter_settings


@dataclass
class ExportConfig:
    adapter: str = option(None, "the adapter: a file, a run folder or a Hub repository owner/name",
                          metavar="RUN_OR_ADAPTER")
    out: str = option(None, "the folder to write", metavar="OUT")
    format: str = option("peft", "the format to write (default peft: PEFT prompt tuning, for PT adapters)",
                         choices=("peft",))


@command("python -m minidept.export", "free some space or choose another OUT; OUT is as it was")
def main(argv: list[str] | None, prog: str) -> int | None:
    args = parse(ExportConfig, argv, prog, __doc__.split("\n\n")[0], positional=("adapter", "out"))
    source, out = args.adapter, Path(args.out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"{out} is {'a link' if out.is_symlink() else 'not a folder'}: the PEFT adapter is a "
                         "folder; choose another OUT")
    if out.is_dir() and (other := sorted(p.name for p in out.iterdir() if p.name not in (PEFT_CONFIG, PEFT_WEIGHTS))):
        raise UsageError(f"{out} holds other files than an export ({', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}): choose a new or empty folder for OUT")
    check_writable(str(out / PEFT_CONFIG), "OUT")
    metadata, tensors = read_adapter(source)
    adapter_settings(metadata, source)
    if metadata.get("model_type") not in MODEL_CLASSES:
        raise UsageError(f"{source} does not say which backbone family it was trained on (model_type)")
    config = write_folder(out, lambda tmp: write_peft_adapter(
        tmp, metadata, tensors, MODEL_CLASSES[metadata["model_type"]].is_encoder_decoder))
    print(f"wrote {out / PEFT_CONFIG} and {out / PEFT_WEIGHTS}: PEFT prompt tuning ({config['task_type']}), "
          f"{config['num_virtual_tokens']} virtual tokens of width {config['token_dim']}, base model "
          f"{config['base_model_name_or_path'] or 'not recorded'}")


def write_folder(out: Path, write):
    """`write(folder)` into a new folder beside `out`, renamed to `out` once complete; an earlier `out` is
    replaced (it is moved aside first: a folder cannot be renamed over one that holds files). Returns what
    `write` returns. A kill leaves `out` old or new, and at worst a hidden `.OUT.*.tmp` folder beside it,
    which the next export removes."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):   # left by an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp, old = (out.parent / f".{out.name}.{os.getpid()}-{os.urandom(4).hex()}.{kind}.tmp" for kind in ("new", "old"))
    try:
        tmp.mkdir()
        result = write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
