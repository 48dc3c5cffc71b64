"""``anet train``: prepare the configured dataset, train stage one and/or stage two, print the checkpoints.

Examples::

    anet train --config smoke
    anet train --config synthetic stage_one.epochs=4 --out runs/try4
    anet train stage_one.epochs=4 --config synthetic --out runs/try4 stage_two.epochs=2   # any order
    anet train --config synthetic --stage two --init-from runs/try4/stage_one/final.pt --out runs/try4
    torchrun --nproc_per_node 2 -m anet.cli train --config synthetic      # DDP, one process per device

Rerunning the same command resumes from ``<out>/<stage>/last.pt``; ``--no-resume`` starts over.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from anet.config import load_config
from anet.errors import UserError
from anet.evaluation.in_training import make_eval_fn
from anet.mlops.storage.pretrained import pretrained_tags, resolve_model_weights
from anet.steps.preflight import check_run_paths
from anet.steps.prepare import prepare_from_config
from anet.train.callbacks import JsonlLogCallback
from anet.train.runtime import shutdown_distributed
from anet.train.stage import run_stage, stage_cfg


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the top-level sub-parsers."""
    train = sub.add_parser("train", help="train stage one and/or stage two",
                           description="Train AttributeNet: stage one (L), then stage two (L' with the "
                           "Amelioration Constraint) from stage one's weights.")
    train.add_argument("--config", default="synthetic", help="config profile name or YAML path")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. stage_one.epochs=3")
    train.add_argument("--stage", choices=("one", "two", "both"), default="both")
    train.add_argument("--out", type=Path, default=None, help="output folder (default runs/<config name>)")
    train.add_argument("--init-from", type=Path, default=None,
                       help="checkpoint to start from (stage two: stage one's final.pt)")
    train.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt and start over")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=train_command)
    train.__class__ = _OverridesAnywhere  # add_parser offers no parser class per sub-command


class _OverridesAnywhere(argparse.ArgumentParser):
    """``key=value`` overrides before, between and after the options (``anet train a=1 --out x b=2``).

    argparse fills a ``nargs="*"`` positional from its first run of positionals only and calls every
    later one unrecognised; its intermixed parsing takes them all. The sub-command parser is asked
    through ``parse_known_args``, which the intermixed parse itself calls: hence the guard.
    """

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 (argparse's signature)
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def train_command(args: argparse.Namespace) -> int:
    """Run the requested stage(s); each writes ``<out>/<stage>/{last,final}.pt`` and ``<out>/log.jsonl``."""
    cfg = load_config(args.config, list(args.overrides))
    out = args.out or Path("runs") / cfg.name
    check_run_paths(cfg, outputs={"--out": out})  # else an unwritable --out fails after the first epoch
    stages = {"one": ["stage_one"], "two": ["stage_two"], "both": ["stage_one", "stage_two"]}[args.stage]
    init_from = args.init_from
    if args.stage == "two" and init_from is None:
        default = out / "stage_one" / "final.pt"
        if not default.is_file():
            raise UserError(f"--stage two needs --init-from (a stage-one final.pt); {default} does not exist")
        init_from = default
    weights = resolve_model_weights(cfg.model) if init_from is None else None
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        prepared = prepare_from_config(cfg, progress=not args.no_progress)
        for name in stages:
            eval_fn = make_eval_fn(cfg, prepared) if stage_cfg(cfg, name).eval_every else None
            result = run_stage(cfg, prepared.cache_dir, name, out / name, init_from=init_from,
                               callbacks=[JsonlLogCallback(out / "log.jsonl")], eval_fn=eval_fn,
                               resume=not args.no_resume, progress=not args.no_progress,
                               pretrained=weights.path if weights else None,
                               provenance=pretrained_tags(weights) if weights else None)
            if is_main:
                print(f"{name}: {result.epochs_run} epochs, checkpoint {result.checkpoint}"
                      + (f" (stopped: {result.stopped})" if result.stopped else ""))
            init_from = result.checkpoint
            if result.stopped:
                break
    finally:
        shutdown_distributed()
    return 0
