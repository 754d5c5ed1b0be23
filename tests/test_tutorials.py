"""Every tutorial runs top to bottom as a plain script and prints what its text says it prints.

Each tutorial is executed in a subprocess with MINIDEPT_FAST=1 (fewer steps and
timing repeats) and its pictures written to a temporary folder. Tutorials 1-6
and 8 run on the embedded demo (no MINIDEPT_DATA), the path of a reader without
the data; tutorial 7 trains on SST-2 and takes the real data through the
`data_dir` fixture (skipped without it, failing under MINIDEPT_REQUIRE_DATA=1),
and also runs once on its demo fallback.

What a tutorial prints is quoted in its "You should see" cells as fenced blocks
opened with ```output: every line of such a block must be a line of the run's
output, in the block's order. A number written `~1.23` depends on the machine
(a timing, a rounding error) and matches any number. Words after `output` say
which runs print the block: `demo` (without MINIDEPT_DATA) or `data` (with it),
`fast` (MINIDEPT_FAST=1, as here) or `full` (without it); a block without them
is printed by every run. The `full` blocks, and the `data` blocks of tutorials
other than 7, are checked only with MINIDEPT_TUTORIALS_ALL=1 (minutes more).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"

# tutorial -> the pictures it must write
PICTURES = {
    "01_t5_from_scratch.py": ["t5_position_buckets.png"],
    "02_gpt2_from_scratch.py": ["gpt2_kv_cache.png"],
    "03_prompt_tuning.py": ["pt_input_layout.png", "pt_parameters.png"],
    "04_dept.py": ["dept_learning_rates.png", "dept_prompt_cost.png"],
    "05_adept.py": ["adept_vs_dept_offsets.png"],
    "06_ept.py": ["ept_fusion_and_gate.png"],
    "07_training_end_to_end.py": ["training_loss.png"],
    "08_scaling_up.py": ["scaling_up.png"],
}
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
ALL_RUNS = os.environ.get("MINIDEPT_TUTORIALS_ALL") == "1"

# ---- the quoted output --------------------------------------------------------------

OUTPUT_BLOCK = re.compile(r"^# ```output(?P<conditions>[ \w]*)\n(?P<body>(?:#.*\n)*?)# ```$", re.M)
CONDITIONS = {"demo", "data", "fast", "full"}
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
MACHINE_NUMBER = re.compile(r"\s*~" + NUMBER)    # `~1.23`: depends on the machine, any number matches


def output_blocks(text: str, data: bool, fast: bool) -> list[list[str]]:
    """The ```output blocks of a tutorial's text that a run with (data, fast) prints, as lists of lines."""
    blocks = []
    for match in OUTPUT_BLOCK.finditer(text):
        conditions = set(match["conditions"].split())
        assert conditions <= CONDITIONS, f"unknown output condition(s) {conditions - CONDITIONS}: use {CONDITIONS}"
        if {"data", "demo"} <= conditions or {"fast", "full"} <= conditions:
            raise AssertionError(f"output block marked {sorted(conditions)} is printed by no run")
        wanted = {"data" if data else "demo", "fast" if fast else "full"}
        if conditions & (CONDITIONS - wanted):
            continue
        blocks.append([line[2:] if line.startswith("# ") else line[1:] for line in match["body"].splitlines()])
    return blocks


def line_pattern(line: str) -> re.Pattern:
    """`line` as an exact match, except that every `~number` matches any number (with any padding before it)."""
    pieces = MACHINE_NUMBER.split(line)
    return re.compile((r"\s*" + NUMBER).join(re.escape(piece) for piece in pieces))


def check_output(name: str, text: str, output: str, data: bool, fast: bool) -> int:
    """Every line of every block that this run prints is in `output`, in its block's order; return how many."""
    printed = [line.rstrip() for line in output.splitlines()]
    checked = 0
    for block in output_blocks(text, data, fast):
        position = 0
        for line in block:
            pattern = line_pattern(line.rstrip())
            found = next((i for i in range(position, len(printed)) if pattern.fullmatch(printed[i])), None)
            if found is None:
                nearest = difflib.get_close_matches(line, printed[position:], n=1, cutoff=0.5)
                raise AssertionError(f"{name} says it prints\n  {line}\nbut printed "
                                     + (f"\n  {nearest[0]}\ninstead" if nearest else "no such line")
                                     + " (fix the number in its text, or mark a machine-dependent one ~)")
            position, checked = found + 1, checked + 1
    return checked


def run_tutorial(name: str, out: Path, data_dir: Path | None, fast: bool = True) -> str:
    env = {**os.environ, "MINIDEPT_TUTORIAL_OUT": str(out), "MPLBACKEND": "Agg"}
    env.pop("MINIDEPT_DATA", None)
    env.pop("MINIDEPT_FAST", None)
    if fast:
        env["MINIDEPT_FAST"] = "1"
    if data_dir is not None:
        env["MINIDEPT_DATA"] = str(data_dir)
    result = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{output[-4000:]}"
    if HAS_MATPLOTLIB:
        for picture in PICTURES[name]:
            file = out / picture
            assert file.is_file() and file.stat().st_size > 1000, f"{name} did not write {picture}:\n{output[-2000:]}"
    text = (TUTORIALS / name).read_text(encoding="utf-8")
    check_output(name, text, result.stdout, data=data_dir is not None, fast=fast)
    return output


def test_every_tutorial_is_listed():
    found = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert found == sorted(PICTURES), f"tutorials on disk {found} vs listed here {sorted(PICTURES)}"
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for name in found:
        assert name in readme, f"tutorials/README.md does not mention {name}"


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_percent_format(name):
    """Opens as a notebook: markdown and code cells, starting with a markdown title."""
    text = (TUTORIALS / name).read_text(encoding="utf-8")
    assert text.startswith("# %% [markdown]\n# # Tutorial"), f"{name} must open with a markdown title cell"
    code_cells = len(re.findall(r"^# %%$", text, flags=re.M))
    markdown_cells = len(re.findall(r"^# %% \[markdown\]$", text, flags=re.M))
    assert code_cells >= 5 and markdown_cells >= 5, (name, code_cells, markdown_cells)
    assert "You should see" in text, f"{name} must say what output the reader should expect"


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_quoted_output_is_checked(name):
    """Each tutorial quotes what it prints in ```output blocks, enough of it to catch a drifting number."""
    text = (TUTORIALS / name).read_text(encoding="utf-8")
    lines = sum(len(block) for block in output_blocks(text, data=False, fast=True))
    assert lines >= 5, f"{name} quotes only {lines} output lines that the test suite's run checks"
    opened = len(re.findall(r"^# ```output", text, flags=re.M))
    assert opened == len(OUTPUT_BLOCK.findall(text)), f"{name}: an ```output block is not closed"


def test_a_changed_number_fails():
    text = "# You should see\n#\n# ```output\n# loss 5.67 -> 4.78 | ~3.2 s\n# same: True\n# ```\n"
    assert check_output("t", text, "loss 5.67 -> 4.78 |  12.5 s\nsame: True\n", data=False, fast=True) == 2
    for wrong in ("loss 5.67 -> 4.79 | 3.2 s\nsame: True", "same: True\nloss 5.67 -> 4.78 | 3.2 s",
                  "loss 5.67 -> 4.78 | fast\nsame: True"):
        with pytest.raises(AssertionError, match="says it prints"):
            check_output("t", text, wrong, data=False, fast=True)
    conditional = "# ```output data full\n# only with the data, without MINIDEPT_FAST\n# ```\n"
    assert check_output("t", conditional, "", data=False, fast=True) == 0
    with pytest.raises(AssertionError):
        check_output("t", conditional, "", data=True, fast=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(PICTURES) if not n.startswith("07")])
def test_tutorial_runs_on_the_demo(name, tmp_path):
    run_tutorial(name, tmp_path, data_dir=None)


@pytest.mark.slow
def test_training_tutorial_on_sst2(data_dir, tmp_path):
    output = run_tutorial("07_training_end_to_end.py", tmp_path, data_dir)
    assert "sst2" in output and (tmp_path / "07_training" / "cli-run" / "results.json").is_file()


@pytest.mark.slow
def test_training_tutorial_on_the_demo(tmp_path):
    output = run_tutorial("07_training_end_to_end.py", tmp_path, data_dir=None)
    assert "no MINIDEPT_DATA" in output and (tmp_path / "07_training" / "cli-run" / "results.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not ALL_RUNS, reason="the full-length and data runs of every tutorial: MINIDEPT_TUTORIALS_ALL=1")
@pytest.mark.parametrize("name", sorted(PICTURES))
@pytest.mark.parametrize("with_data,fast", [(False, False), (True, True), (True, False)],
                         ids=["demo-full", "data-fast", "data-full"])
def test_tutorial_prints_what_it_says(name, with_data, fast, request, tmp_path):
    data_dir = request.getfixturevalue("data_dir") if with_data else None
    run_tutorial(name, tmp_path, data_dir, fast=fast)


def test_the_readme_quotes_tutorial_4_as_it_prints():
    """The README's figures for tutorial 4's three SST-2 runs are those of the tutorial's quoted full run, which
    MINIDEPT_TUTORIALS_ALL=1 checks against what it prints."""
    text = (TUTORIALS / "04_dept.py").read_text(encoding="utf-8")
    block = next(match["body"] for match in OUTPUT_BLOCK.finditer(text)
                 if set(match["conditions"].split()) == {"data", "full"} and "one rate:" in match["body"])
    accuracies = re.findall(r"accuracy\s+(\d+\.\d)%", block)
    offsets = re.findall(r"offset/embedding\s+(\d+\.\d+)", block)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    two, large, small = accuracies
    quoted = (f"two learning rates {two}%, one large rate for\nboth parts {large}% (the offset grows to "
              f"{round(float(offsets[1]))} times")
    assert quoted in readme and f"one small rate {small}%" in readme, (accuracies, offsets)
