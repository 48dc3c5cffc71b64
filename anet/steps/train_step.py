"""The train step: one training stage from a prepared dataset, optionally distributed.

A pruned previous stage makes the stage skip (and stay marked pruned). When ``ANET_NPROC`` > 1 the
step re-launches itself under ``torchrun --nproc_per_node=ANET_NPROC`` (``python -m anet.steps train
ARGS.json``, handled by :func:`main`); rank 0 writes the result file the parent process returns.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from anet.config import ExperimentConfig
from anet.contract import CHECKPOINT_ROOT_ENV, EXPECT_GPUS_ENV, NNODES_ENV, NPROC_ENV
from anet.data.cache import PreparedDataset
from anet.errors import UserError
from anet.evaluation.in_training import make_eval_fn
from anet.io import atomic_path, atomic_write_text
from anet.mlops.storage.pretrained import PretrainedWeights, pretrained_tags, resolve_model_weights
from anet.mlops.sweeps.optuna_bridge import pruning_callback_from_json
from anet.mlops.tracking.step_tracking import step_run
from anet.steps.common import (
    PRUNED_MARKER,
    RESULT_FILE,
    checkpoint_in,
    is_pruned,
    read_descriptor,
    reported_step,
)
from anet.train.callbacks import Callback, EpochLogCallback
from anet.train.fit import check_divides
from anet.train.stage import run_stage

log = logging.getLogger(__name__)


@reported_step("train")
def train(config_json: str, dataset_descriptor: str, stage_name: str, out_dir: str, *,
          init_from: str | None = None, parent_run_id: str | None = None,
          trial_json: str | None = None) -> dict[str, Any]:
    """Run one training stage; returns ``{"checkpoint", "pruned", "epochs_run", "stopped"}``.

    ``init_from`` is stage one's output (None for stage one). A pruned stage one makes stage two skip
    (and stay marked pruned). ``trial_json`` attaches the Optuna pruning callback.
    """
    args = dict(config_json=config_json, dataset_descriptor=dataset_descriptor, stage_name=stage_name,
                out_dir=out_dir, init_from=init_from, parent_run_id=parent_run_id, trial_json=trial_json)
    cfg = ExperimentConfig.from_json(config_json)
    check_gpus(int(os.environ.get(EXPECT_GPUS_ENV, "0") or 0))
    check_world(cfg)  # before any work: no download, no torchrun, no data read
    if _nodes() > 1 and "LOCAL_RANK" not in os.environ and not (init_from and is_pruned(init_from)):
        return _train_on_nodes(args)
    # resolved before torchrun starts, so every rank finds the weights already in the cache
    weights = resolve_model_weights(cfg.model) if not init_from else None
    nproc = int(os.environ.get(NPROC_ENV, "1") or 1)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _train_distributed(nproc, args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if init_from and is_pruned(init_from):
        log.info("%s: skipped, the previous stage was pruned", stage_name)
        return _finish_train(out, {"checkpoint": "", "pruned": True, "epochs_run": 0, "stopped": "pruned"})
    descriptor = read_descriptor(dataset_descriptor)
    rank0 = os.environ.get("RANK", "0") == "0"
    with step_run(parent_run_id if rank0 else None, f"train_{stage_name}") as tracker:
        tracker.log_params(pretrained_tags(weights))
        callbacks: list[Callback] = [EpochLogCallback(), *tracker.callbacks()]
        if trial_json and rank0:
            callbacks.append(pruning_callback_from_json(trial_json, metric=cfg.registry.primary_metric))
        work = stage_dir(out, stage_name, parent_run_id)
        log.info("%s on %s; checkpoints in %s", stage_name, describe_device(cfg), work)
        result = _run_stage(cfg, descriptor, stage_name, work, init_from, callbacks, weights,
                            with_eval=bool(trial_json))
    checkpoint = _publish(result.checkpoint, out) if rank0 else result.checkpoint
    summary = {"checkpoint": str(checkpoint), "pruned": result.stopped == "pruned",
               "epochs_run": int(result.epochs_run), "stopped": result.stopped}
    return _finish_train(out, summary) if rank0 else summary


def _run_stage(cfg: ExperimentConfig, descriptor: dict[str, Any], stage_name: str, out: Path,
               init_from: str | None, callbacks: list[Callback], weights: PretrainedWeights | None,
               with_eval: bool) -> Any:
    """Call the stage runner; ``with_eval`` (sweep trials) adds the in-training evaluation the pruner reads."""
    init = checkpoint_in(init_from) if init_from else None
    eval_fn = make_eval_fn(cfg, PreparedDataset.open(descriptor["cache_dir"])) if with_eval else None
    # progress=False: step logs are pipes (a tqdm bar stays silent there); EpochLogCallback reports
    return run_stage(cfg, descriptor["cache_dir"], stage_name, out, init_from=init, callbacks=callbacks,
                     eval_fn=eval_fn, progress=False, pretrained=weights.path if weights else None,
                     provenance=pretrained_tags(weights) if weights else None)


def check_gpus(expected: int) -> None:
    """A task that requested GPUs must see them: never a silent CPU run on a GPU node."""
    visible = torch.cuda.device_count()
    if expected and visible < expected:
        raise UserError(f"this train task requested {expected} GPU(s) but torch sees {visible} (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, torch {torch.__version__}); check the "
                        "node's NVIDIA device plugin and that the image has a CUDA build of torch (TORCH_SPEC)")


def _nodes() -> int:
    return int(os.environ.get(NNODES_ENV, "1") or 1)


def _train_on_nodes(args: dict[str, Any]) -> dict[str, Any]:
    """``ANET_NNODES`` > 1: this pod launches a Kubeflow Trainer TrainJob and publishes rank 0's final.pt."""
    from anet.steps.trainjob_run import train_on_nodes  # lazy: it imports this module; kubernetes client

    summary = train_on_nodes(args, _nodes(), int(os.environ.get(NPROC_ENV, "1") or 1))
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if summary.get("checkpoint"):
        summary = {**summary, "checkpoint": str(_publish(Path(summary["checkpoint"]), out))}
    return _finish_train(out, summary)


def check_world(cfg: ExperimentConfig) -> None:
    """The global batch must split over ``ANET_NNODES`` x ``ANET_NPROC`` ranks (one line otherwise)."""
    nnodes, nproc = (int(os.environ.get(name, "1") or 1) for name in (NNODES_ENV, NPROC_ENV))
    check_divides(cfg.data.p_ids, cfg.data.k_imgs, nnodes * nproc, f"{nnodes} node(s) x {nproc} process(es)")


def describe_device(cfg: ExperimentConfig) -> str:
    """The device this process trains on, for the step log."""
    if cfg.runtime.device != "cpu" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count} x {torch.cuda.get_device_name(0)} ({cfg.runtime.precision})"
    return f"CPU, {torch.get_num_threads()} threads ({cfg.runtime.precision})"


def checkpoint_root() -> Path | None:
    """The PVC folder of retry checkpoints (``$ANET_CHECKPOINT_ROOT``, which only the DAG compiled for a
    cluster sets); None otherwise (kfp.local, the CLI): checkpoints stay in the step's own output."""
    root = os.environ.get(CHECKPOINT_ROOT_ENV)
    return Path(root) if root else None


def stage_dir(out: Path, stage_name: str, parent_run_id: str | None) -> Path:
    """Where the stage writes last.pt/final.pt: on a cluster ``$ANET_CHECKPOINT_ROOT/<run>/<stage>`` on
    the PVC, so a retried task (a new pod, same pipeline run) resumes instead of starting over; in the
    step's own output folder otherwise."""
    root = checkpoint_root()
    return root / parent_run_id / stage_name if root and parent_run_id else out


def remove_run_checkpoints(parent_run_id: str | None) -> None:
    """Delete one pipeline run's retry checkpoints from the PVC (the evaluate step calls this once the
    trained model is evaluated: its final weights live on as the train step's output artifact)."""
    root = checkpoint_root()
    folder = root / parent_run_id if root and parent_run_id else None
    if folder is not None and folder.is_dir() and folder.resolve().parent == root.resolve():  # never ".."
        shutil.rmtree(folder)
        log.info("removed this run's retry checkpoints %s", folder)


def _publish(checkpoint: Path, out: Path) -> Path:
    """The final checkpoint inside the step's output artifact (copied from the PVC when it lives there)."""
    target = out / checkpoint.name
    if checkpoint.resolve() != target.resolve() and checkpoint.is_file():
        with atomic_path(target) as tmp:
            shutil.copyfile(checkpoint, tmp)
    if target.is_file() and checkpoint.parent.resolve() == out.resolve():
        # trained in the output folder itself (no PVC): its last.pt, a copy of final.pt kept for resuming,
        # has no reader left once the step is done (a rerun is a new pipeline run with new outputs)
        (out / "last.pt").unlink(missing_ok=True)
    return target if target.is_file() else checkpoint


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
    log.info("launching: %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not (out / RESULT_FILE).is_file():
        raise UserError(f"torchrun with {nproc} processes failed (exit {done.returncode}); see the rank logs above")
    return json.loads((out / RESULT_FILE).read_text())


def main(argv: list[str] | None = None) -> int:
    """``python -m anet.steps train ARGS.json``: the torchrun entry point of a distributed train step."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "train":
        sys.stderr.write("usage: python -m anet.steps train ARGS.json\n")
        return 2
    kwargs = json.loads(Path(argv[1]).read_text())
    train(**kwargs)
    return 0
