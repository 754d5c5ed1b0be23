"""What the commands share: options declared once, and one-line errors.

A command's options are the fields of a dataclass declared with `option` (default and
help text); `parse` builds the parser from them, so the same dataclass is the command
line and the Python API (`--max-steps 100` is `TrainConfig(max_steps=100)`). A user's
mistake is a ValueError (`UsageError`, `DataError`, `CheckpointError`): the command
prints one line naming the value and the fix (`fail`) and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import typing
import warnings
from pathlib import Path


class UsageError(ValueError):
    """A bad option or input: reported as one line on stderr, exit code 2, nothing written."""


def option(default=None, help: str = "", **argparse_kwargs):
    """A dataclass field that is also a command-line option (`--name-with-dashes`)."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and no abbreviations: `--max-step` is an error, not `--max-steps`."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        super().__init__(*args, prog=as_run(prog) if prog else None, allow_abbrev=False, **kwargs)

    def error(self, message):   # one line and exit code 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def as_run(prog: str) -> str:
    """`prog` as the user ran it, for usage lines and error messages: `python -m minidept.evaluate` is
    `minidept-evaluate` when that console script is running."""
    script = Path(sys.argv[0]).name
    return script if prog.startswith("python -m minidept.") and script == f"minidept-{prog[19:]}" else prog


def parse(cls, argv: list[str] | None, prog: str, description: str, positional: str | tuple = ()):
    """An instance of the dataclass `cls` from the command line; options not given keep their default.

    The type of each option comes from the field's annotation (`int`, `float`, `bool` is a
    flag, anything else a string); `positional` names the fields taken from the bare arguments, in
    order (a `list` field takes all that are left).
    """
    parser = Parser(prog=prog, description=description)
    types = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kwargs = dict(field.metadata)
        if field.default not in (None, False, dataclasses.MISSING) and "default" not in kwargs.get("help", ""):
            kwargs["help"] = f"{kwargs.get('help', '')} (default {field.default})".lstrip()
        if field.name in ((positional,) if isinstance(positional, str) else positional):
            parser.add_argument(field.name, **{**({"nargs": "*"} if types[field.name] is list else {}), **kwargs})
            continue
        kind = next((t for t in (bool, int, float) if t is types[field.name] or t in typing.get_args(types[field.name])),
                    str)   # `int | None` is an int option
        if kind is bool:
            kwargs.update(action="store_true", default=None)
        else:
            kwargs.setdefault("type", kind)
        flags = kwargs.pop("flags", ())   # short forms such as -o
        parser.add_argument(*flags, "--" + field.name.replace("_", "-"), dest=field.name, **kwargs)
    given = {name: value for name, value in vars(parser.parse_intermixed_args(argv)).items() if value is not None}
    if argv is None:   # run as a command: its warnings one line each (a Python caller keeps its own format)
        warnings.formatwarning = functools.partial(warning_line, prog)
    return cls(**given)


def warning_line(prog: str, message, *_) -> str:
    return f"{as_run(prog)}: warning: {message}\n"


def check_writable(file: str, option: str) -> None:
    """A UsageError unless `file` can be written (its nearest existing folder is writable), checked before a
    command's long work so that the work is not lost for want of a place to write it."""
    if Path(file).exists() and not Path(file).is_file() and not Path(file).is_dir():
        raise UsageError(f"{option} {file}: it exists and is not a regular file (a device, pipe or socket); "
                         "choose another file")
    folder = next(parent for parent in Path(file).absolute().parents if parent.exists())
    if Path(file).is_dir() or not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise UsageError(f"{option} {file}: cannot write there ({file if Path(file).is_dir() else folder} is "
                         f"{'a folder' if Path(file).is_dir() else 'not a writable folder'}); choose another file")


def command(prog: str, after_write_error: str = "free some space or choose another place to write"):
    """Make `body(argv, prog)` a command's `main(argv=None) -> exit code`, its errors one line each: --help and
    option errors keep argparse's code (0, 2); a user's mistake (ValueError: UsageError, DataError,
    CheckpointError) exits 2, Ctrl-C 130, a failed write (a full disk, a read-only folder) 2 with
    `after_write_error`. `body` returns the exit code (None: 0)."""
    def wrap(body):
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            try:
                return body(argv, prog) or 0
            except SystemExit as exit:   # --help, or a bad option already reported
                return exit.code
            except (ValueError, KeyboardInterrupt) as error:
                return fail(prog, error)
            except OSError as error:
                return fail(prog, UsageError(f"cannot write {error.filename or 'a file'} ({error.strerror or error}); "
                                             f"{after_write_error}"))
        return main
    return wrap


def fail(prog: str, error: BaseException) -> int:
    """Report a user's mistake as one line on stderr and return the exit code 2 (Ctrl-C: 130)."""
    prog = as_run(prog)
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2
