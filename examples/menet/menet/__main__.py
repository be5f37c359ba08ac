"""``python -m menet``: the command line of :mod:`menet.cli`."""

import sys

from menet.cli import main

if __name__ == "__main__":
    sys.exit(main())
