"""`python -m minidept.predict`: Label new examples with a trained adapter; the code is in `minidept/run/predict.py`."""
import sys

from .run.predict import main

if __name__ == "__main__":
    sys.exit(main())
