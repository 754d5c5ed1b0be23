"""`python -m minidept.pretrain`: Pretrain a pocket model (a T5, or a GPT-2) from scratch; the code is in
`minidept/tools/pretrain.py`."""
import sys

from .tools.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
