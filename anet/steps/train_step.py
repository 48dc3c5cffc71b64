"""The train step: one training stage from a prepared dataset, optionally distributed.

A pruned previous stage makes the stage skip (and stay marked pruned). When ``ANET_NPROC`` > 1 the
step re-launches itself under ``torchrun --nproc_per_node=ANET_NPROC`` (``python -m anet.steps train
ARGS.json``, handled by :func:`main`); rank 0 writes the result file the parent process returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig
from anet.errors import UserError
from anet.io import atomic_write_text
from anet.steps.common import (
    PRUNED_MARKER,
    RESULT_FILE,
    _config,
    _reported,
    _step_run,
    checkpoint_in,
    is_pruned,
    read_descriptor,
)


def _epoch_printer() -> Any:
    """A callback printing one line per epoch (step logs are pipes: tqdm bars stay silent there)."""
    from anet.callbacks import Callback

    class EpochPrinter(Callback):
        def on_stage_start(self, stage_name: str, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
            self.epochs, self.started = epochs, time.monotonic()
            print(f"{stage_name}: {epochs} epochs x {steps_per_epoch} steps (starting at epoch {start_epoch})",
                  flush=True)

        def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in terms.items())
            print(f"{stage_name} epoch {epoch}/{self.epochs} [{time.monotonic() - self.started:.0f} s] {shown}",
                  flush=True)

        def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
            print(f"{stage_name} epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                  flush=True)
            return False

    return EpochPrinter()


@_reported("train")
def train(config_json: str, dataset_descriptor: str, stage_name: str, init_from: str, out_dir: str,
          mlflow_parent_run_id: str, trial_json: str) -> dict[str, Any]:
    """Run one training stage; returns ``{"checkpoint", "pruned", "epochs_run", "stopped"}``.

    ``init_from`` is stage one's output ("" for stage one). A pruned stage one makes stage two skip
    (and stay marked pruned). ``trial_json`` != "" attaches the Optuna pruning callback.
    """
    args = dict(config_json=config_json, dataset_descriptor=dataset_descriptor, stage_name=stage_name,
                init_from=init_from, out_dir=out_dir, mlflow_parent_run_id=mlflow_parent_run_id,
                trial_json=trial_json)
    nproc = int(os.environ.get("ANET_NPROC", "1") or 1)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _train_distributed(nproc, args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if init_from and is_pruned(init_from):
        print(f"{stage_name}: skipped, the previous stage was pruned", flush=True)
        return _finish_train(out, {"checkpoint": "", "pruned": True, "epochs_run": 0, "stopped": "pruned"})
    cfg = _config(config_json)
    descriptor = read_descriptor(dataset_descriptor)
    rank0 = os.environ.get("RANK", "0") == "0"
    with _step_run(mlflow_parent_run_id if rank0 else "", f"train_{stage_name}") as tracker:
        callbacks = [_epoch_printer(), *tracker.callbacks()]
        if trial_json and rank0:
            from anet.mlops.optuna_bridge import pruning_callback_from_json

            callbacks.append(pruning_callback_from_json(trial_json, metric=cfg.registry.primary_metric))
        result = _run_stage(cfg, descriptor, stage_name, out, init_from, callbacks, with_eval=bool(trial_json))
    summary = {"checkpoint": str(result.checkpoint), "pruned": result.stopped == "pruned",
               "epochs_run": int(result.epochs_run), "stopped": result.stopped}
    return _finish_train(out, summary) if rank0 else summary


def _run_stage(cfg: ExperimentConfig, descriptor: dict[str, Any], stage_name: str, out: Path, init_from: str,
               callbacks: list[Any], with_eval: bool) -> Any:
    """Call the engine's plain entry point (model, data and criterion are built there).

    ``with_eval`` (sweep trials) adds the in-training evaluation every ``<stage>.eval_every`` epochs
    that the pruning callback reads.
    """
    from anet.training import make_eval_fn, run_stage

    init = checkpoint_in(init_from) if init_from else None
    eval_fn = None
    if with_eval:
        from anet.data.cache import PreparedDataset

        eval_fn = make_eval_fn(cfg, PreparedDataset.open(descriptor["cache_dir"]))
    # progress=False: step logs are pipes (a tqdm bar stays silent there); the epoch printer reports
    return run_stage(cfg, descriptor["cache_dir"], stage_name, out, init_from=init, callbacks=callbacks,
                     eval_fn=eval_fn, progress=False)


def _finish_train(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    if summary["pruned"]:
        atomic_write_text(out / PRUNED_MARKER, "pruned by the Optuna pruner\n")
    atomic_write_text(out / RESULT_FILE, json.dumps(summary, sort_keys=True))
    return summary


def _train_distributed(nproc: int, args: dict[str, Any]) -> dict[str, Any]:
    """Re-launch this step under ``torchrun --nproc_per_node=nproc``; rank 0 writes the result."""
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    args_file = out / "train_args.json"
    atomic_write_text(args_file, json.dumps(args))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "anet.steps", "train", str(args_file)]
    print("launching:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not (out / RESULT_FILE).is_file():
        raise UserError(f"torchrun with {nproc} processes failed (exit {done.returncode}); see the rank logs above")
    return json.loads((out / RESULT_FILE).read_text())


def main(argv: list[str] | None = None) -> int:
    """``python -m anet.steps train ARGS.json``: the torchrun entry point of a distributed train step."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python -m anet.steps train ARGS.json", file=sys.stderr)
        return 2
    kwargs = json.loads(Path(argv[1]).read_text())
    train(**kwargs)
    return 0
