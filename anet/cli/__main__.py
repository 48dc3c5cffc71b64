"""``python -m anet.cli`` (also ``torchrun ... -m anet.cli train``): the ``anet`` command."""

import sys

from anet.cli import main

if __name__ == "__main__":
    sys.exit(main())
