"""`python -m minidept.evaluate`: Score a trained adapter on a split; the code is in `minidept/run/evaluate.py`."""
import sys

from .run.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
