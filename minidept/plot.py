"""`python -m minidept.plot`: Plot runs from their metrics.jsonl; the code is in `minidept/tools/plot.py`."""
import sys

from .tools.plot import main

if __name__ == "__main__":
    sys.exit(main())
