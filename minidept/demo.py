"""`python -m minidept.demo`: The offline demo; the code is in `minidept/tools/demo.py`."""
import sys

from .tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
