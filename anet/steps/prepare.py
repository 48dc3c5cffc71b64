"""The prepare step: resolve the config once, make the dataset available, build the prepared cache.

Synthetic data is generated; a real dataset is read from ``data.root`` after a granular ``dvc pull``
when it is absent there (failing fast, with the import command, when no DVC remote provides it).
The step writes the Dataset artifact's descriptor (``descriptor.json``) naming the cache directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig, RunSettings, resolve_config
from anet.data.cache import PreparedDataset, prepare_dataset
from anet.data.manifest import Manifest
from anet.data.readers import read_dataset
from anet.data.validation import hold_out_validation
from anet.errors import UserError
from anet.io import atomic_write_text
from anet.mlops.storage.dvc import default_remote, dvc_pull, dvc_root, dvc_tracks, verified_data_hash
from anet.mlops.storage.pretrained import resolve_model_weights
from anet.mlops.tracking.step_tracking import step_run
from anet.steps.common import DESCRIPTOR, progress_enabled, reported_step
from anet.steps.pipeline_run import OPENED_BY, start_pipeline_run
from anet.steps.preflight import check_run_paths
from anet.synthetic.generator import generate_synthetic
from anet.train.runtime import main_first, setup_runtime


def import_hint(dataset: str) -> str:
    """The one command that makes a dataset available."""
    return f"anet data import {dataset} <path-or-s3-uri>"


def check_dataset_available(cfg: ExperimentConfig) -> str:
    """Fail fast (before any work) when a real dataset is absent and cannot be pulled.

    Returns ``"present"``, ``"generate"`` (synthetic) or ``"pull"`` (the DVC remote has it).
    """
    if cfg.data.dataset == "synthetic":
        return "generate"
    root = Path(cfg.data.root)
    if root.is_dir() and any(root.iterdir()):
        return "present"
    repo = dvc_root(root.parent if root.parent.exists() else Path.cwd(), or_cwd=True)
    hint = f"import it once with `{import_hint(cfg.data.dataset)}`"
    if repo is None or not (repo / "data.dvc").is_file() or not default_remote(repo):
        raise UserError(f"{root}: dataset {cfg.data.dataset} is not there and no DVC remote provides it; {hint}")
    if dvc_tracks(repo, root) is False:
        raise UserError(f"{root}: dataset {cfg.data.dataset} is not there and data.dvc does not track it; {hint}")
    return "pull"


def read_manifest(cfg: ExperimentConfig) -> Manifest:
    """The dataset named by ``cfg.data`` with its validation split (``data.val_ids`` held-out identities)."""
    return hold_out_validation(_dataset_manifest(cfg), cfg.data.val_ids, cfg.data.val_seed)


def _dataset_manifest(cfg: ExperimentConfig) -> Manifest:
    """Generate (synthetic) or read the dataset, pulling it with DVC when absent."""
    root = Path(cfg.data.root)
    if cfg.data.dataset == "synthetic":
        return generate_synthetic(cfg.data.synthetic, root)
    if not (root.is_dir() and any(root.iterdir())):
        dvc_pull(root)
    if not (root.is_dir() and any(root.iterdir())):
        raise UserError(f"{root}: dataset {cfg.data.dataset} is not there; import it once with "
                        f"`{import_hint(cfg.data.dataset)}`")
    return read_dataset(cfg.data.dataset, root)


def prepare_from_config(cfg: ExperimentConfig, progress: bool = True) -> PreparedDataset:
    """The dataset of ``cfg`` as a prepared cache (reused when unchanged); ``anet train`` uses it too.

    Under DDP rank 0 prepares first and the other ranks then find the finished cache.
    """
    ctx = setup_runtime(cfg.runtime)
    with main_first(ctx):
        return prepare_dataset(read_manifest(cfg), Path(cfg.data.cache_dir).resolve(), tuple(cfg.data.image_size),
                               cfg.data.quarantine_max_fraction, progress=progress and ctx.is_main,
                               min_image_size=cfg.data.min_image_size)


def step_config(config_json: str | None, profile: str, dataset: str | None, overrides: Mapping[str, Any] | None,
                settings: RunSettings | None, data_root: str | None, cache_root: str | None) -> ExperimentConfig:
    """The run's config: the JSON a driver resolved, or the profile + typed parameters (a UI run).

    With ``config_json``, the config is that JSON, and nothing beside it may change it: ``overrides``
    must be empty and every run setting unset (a driver resolves them into the JSON).
    """
    if not config_json:
        return resolve_config(profile, overrides, settings, dataset=dataset, data_root=data_root,
                              cache_root=cache_root)
    cfg = ExperimentConfig.from_json(config_json)
    if overrides:
        raise UserError("prepare: config_json is already resolved; pass overrides to the driver instead")
    given = settings.model_dump(exclude_none=True) if settings else {}
    if given:
        raise UserError(f"prepare: config_json is already resolved; leave the run settings unset "
                        f"({', '.join(f'{k}={v!r}' for k, v in given.items())}) or leave config_json empty")
    return cfg


@reported_step("prepare")
def prepare_data(out_dir: str, *, config_json: str | None = None, profile: str = "synthetic",
                 dataset: str | None = None, overrides: Mapping[str, Any] | None = None,
                 settings: RunSettings | None = None, data_root: str | None = None, cache_root: str | None = None,
                 parent_run_id: str | None = None, open_parent_run: bool = False) -> dict[str, Any]:
    """Resolve the config once, get the dataset, build or reuse the prepared cache, write the descriptor.

    ``open_parent_run`` without a ``parent_run_id`` (a run started from the Kubeflow UI or a schedule)
    opens the pipeline's parent MLflow run here; the register step (or a failing step) closes it.
    Returns ``{"config_json", "parent_run_id", "descriptor", "metadata", "report_md"}``.
    """
    cfg = step_config(config_json, profile, dataset, overrides, settings, data_root, cache_root)
    check_run_paths(cfg, outputs={"the prepare step's output": out_dir})
    check_dataset_available(cfg)
    if open_parent_run and not parent_run_id:
        parent_run_id = start_pipeline_run(cfg.data.dataset, profile, cfg.to_json(), {OPENED_BY: "pipeline"},
                                           driver=False)
    resolve_model_weights(cfg.model)  # fail fast (offline, bad hash) and warm the weight cache
    with step_run(parent_run_id, "prepare") as tracker:
        prepared = prepare_from_config(cfg, progress=progress_enabled())
        frame = prepared.manifest.frame
        descriptor = {
            "dataset": cfg.data.dataset, "cache_dir": str(Path(prepared.cache_dir).resolve()),
            "fingerprint": prepared.fingerprint, "vocab": prepared.manifest.vocab,
            "num_train_ids": int(prepared.manifest.num_train_ids()), "images": int(len(frame)),
            "quarantined": int(len(prepared.quarantine)), "config_digest": cfg.digest(),
            "dvc_data_hash": verified_data_hash(Path(cfg.data.root)),
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / DESCRIPTOR, json.dumps(descriptor, indent=2, sort_keys=True))
        splits = frame.groupby(["split", "test_set"]).size().to_dict()
        tracker.log_prepare(descriptor, {f"{s}/{t}" if t else s: int(n) for (s, t), n in splits.items()})
    metadata = {k: descriptor[k] for k in ("dataset", "cache_dir", "fingerprint", "images", "quarantined")}
    return {"config_json": cfg.to_json(), "parent_run_id": parent_run_id or "",
            "descriptor": str(Path(out_dir) / DESCRIPTOR), "metadata": metadata,
            "report_md": _prepare_report(descriptor, splits)}


def _prepare_report(descriptor: dict[str, Any], splits: dict[tuple[str, str], int]) -> str:
    rows = "\n".join(f"| {s} | {t or '-'} | {n} |" for (s, t), n in sorted(splits.items()))
    return (f"# Prepared dataset `{descriptor['dataset']}`\n\n"
            f"- cache: `{descriptor['cache_dir']}`\n- fingerprint: `{descriptor['fingerprint']}`\n"
            f"- training identities: {descriptor['num_train_ids']}\n- quarantined images: "
            f"{descriptor['quarantined']}\n\n| split | test set | rows |\n|---|---|---|\n{rows}\n")
