"""``python -m trilevel`` (also under ``torchrun -m trilevel``): the ``trilevel`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
