"""``python -m anet.steps train ARGS.json``: the torchrun entry point of a distributed train step.

The train step re-launches itself under ``torchrun`` with this command when ``ANET_NPROC`` > 1; every
rank reads the step's arguments from ``ARGS.json`` and runs :func:`anet.steps.train` (see
:func:`anet.steps.train_step.main`).
"""

import sys

from anet.steps.train_step import main

if __name__ == "__main__":
    sys.exit(main())
