"""``python -m frametok.cli``: the command line, as ``frametok``."""

import sys

from . import main

sys.exit(main())
