"""``anet runs doctor``: end the MLflow runs whose driver is gone, tag orphaned model versions failed.

A pipeline run whose driver process was killed (``kill -9``, a lost terminal, a crashed node) leaves
its parent and step runs RUNNING; a register step killed between registering and deciding leaves a
version ``pending``. The next ``make pipeline-run`` does this too, for its dataset::

    anet runs doctor --dataset synthetic
    anet runs doctor --dataset veri776 --tracking-uri http://mlflow.internal:5000

Only runs whose driver ran on this host are ended (a pid is checked where it lives); others are listed.
"""

from __future__ import annotations

import argparse
import sys
import typing

from anet.config import DatasetName
from anet.mlops.registry import doctor
from anet.mlops.tracking.tracking import check_tracking_server, configure


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``runs doctor`` to the ``anet`` parser."""
    runs = sub.add_parser("runs", help="repair MLflow state left by killed runs", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="{doctor}")
    doc = actions.add_parser("doctor", help="end runs whose driver is gone; tag orphaned versions failed")
    doc.add_argument("--dataset", required=True, choices=typing.get_args(DatasetName))
    doc.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or local sqlite")
    doc.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Close orphaned runs and fail orphaned versions of ``--dataset``; print what was done."""
    check_tracking_server(configure(args.tracking_uri))
    sys.stdout.write(doctor.close_orphaned_runs(args.dataset).describe() + "\n")
    failed = doctor.fail_orphaned_versions(args.dataset)
    sys.stdout.write(f"versions tagged failed: {', '.join(failed) if failed else 'none'}\n")
    return 0
