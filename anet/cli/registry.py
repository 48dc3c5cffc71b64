"""anet registry: look at the registered versions and move the champion by hand.

Examples::

    anet registry show --dataset veri776
    anet registry promote --dataset veri776 --version 3 --reason "beats v2 on night images"
    anet registry promote --dataset veri776 --version 2 --reason "rollback: v3 broke serving"

The tracking server comes from --tracking-uri or $MLFLOW_TRACKING_URI (default: the local
sqlite:///<cwd>/mlflow.db).
"""

from __future__ import annotations

import argparse
import typing

from anet.config import DatasetName
from anet.mlops.registry.registry import list_versions, model_name, promote
from anet.mlops.tracking.tracking import check_tracking_server, configure, redact_url


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``registry promote`` and ``registry show`` to the ``anet`` parser."""
    datasets = typing.get_args(DatasetName)
    registry = sub.add_parser("registry", help="show registered models, promote or roll back the champion",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = registry.add_subparsers(dest="registry_command", required=True, metavar="{promote,show}")

    promote = actions.add_parser("promote", help="make a version the champion (promotion or rollback)")
    promote.add_argument("--dataset", required=True, choices=datasets)
    promote.add_argument("--version", required=True, help="model version number, e.g. 3")
    promote.add_argument("--reason", default="", help="why (stored as tag promotion.reason)")
    promote.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or local sqlite")
    promote.set_defaults(func=run_promote)

    show = actions.add_parser("show", help="list versions with primary metric, decision and aliases")
    show.add_argument("--dataset", required=True, choices=datasets)
    show.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or local sqlite")
    show.set_defaults(func=run_show)


def _connect(tracking_uri: str | None) -> str:

    uri = configure(tracking_uri)
    check_tracking_server(uri)
    return uri


def run_promote(args: argparse.Namespace) -> int:
    """``registry promote``: move alias champion to ``--version``."""

    _connect(args.tracking_uri)
    decision = promote(args.dataset, args.version, reason=args.reason)
    was = f"v{decision.champion_version}" if decision.champion_version else "none"
    print(f"{model_name(args.dataset)}: champion -> v{decision.version} (was {was})"
          + (f"; reason: {args.reason}" if args.reason else ""))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """``registry show``: one line per version."""

    uri = _connect(args.tracking_uri)
    versions = list_versions(args.dataset)
    print(f"{model_name(args.dataset)} at {redact_url(uri)}: {len(versions)} version(s)")
    header = ("version", "primary metric", "value", "decision", "aliases", "created (UTC)", "run")
    rows = [header] + [
        (v.version, v.primary_metric or "-", "-" if v.primary_value is None else f"{v.primary_value:.4f}",
         v.decision or "-", ",".join(v.aliases) or "-", v.created, v.run_id or "-")
        for v in versions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
