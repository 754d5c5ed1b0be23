"""`python -m minidept.reproduce`: Run a table of the paper; the code is in `minidept/tools/reproduce.py`."""
import sys

from .tools.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
