"""``python -m bgcn …``: see :mod:`bgcn.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
