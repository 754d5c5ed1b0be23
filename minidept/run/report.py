"""`--report-to tensorboard|wandb`: every record of a run's metrics.jsonl also goes to TensorBoard or W&B.

`MetricsLog` is metrics.jsonl opened for appending that hands each line it writes to
the reporter as scalars (`train/loss`, `train/lr_prompt`, `validation/accuracy`,
`test/accuracy`, ... at the record's step); `minidept.train` uses it instead of the plain
file only when the option is given. TensorBoard's event files go to
`RUN/tensorboard/`; a W&B run is named after the run folder, in project "minidept".
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from .cli import UsageError

REPORTERS = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}   # --report-to -> the module it needs
NOT_SCALARS = ("step", "split", "best", "best_step", "elapsed", "examples")


def check_reporter(to: str) -> None:
    """Fail before anything is written when the reporter's package is missing, naming the extra to install."""
    try:
        importlib.import_module(REPORTERS[to])
    except ImportError:
        raise UsageError(f"--report-to {to} needs the {to} package: pip install 'minidept[{to}]'") from None


class MetricsLog:
    """metrics.jsonl opened for appending; each record written is also sent to TensorBoard or W&B."""

    def __init__(self, path: Path, to: str, run: dict):
        self.file, self.to, out = open(path, "a", encoding="utf-8"), to, Path(path).parent
        if to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        else:   # the same W&B run for the same folder (continued by --resume, and by the test record)
            import wandb
            self.writer = wandb.init(project="minidept", name=out.name, config=run, dir=str(out), resume="allow",
                                     id=hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16])

    def write(self, line: str) -> None:
        self.file.write(line)
        record = json.loads(line)
        scalars = {f"{record.get('split', 'train')}/{key}": value for key, value in record.items()
                   if key not in NOT_SCALARS and isinstance(value, (int, float))}
        if self.to == "tensorboard":
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, record["step"])
        else:
            self.writer.log(scalars, step=record["step"])

    def flush(self) -> None:
        self.file.flush()
        if self.to == "tensorboard":
            self.writer.flush()

    def fileno(self) -> int:   # for os.fsync before a state save
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
        (self.writer.close if self.to == "tensorboard" else self.writer.finish)()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
