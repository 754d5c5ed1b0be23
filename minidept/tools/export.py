"""Write an adapter for other tools: `python -m minidept.export RUN_OR_ADAPTER --format peft OUT/`.

`--format peft` writes a PEFT prompt-tuning folder (adapter_config.json +
adapter_model.safetensors) that `PeftModel.from_pretrained(transformers_model, OUT)`
loads, giving the logits minidept gives. Only PT adapters have a PEFT type; DePT,
ADePT and EPT adapters are minidept's own safetensors files, described for other
code in docs/adapter-format.md. minidept reads a PEFT prompt-tuning folder back
wherever it takes an adapter (`--adapter`, `--init-from`, `minidept.load_adapter`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..io.adapters import PEFT_CONFIG, PEFT_WEIGHTS, read_adapter, write_peft_adapter
from ..run.cli import UsageError, check_writable, fail, option, parse
from ..models import MODEL_CLASSES
from ..io.adapters import adapter_settings


@dataclass
class ExportConfig:
    adapter: str = option(None, "the adapter: a file, a run folder or a Hub repository owner/name",
                          metavar="RUN_OR_ADAPTER")
    out: str = option(None, "the folder to write", metavar="OUT")
    format: str = option("peft", "the format to write (default peft: PEFT prompt tuning, for PT adapters)",
                         choices=("peft",))


def main(argv: list[str] | None = None) -> int:
    prog = "python -m minidept.export"
    try:
        args = parse(ExportConfig, argv, prog, __doc__.split("\n\n")[0], positional=("adapter", "out"))
        source, out = args.adapter, Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out} is a file: the PEFT adapter is a folder")
        check_writable(str(out / PEFT_CONFIG), "OUT")
        metadata, tensors = read_adapter(source)
        adapter_settings(metadata, source)
        if metadata.get("model_type") not in MODEL_CLASSES:
            raise UsageError(f"{source} does not say which backbone family it was trained on (model_type)")
        config = write_peft_adapter(out, metadata, tensors, MODEL_CLASSES[metadata["model_type"]].is_encoder_decoder)
        print(f"wrote {out / PEFT_CONFIG} and {out / PEFT_WEIGHTS}: PEFT prompt tuning ({config['task_type']}), "
              f"{config['num_virtual_tokens']} virtual tokens of width {config['token_dim']}, base model "
              f"{config['base_model_name_or_path'] or 'not recorded'}")
    except SystemExit as exit:   # --help, or a bad option already reported
        return exit.code
    except ValueError as error:  # a user's mistake: one line, nothing written
        return fail(prog, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
