"""What every tutorial shares: fast mode, the data folder, where pictures go, matplotlib.

Kept out of the tutorials so each one starts with its subject. Run a tutorial from
this folder (`python tutorials/04_dept.py` or open it in Jupyter / VS Code here).
"""

import os
import sys
from pathlib import Path

FAST = os.environ.get("MINIDEPT_FAST") == "1"          # set by the test suite: smaller, quicker settings
DATA = os.environ.get("MINIDEPT_DATA")                 # real tokenizers and data, when you have them
HERE = Path(__file__).resolve().parent                 # this folder, tutorials/
REPO = HERE.parent                                     # the repository root
OUT = Path(os.environ.get("MINIDEPT_TUTORIAL_OUT", HERE / "out"))
OUT.mkdir(parents=True, exist_ok=True)
NOTEBOOK = "ipykernel" in sys.modules                  # inside Jupyter / VS Code's interactive window

try:
    import matplotlib
    if not NOTEBOOK:
        matplotlib.use("Agg")                          # scripts write PNG files; notebooks show them inline
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    print("matplotlib is not installed (pip install matplotlib): the pictures are skipped")


def save(fig, name):
    """Write `fig` to OUT/name as PNG (and show it in a notebook)."""
    fig.savefig(OUT / name, dpi=120, bbox_inches="tight")
    print(f"saved {OUT / name}")
    plt.show() if NOTEBOOK else plt.close(fig)
