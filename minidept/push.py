"""`python -m minidept.push`: Upload an adapter or run to the Hugging Face Hub; the code is in `minidept/tools/push.py`."""
import sys

from .tools.push import main

if __name__ == "__main__":
    sys.exit(main())
