"""One plain function per pipeline step: paths and strings in, a small JSON-able dict out.

The kfp components in ``components/`` only map artifacts onto these functions, so every step can be
run and tested without kfp::

    from anet import steps
    cfg_json = steps.resolve_config("synthetic", "smoke", []).to_json()
    prep = steps.prepare_data("synthetic", "smoke", "[]", "", "", "out/prepared")
    one = steps.train(prep["config_json"], "out/prepared", "stage_one", "", "out/one", "", "")
    two = steps.train(prep["config_json"], "out/prepared", "stage_two", "out/one", "out/two", "", "")
    ev = steps.evaluate(prep["config_json"], "out/prepared", "out/two", "out/eval", "")
    reg = steps.register(prep["config_json"], "synthetic", json.dumps(ev), "out/two", "")

MLflow: the runner opens the parent run (:func:`start_pipeline_run`) before the DAG starts and
passes its id down; each step opens a nested run under it (kfp local steps are separate processes,
so nesting by id is the only way). An empty parent id means "no tracking" (unit tests).

Distributed training: when ``ANET_NPROC`` > 1 (set by the DAG on GPU nodes) :func:`train` re-launches
itself under ``torchrun --nproc_per_node=ANET_NPROC`` (``python -m anet.steps train ARGS.json``);
rank 0 writes the result the parent process returns.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from anet.config import ConfigError, ExperimentConfig, load_config
from anet.errors import UserError
from anet.io import atomic_write_text

DESCRIPTOR = "descriptor.json"
PRUNED_MARKER = "PRUNED"
RESULT_FILE = "result.json"
F = TypeVar("F", bound=Callable[..., Any])


def _reported(step: str) -> Callable[[F], F]:
    """Print a failing step's reason as one ``error: <step>: ...`` line (the runner shows it), re-raise."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (UserError, ConfigError) as exc:
                print(f"error: {step}: {exc}", flush=True)
                raise
            except Exception as exc:
                print(f"error: {step}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      flush=True)
                raise

        return inner  # type: ignore[return-value]

    return wrap


# --------------------------------------------------------------------------- config
def pipeline_overrides(overrides_json: str, lambda_a: float = -1.0, lambda_g: float = -1.0,
                       lambda_van: float = -1.0, epochs: int = 0, seed: int = -1,
                       promotion_margin: float = -1.0) -> str:
    """Merge the DAG's typed parameters into the JSON list of overrides (negative/0 = profile value).

    Example:
        >>> pipeline_overrides('["stage_two.epochs=0"]', lambda_a=0.5)
        '["stage_two.epochs=0", "loss.lambda_a=0.5"]'
    """
    try:
        items = json.loads(overrides_json or "[]")
    except ValueError:
        raise UserError(f"overrides: not a JSON list of key=value strings: {overrides_json!r}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UserError(f"overrides: expected a JSON list of key=value strings, got {overrides_json!r}")
    for key, value in (("loss.lambda_a", lambda_a), ("loss.lambda_g", lambda_g), ("loss.lambda_van", lambda_van),
                       ("registry.promotion_margin", promotion_margin)):
        if value is not None and value >= 0:
            items.append(f"{key}={value!r}")
    if epochs and epochs > 0:
        items.append(f"stage_one.epochs={int(epochs)}")
    if seed is not None and seed >= 0:
        items.append(f"runtime.seed={int(seed)}")
    return json.dumps(items)


def resolve_config(dataset: str, profile: str, overrides: list[str] | str, data_root: str = "",
                   cache_root: str = "") -> ExperimentConfig:
    """Profile + overrides (+ the dataset name and the data/cache locations when given)."""
    items = json.loads(overrides) if isinstance(overrides, str) else list(overrides)
    base = load_config(profile, items)
    extra = []
    if dataset and dataset != base.data.dataset:
        extra += [f"data.dataset={dataset}", f"data.root=data/{dataset}"]
    if data_root:
        extra.append(f"data.root={data_root}")
    if cache_root:
        extra.append(f"data.cache_dir={cache_root}")
    return load_config(profile, items + extra) if extra else base


def _config(config_json: str) -> ExperimentConfig:
    return ExperimentConfig.from_json(config_json)


# --------------------------------------------------------------------------- data
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


def read_descriptor(dataset_descriptor: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Dataset artifact's descriptor (the artifact directory or the JSON file itself)."""
    path = Path(dataset_descriptor)
    path = path / DESCRIPTOR if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no dataset descriptor; run the prepare step first")
    return json.loads(path.read_text())


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


def _progress() -> bool:
    return os.environ.get("ANET_PROGRESS", "1") != "0"


def write_report(path: str, text: str) -> None:
    """Write a Markdown report artifact atomically."""
    atomic_write_text(path, text)


# --------------------------------------------------------------------------- tracking glue
class _Tracker:
    """What a step logs; every method is a no-op when the step runs without MLflow (no parent id)."""

    def __init__(self, run_id: str | None = None, parent_run_id: str | None = None):
        self.run_id, self.parent_run_id = run_id, parent_run_id

    def log_prepare(self, descriptor: dict[str, Any], counts: dict[str, int]) -> None:
        if not self.run_id:
            return
        from anet.mlops import tracking

        tracking.log_params(self.run_id, {"data.cache_dir": descriptor["cache_dir"],
                                          "data.fingerprint": descriptor["fingerprint"],
                                          "data.vocab": json.dumps(descriptor["vocab"])})
        tracking.log_metrics({"data/images": descriptor["images"], "data/quarantined": descriptor["quarantined"],
                              "data/train_ids": descriptor["num_train_ids"],
                              **{f"data/rows/{k}": v for k, v in counts.items()}}, run_id=self.run_id)
        tracking.log_lineage(self.run_id, descriptor["fingerprint"])
        tracking.log_lineage(str(self.parent_run_id), descriptor["fingerprint"])

    def tag_parent(self, tags: dict[str, Any]) -> None:
        if self.parent_run_id:
            from mlflow import MlflowClient

            for key, value in tags.items():
                MlflowClient().set_tag(self.parent_run_id, key, str(value))

    def callbacks(self) -> list[Any]:
        if not self.run_id:
            return []
        from anet.mlops.tracking import MlflowCallback

        return [MlflowCallback(self.run_id)]

    def log_eval(self, results: dict[str, dict[str, Any]], files: list[str]) -> dict[str, float]:
        flat = {f"eval/{s}/{m}": float(v) for s, ms in results.items() for m, v in ms.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.run_id:
            from anet.mlops import tracking

            tracking.log_metrics(flat, run_id=self.run_id)
            tracking.log_metrics(flat, run_id=str(self.parent_run_id))  # the run a user (and a sweep) reads
            if files:
                tracking.log_artifacts(files, "evaluation", run_id=self.run_id)
        return flat


@contextlib.contextmanager
def _step_run(parent_run_id: str, step: str) -> Iterator[_Tracker]:
    """A nested MLflow run for ``step`` under ``parent_run_id`` (no tracking when the id is empty)."""
    if not parent_run_id:
        yield _Tracker()
        return
    from anet.mlops import tracking

    tracking.configure(None)
    with tracking.start_step_run(parent_run_id, step) as run_id:
        yield _Tracker(run_id, parent_run_id)


def start_pipeline_run(dataset: str, profile: str, config_json: str, tags: dict[str, str] | None = None,
                       run_name: str | None = None) -> str:
    """Create the pipeline's parent MLflow run (experiment ``anet-<dataset>``); returns its id."""
    from anet.mlops import tracking

    tracking.configure(None)
    name = run_name or f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    return tracking.start_parent_run(dataset, name, {"anet.profile": profile, **(tags or {})}, config_json)


def finish_pipeline_run(run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
    """Close the parent run: ``status`` is succeeded | pruned | failed; the summary becomes tags."""
    from mlflow import MlflowClient

    from anet.mlops import tracking

    tracking.configure(None)
    client = MlflowClient()
    client.set_tag(run_id, "anet.outcome", status)
    for key in ("model_version", "champion", "error"):
        if summary and summary.get(key) not in (None, ""):
            client.set_tag(run_id, f"anet.{key}", str(summary[key])[:5000])
    tracking.end_run(run_id, "FAILED" if status == "failed" else "FINISHED")


# --------------------------------------------------------------------------- training
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


def is_pruned(model_dir: str | os.PathLike[str]) -> bool:
    """True when a train step's output (directory or checkpoint file) is marked pruned."""
    path = Path(model_dir) if model_dir else None
    if path is None:
        return False
    folder = path if path.is_dir() else path.parent
    return (folder / PRUNED_MARKER).is_file()


def checkpoint_in(model_dir: str | os.PathLike[str]) -> Path:
    """The final checkpoint inside a train step's output directory (or the file itself)."""
    path = Path(model_dir)
    if path.is_file():
        return path
    result = path / RESULT_FILE
    if result.is_file():
        ckpt = json.loads(result.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    for name in ("final.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: no checkpoint (final.pt) from a train step; run training first")


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


# --------------------------------------------------------------------------- evaluation + registration
@_reported("evaluate")
def evaluate(config_json: str, dataset_descriptor: str, checkpoint: str, out_dir: str,
             parent_run_id: str) -> dict[str, Any]:
    """Evaluate the final checkpoint on the dataset's protocol; skip cleanly when it was pruned.

    Returns ``{"status": "ok"|"pruned", "metrics": {"eval/<split>/<metric>": v}, "primary_metric",
    "primary_value", "files", "report_md"}``.
    """
    cfg = _config(config_json)
    primary = cfg.registry.primary_metric
    if is_pruned(checkpoint):
        return {"status": "pruned", "metrics": {}, "primary_metric": primary, "primary_value": None,
                "files": [], "report_md": "# Evaluation skipped\n\nThe trial was pruned during training.\n"}
    descriptor = read_descriptor(dataset_descriptor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _step_run(parent_run_id, "evaluate") as tracker:
        results, files = _evaluate_checkpoint(cfg, descriptor, checkpoint_in(checkpoint), out)
        flat = tracker.log_eval(results, files)
    if primary not in flat:
        raise UserError(f"registry.primary_metric {primary!r} was not produced by the evaluation "
                        f"(got {', '.join(sorted(flat)) or 'nothing'}); fix the profile")
    return {"status": "ok", "metrics": flat, "primary_metric": primary, "primary_value": flat[primary],
            "files": files, "report_md": _eval_report(results, primary, flat[primary])}


def _evaluate_checkpoint(cfg: ExperimentConfig, descriptor: dict[str, Any], ckpt: Path,
                         out: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({test_set: {metric: value}}, [report files])`` for the checkpoint on the dataset's protocol."""
    from anet.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(ckpt, descriptor["cache_dir"], cfg, out)
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", flush=True)
    return result["results"], [str(p) for p in result.get("files", [])]


def _eval_report(results: dict[str, dict[str, Any]], primary: str, value: float) -> str:
    names = ["mAP", "R1", "R5", "R10", "mINP"]
    rows = "\n".join(f"| {split} | " + " | ".join(f"{float(m.get(n, float('nan'))):.4f}" for n in names) + " |"
                     for split, m in results.items())
    return (f"# Evaluation\n\nprimary metric `{primary}` = {value:.4f}\n\n| test set | "
            + " | ".join(names) + " |\n|---|" + "---|" * len(names) + f"\n{rows}\n")


@_reported("register")
def register(config_json: str, dataset: str, metrics_json: str, checkpoint: str, parent_run_id: str,
             promote: bool = True) -> dict[str, Any]:
    """Log the model, register it as ``anet-<dataset>`` (alias challenger), move champion if it wins.

    Returns ``{"status", "metrics", "primary_metric", "primary_value", "model_version", "champion",
    "decision"}``; ``status`` is "pruned" (nothing registered) or "succeeded".
    """
    cfg = _config(config_json)
    evaluation = json.loads(metrics_json) if metrics_json else {}
    base = {"metrics": evaluation.get("metrics", {}), "primary_metric": cfg.registry.primary_metric,
            "primary_value": evaluation.get("primary_value"), "model_version": None, "champion": False}
    if evaluation.get("status") == "pruned" or is_pruned(checkpoint):
        if parent_run_id:
            from anet.mlops import tracking

            tracking.configure(None)
            _Tracker(None, parent_run_id).tag_parent({"anet.pruned": "true"})
        return {**base, "status": "pruned", "decision": "pruned trial: nothing registered"}
    if base["primary_value"] is None:
        raise UserError(f"no value for {cfg.registry.primary_metric}: a model is never registered without "
                        "its metric")
    if not parent_run_id:
        return {**base, "status": "succeeded", "decision": "no MLflow run: not registered"}
    with _step_run(parent_run_id, "register") as tracker:
        outcome = _register_candidate(cfg, dataset or cfg.data.dataset, checkpoint_in(checkpoint), evaluation,
                                      parent_run_id, promote)
        tracker.tag_parent({"anet.model_version": outcome["model_version"], "anet.champion": outcome["champion"],
                            "anet.decision": outcome["decision"]})
    return {**base, "status": "succeeded", **outcome}


def _register_candidate(cfg: ExperimentConfig, dataset: str, ckpt: Path, evaluation: dict[str, Any],
                        parent_run_id: str, promote: bool) -> dict[str, Any]:
    """Log the model (pytorch flavour, explicit requirements) into the active step run and register it.

    ``promote=False`` (sweep trials) registers the version (alias challenger) without moving the
    champion; the sweep offers the best trial for promotion afterwards.
    """
    import numpy as np

    from anet.engine import load_model_from_checkpoint
    from anet.mlops import lineage, registry, tracking
    from anet.steps import ReidEmbedder

    embedder = ReidEmbedder(load_model_from_checkpoint(ckpt).eval(), cfg.eval.feature)
    h, w = cfg.data.image_size
    model_uri = tracking.log_model(embedder, input_example=np.zeros((2, 3, h, w), dtype=np.float32))
    from mlflow import MlflowClient

    tags = lineage.lineage_tags(fingerprint=MlflowClient().get_run(parent_run_id).data.tags.get("data.fingerprint"))
    decision = registry.register_candidate(model_uri, dataset, parent_run_id, evaluation["metrics"],
                                           cfg.registry.primary_metric, cfg.registry.promotion_margin,
                                           lineage_tags=tags, promote=promote)
    return {"model_version": str(decision.version), "champion": bool(decision.is_champion),
            "decision": decision.decision, "champion_value": decision.champion_value, "model_uri": model_uri}


def _embedder_class() -> type:
    import torch

    class ReidEmbedder(torch.nn.Module):
        """What the registry serves: normalised images B x 3 x H x W -> L2-normalised features B x D."""

        def __init__(self, model: torch.nn.Module, feature: str):
            super().__init__()
            self.model, self.feature = model, feature

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model.embed(images, feature=self.feature)  # B x D

    ReidEmbedder.__module__, ReidEmbedder.__qualname__ = __name__, "ReidEmbedder"
    return ReidEmbedder


def __getattr__(name: str) -> Any:
    """``anet.steps.ReidEmbedder`` is built on first use, so importing this module never imports torch
    (pickled models find the class here by name)."""
    if name == "ReidEmbedder":
        globals()[name] = _embedder_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["check_dataset_available", "evaluate", "finish_pipeline_run", "is_pruned", "pipeline_overrides",
           "prepare_data", "read_descriptor", "register", "resolve_config", "start_pipeline_run", "train",
           "write_report"]


def main(argv: list[str] | None = None) -> int:
    """``python -m anet.steps train ARGS.json``: the torchrun entry point of a distributed train step."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python -m anet.steps train ARGS.json", file=sys.stderr)
        return 2
    kwargs = json.loads(Path(argv[1]).read_text())
    train(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
