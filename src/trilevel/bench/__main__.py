"""``python -m trilevel.bench ...``: the same as ``trilevel bench ...``."""

import sys

from ..cli.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
