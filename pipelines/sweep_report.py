"""The end of a sweep: trial table, plots, MLflow logging, and the best model offered for promotion."""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from anet.config import resolve_config
from anet.io import atomic_path, atomic_write_text
from anet.mlops.registry import registry
from anet.mlops.tracking import tracking

LAMBDAS = ("lambda_a", "lambda_g", "lambda_van")
log = logging.getLogger("pipelines.sweep")


def trials_table(study: Any) -> list[dict[str, Any]]:
    """One row per counted trial: number, state, lambdas, value, MLflow run, model version."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.user_attrs.get("stale"):
            continue
        row = {"trial": t.number, "state": t.state.name, "value": t.value}
        row |= {k: t.params.get(k) for k in (*LAMBDAS, "lr") if k in t.params}
        row |= {k: t.user_attrs.get(k, "") for k in ("mlflow_run_id", "model_version", "error")}
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """trials.csv and trials.md (markdown) written atomically."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    csv_path, md_path = out_dir / "trials.csv", out_dir / "trials.md"
    atomic_write_text(csv_path, frame.to_csv(index=False))
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in r) + " |\n" for r in frame.itertuples(index=False))
    atomic_write_text(md_path, header + body)
    return [csv_path, md_path]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def write_plots(study: Any, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances, and a per-lambda slice (cf. paper Table 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = {"optimization_history.png": lambda: ovm.plot_optimization_history(study)}
    if complete:
        plots["lambda_slice.png"] = lambda: ovm.plot_slice(study, params=[p for p in LAMBDAS])
    if len(complete) >= 2:
        plots["param_importances.png"] = lambda: ovm.plot_param_importances(study)
    paths = []
    for name, make in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                make()
            except (ValueError, RuntimeError) as exc:  # e.g. importances when every value is equal
                log.info("%s skipped (%s)", name, exc)
                plt.close("all")
                continue
        with atomic_path(out_dir / name, suffix=".png") as tmp:
            plt.gcf().savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close("all")
        paths.append(out_dir / name)
    return paths


def log_to_mlflow(study: Any, args: argparse.Namespace, paths: list[Path]) -> str | None:
    """One MLflow run per sweep in the dataset's experiment, holding the table and the plots."""

    try:
        import mlflow

        tracking.configure(None)
        mlflow.set_experiment(tracking.experiment_name(args.dataset))
        with mlflow.start_run(run_name=f"sweep-{args.study_name}") as run:
            mlflow.set_tags({"optuna.study": args.study_name, "anet.kind": "sweep"})
            if _has_best(study):
                mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
                mlflow.log_metric("best_value", study.best_value)
            for path in paths:
                mlflow.log_artifact(str(path), artifact_path="sweep")
            return run.info.run_id
    except Exception as exc:  # the sweep's results are on disk already; say why MLflow missed them
        log.warning("sweep report not logged to MLflow: %s", str(exc).splitlines()[0])
        return None


def _has_best(study: Any) -> bool:
    try:
        return study.best_trial is not None
    except ValueError:
        return False


def offer_promotion(study: Any, args: argparse.Namespace) -> None:
    """Show the best trial's model version against the champion; promote it with --promote-best."""

    best = study.best_trial
    version = best.user_attrs.get("model_version")
    if not version:
        log.warning("best trial #%d has no registered model version", best.number)
        return
    cfg = resolve_config(args.profile, args.overrides, dataset=args.dataset)
    decision = registry.consider_promotion(
        args.dataset, str(version), cfg.registry.primary_metric, cfg.registry.promotion_margin,
        apply=args.promote_best,
    )
    print(decision.describe())
    if not args.promote_best and decision.would_promote:
        print(f"to promote it: make promote DATASET={args.dataset} VERSION={version}")


def finish_sweep(study: Any, args: argparse.Namespace, out_dir: Path) -> int:
    """Tables, plots, MLflow, promotion offer; returns the process exit code."""
    rows = trials_table(study)
    paths = write_tables(rows, out_dir) + write_plots(study, out_dir)
    run_id = log_to_mlflow(study, args, paths)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(f"\n{len(rows)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()))
    print((out_dir / "trials.md").read_text())
    if not _has_best(study):
        print("no trial completed: nothing to promote")
        return 1
    best = study.best_trial
    lams = ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
    print(f"best: trial #{best.number} value={best.value:.4f} with {lams}")
    print(f"reports in {out_dir}" + (f"; MLflow run {run_id}" if run_id else ""))
    offer_promotion(study, args)
    return 0
