"""`python -m minidept.train`: Train a prompt on a frozen backbone; the code is in `minidept/run/train.py`."""
import sys

from .run.train import main

if __name__ == "__main__":
    sys.exit(main())
