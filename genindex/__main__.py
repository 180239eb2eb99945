"""``python -m genindex``: the genindex command (see :mod:`genindex.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
