import sys

from ..tools.bench.__main__ import main

sys.exit(main())
