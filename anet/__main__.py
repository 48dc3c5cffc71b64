"""``python -m anet`` runs the command line."""

import sys

from anet.cli import main

sys.exit(main())
