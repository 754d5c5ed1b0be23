"""`python -m minidept.export`: Export an adapter (PEFT folder); the code is in `minidept/tools/export.py`."""
import sys

from .tools.export import main

if __name__ == "__main__":
    sys.exit(main())
