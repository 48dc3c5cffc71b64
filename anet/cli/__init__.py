"""The ``anet`` command line (also ``python -m anet``).

Examples::

    anet data inspect veri776 data/veri776 --manifest /tmp/veri.parquet
    anet train --config synthetic stage_one.epochs=5
    anet evaluate-features feats.npz --max-rank 50
    anet registry promote --dataset veri776 --version 3
    anet runs doctor --dataset synthetic

A mistake a user can fix (wrong path, bad layout, unknown config key, unreachable server) is
printed as one ``error: ...`` line with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from anet.cli import data as data_commands
from anet.cli import evaluate as eval_commands
from anet.cli import registry as registry_commands
from anet.cli import runs as runs_commands
from anet.cli import search as search_commands
from anet.cli import train as train_commands
from anet.errors import run_guarded


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each area contributes its sub-commands explicitly."""
    parser = argparse.ArgumentParser(prog="anet", description="AttributeNet vehicle re-identification")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_commands.add_commands(sub)
    train_commands.add_commands(sub)
    eval_commands.add_commands(sub)
    registry_commands.add_commands(sub)
    runs_commands.add_commands(sub)
    search_commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, turn user mistakes into one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(lambda: args.func(args), "rerun the same command to resume from the last checkpoint")


if __name__ == "__main__":
    sys.exit(main())
