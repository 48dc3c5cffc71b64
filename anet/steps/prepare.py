"""The prepare step: resolve the config, make the dataset available, build the prepared cache.

Synthetic data is generated; a real dataset is read from ``data.root`` after a granular ``dvc pull``
when it is absent there (failing fast, with the import command, when no DVC remote provides it).
The step writes the Dataset artifact's descriptor (``descriptor.json``) naming the cache directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from anet.config import ExperimentConfig
from anet.errors import UserError
from anet.io import atomic_write_text
from anet.steps.common import DESCRIPTOR, _progress, _reported, _step_run, resolve_config


def import_hint(dataset: str) -> str:
    """The one command that makes a dataset available."""
    return f"anet data import {dataset} <path-or-s3-uri>"


def dvc_repo_dir(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` (or the cwd) holding ``.dvc/``."""
    for base in (start.resolve(), Path.cwd().resolve()):
        for candidate in (base, *base.parents):
            if (candidate / ".dvc").is_dir():
                return candidate
    return None


def dvc_remote(repo: Path | None) -> str | None:
    """Name of the default DVC remote of ``repo`` (None when there is no repo or no remote)."""
    if repo is None:
        return None
    done = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=repo,
                          capture_output=True, text=True, check=False)
    name = done.stdout.strip()
    return name if done.returncode == 0 and name else None


def check_dataset_available(cfg: ExperimentConfig) -> str:
    """Fail fast (before any work) when a real dataset is absent and cannot be pulled.

    Returns ``"present"``, ``"generate"`` (synthetic) or ``"pull"`` (the DVC remote has it).
    """
    if cfg.data.dataset == "synthetic":
        return "generate"
    root = Path(cfg.data.root)
    if root.is_dir() and any(root.iterdir()):
        return "present"
    repo = dvc_repo_dir(root.parent if root.parent.exists() else Path.cwd())
    hint = f"import it once with `{import_hint(cfg.data.dataset)}`"
    if repo is None or not (repo / "data.dvc").is_file() or not dvc_remote(repo):
        raise UserError(f"{root}: dataset {cfg.data.dataset} is not there and no DVC remote provides it; {hint}")
    if _dvc_tracks(repo, root) is False:
        raise UserError(f"{root}: dataset {cfg.data.dataset} is not there and data.dvc does not track it; {hint}")
    return "pull"


def _dvc_tracks(repo: Path, root: Path) -> bool | None:
    """Whether ``root`` is part of the DVC-tracked tree (None: cannot tell, e.g. remote unreachable)."""
    try:
        from dvc.api import DVCFileSystem

        return bool(DVCFileSystem(str(repo)).exists(Path(os.path.relpath(root.resolve(), repo)).as_posix()))
    except Exception:  # an unreachable remote is reported by the pull itself, with DVC's reason
        return None


def _dvc_pull(root: Path) -> None:
    """``dvc pull`` the dataset directory (granular: only ``root``, not every dataset)."""
    repo = dvc_repo_dir(root.parent if root.parent.exists() else Path.cwd())
    if repo is None or not dvc_remote(repo):
        return
    print(f"pulling {root} from the DVC remote ...", flush=True)
    target = os.path.relpath(root.resolve(), repo)
    done = subprocess.run([sys.executable, "-m", "dvc", "pull", target], cwd=repo, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "failed")
        raise UserError(f"dvc pull {target} (in {repo}): {reason.strip()}; check the remote and credentials "
                        f"(AWS_*), or import the data with `anet data import ...`")


def _manifest_for(cfg: ExperimentConfig) -> Any:
    """Generate (synthetic) or read the dataset, pulling it with DVC first when absent."""
    root = Path(cfg.data.root)
    if cfg.data.dataset == "synthetic":
        from anet.data.synthetic import generate_synthetic

        return generate_synthetic(cfg.data.synthetic, root)
    from anet.data.readers import read_dataset

    if not (root.is_dir() and any(root.iterdir())):
        _dvc_pull(root)
    if not (root.is_dir() and any(root.iterdir())):
        raise UserError(f"{root}: dataset {cfg.data.dataset} is not there; import it once with "
                        f"`{import_hint(cfg.data.dataset)}`")
    return read_dataset(cfg.data.dataset, root)


@_reported("prepare")
def prepare_data(dataset: str, profile: str, overrides_json: str, data_root: str, cache_root: str,
                 out_dir: str, parent_run_id: str = "") -> dict[str, Any]:
    """Resolve the config, get the dataset, build or reuse the prepared cache, write the descriptor.

    The descriptor (``out_dir/descriptor.json``) names the cache directory; the cache stays where it
    is (keyed by fingerprint under ``cache_root``), so a rerun after a failure reuses it.
    """
    from anet.data.cache import prepare_dataset

    cfg = resolve_config(dataset, profile, overrides_json, data_root, cache_root)
    check_dataset_available(cfg)
    with _step_run(parent_run_id, "prepare") as tracker:
        manifest = _manifest_for(cfg)
        prepared = prepare_dataset(manifest, Path(cfg.data.cache_dir).resolve(), tuple(cfg.data.image_size),
                                   cfg.data.quarantine_max_fraction, progress=_progress())
        frame = prepared.manifest.frame
        descriptor = {
            "dataset": cfg.data.dataset, "cache_dir": str(Path(prepared.cache_dir).resolve()),
            "fingerprint": prepared.fingerprint, "vocab": prepared.manifest.vocab,
            "num_train_ids": int(prepared.manifest.num_train_ids()), "images": int(len(frame)),
            "quarantined": int(len(prepared.quarantine)), "config_digest": cfg.digest(),
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / DESCRIPTOR, json.dumps(descriptor, indent=2, sort_keys=True))
        splits = frame.groupby(["split", "test_set"]).size().to_dict()
        tracker.log_prepare(descriptor, {f"{s}/{t}" if t else s: int(n) for (s, t), n in splits.items()})
    report = _prepare_report(descriptor, splits)
    metadata = {k: descriptor[k] for k in ("dataset", "cache_dir", "fingerprint", "images", "quarantined")}
    return {"config_json": cfg.to_json(), "descriptor": str(Path(out_dir) / DESCRIPTOR), "metadata": metadata,
            "report_md": report}


def _prepare_report(descriptor: dict[str, Any], splits: dict[tuple[str, str], int]) -> str:
    rows = "\n".join(f"| {s} | {t or '-'} | {n} |" for (s, t), n in sorted(splits.items()))
    return (f"# Prepared dataset `{descriptor['dataset']}`\n\n"
            f"- cache: `{descriptor['cache_dir']}`\n- fingerprint: `{descriptor['fingerprint']}`\n"
            f"- training identities: {descriptor['num_train_ids']}\n- quarantined images: "
            f"{descriptor['quarantined']}\n\n| split | test set | rows |\n|---|---|---|\n{rows}\n")
