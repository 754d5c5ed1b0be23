"""Every tutorial runs top to bottom as a plain script, so none can rot.

Each tutorial is executed in a subprocess with MINIDEPT_FAST=1 (fewer steps and
timing repeats) and its pictures written to a temporary folder. Tutorials 1-6
run on the embedded demo (no MINIDEPT_DATA), the path of a reader without the
data; tutorial 7 trains on SST-2 and takes the real data through the `data_dir`
fixture (skipped without it, failing under MINIDEPT_REQUIRE_DATA=1), and also
runs once on its demo fallback.
"""

from __future__ import annotations

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


def run_tutorial(name: str, out: Path, data_dir: Path | None) -> str:
    env = {**os.environ, "MINIDEPT_FAST": "1", "MINIDEPT_TUTORIAL_OUT": str(out), "MPLBACKEND": "Agg"}
    env.pop("MINIDEPT_DATA", None)
    if data_dir is not None:
        env["MINIDEPT_DATA"] = str(data_dir)
    result = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{output[-4000:]}"
    if HAS_MATPLOTLIB:
        for picture in PICTURES[name]:
            file = out / picture
            assert file.is_file() and file.stat().st_size > 1000, f"{name} did not write {picture}:\n{output[-2000:]}"
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
