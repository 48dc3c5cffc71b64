"""Stage two's learning rate and AC, on the validation split (issue 17: "what AC does").

The paper's stage two runs at the lr stage one's schedule has reached after three decays,
6e-4 * 0.1^3 = 6e-7 (the literal reading, ``configs/veri776.yaml``). At that lr AC can hardly move the
weights, so this study trains the ablation profile's stage two at the literal 6e-7, at x10 (6e-6) and
at x100 (6e-5, what ``synthetic-wild`` uses: its stage one decays once, 6e-4 -> 6e-5), each with and
without the AC terms (``stage_two.amelioration``), for 3 seeds. Per seed, stage one is trained once and
every stage two starts from that same ``final.pt`` with the same batch order, so "with AC - without AC"
is paired per seed and per lr.

Model selection data only: every number here is on the validation split (``eval/val/*``, held-out
training identities), never on the test split. One line per (seed, lr, AC, epoch) goes to
``ablations/ac-lr-study/runs.csv`` (val metrics after the epoch, every AC diagnostic of
``anet.train.diagnostics``, the AC terms, wall seconds, CPU, commit); ``--report`` rebuilds the README
block ``<!-- ablation:ac-lr-study -->`` from that file alone. A rerun skips what the file holds::

    .venv/bin/python -m bench.ac_lr_study                 # about 20 min on 2 cores (AMX Xeon)
    .venv/bin/python -m bench.ac_lr_study --report --readme README.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from anet.config import ExperimentConfig, RunSettings, resolve_config
from anet.errors import UserError, run_guarded
from anet.evaluation.in_training import make_eval_fn
from anet.io import atomic_write_text
from anet.logs import setup_logging
from anet.mlops.tracking.lineage import git_commit
from anet.steps.prepare import prepare_from_config
from anet.train.callbacks import Callback
from anet.train.checkpoint import load_weights
from anet.train.stage import build_model_for, run_stage
from pipelines.ablation_report import replace_in_readme
from pipelines.ablation_runs import cpu_model
from pipelines.ablation_stats import paired_difference

log = logging.getLogger("bench.ac_lr_study")

LRS = (6e-7, 6e-6, 6e-5)  # literal reading, x10, x100
KEYS = ("seed", "lr", "ac", "epoch")


class _Record(Callback):
    """Keeps each epoch's terms (losses, lr, ``ac/*``) and each evaluation's metrics."""

    def __init__(self) -> None:
        self.terms: dict[int, dict[str, float]] = {}
        self.metrics: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, stage_name: str, epoch: int, terms: dict[str, float]) -> None:
        self.terms[epoch] = dict(terms)

    def on_eval(self, stage_name: str, epoch: int, metrics: dict[str, float]) -> bool:
        self.metrics[epoch] = dict(metrics)
        return False


def _config(profile: str, seed: int, lr: float | None = None, ac: bool | None = None) -> ExperimentConfig:
    base = resolve_config(profile, {}, dataset="synthetic")
    overrides: dict[str, Any] = {"registry.primary_metric": "eval/val/mAP", "stage_two.eval_every": 1,
                                 "stage_one.eval_every": base.stage_one.epochs}  # stage one: its end only
    if lr is not None:
        overrides["stage_two.lr"] = lr
    if ac is not None:
        overrides["stage_two.amelioration"] = ac
    return resolve_config(profile, overrides, RunSettings(seed=seed), dataset="synthetic")


def _sha(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(KEYS))
    try:
        return pd.read_csv(path, dtype={"cpu": str, "git_commit": str, "config": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}); restore it from git") from exc


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    frame = pd.concat([_read(path), pd.DataFrame(lines)], ignore_index=True)
    rest = sorted(c for c in frame.columns if c not in KEYS)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame[[*KEYS, *rest]].to_csv(index=False, float_format="%.6g"))


def _done(frame: pd.DataFrame, seed: int, lr: float, ac: bool) -> bool:
    if frame.empty:
        return False
    same = (frame["seed"] == seed) & (frame["lr"].astype(float).sub(lr).abs() < lr * 1e-6) & (frame["ac"] == ac)
    return bool(same.any())


def _stage_one_val(one_dir: Path, metrics: dict[str, float], cfg: ExperimentConfig, prepared: Any) -> dict[str, float]:
    """Stage one's validation metrics, kept beside its checkpoints (a finished stage one is not re-run)."""
    path = one_dir / "val.json"
    if metrics:
        atomic_write_text(path, json.dumps(metrics))
    elif path.is_file():
        metrics = json.loads(path.read_text())
    else:  # finished before val.json existed: evaluate its final weights
        model = build_model_for(cfg, prepared)
        load_weights(model, one_dir / "final.pt")
        metrics = make_eval_fn(cfg, prepared)(model)
        atomic_write_text(path, json.dumps(metrics))
    return {k: float(v) for k, v in metrics.items()}


def run_study(args: argparse.Namespace) -> Path:
    """Train what ``runs.csv`` lacks: stage one once per seed, then each (lr, AC) stage two from it."""
    runs_csv = Path(args.out) / "runs.csv"
    work, cpu, commit = Path(args.work), cpu_model(), git_commit()
    for seed in range(args.seeds):
        frame = _read(runs_csv)
        todo = [(lr, ac) for lr in args.lrs for ac in (False, True) if not _done(frame, seed, lr, ac)]
        if not todo:
            log.info("seed %d: every stage two already in %s", seed, runs_csv)
            continue
        base = _config(args.profile, seed)
        prepared = prepare_from_config(base, progress=False)
        one_dir = work / f"seed{seed}" / "stage_one"
        log.info("seed %d: stage one (%s)", seed, one_dir)
        one = run_stage(base, prepared.cache_dir, "stage_one", one_dir, eval_fn=make_eval_fn(base, prepared),
                        progress=False)
        start_val = _stage_one_val(one_dir, one.last_metrics, base, prepared)
        for lr, ac in todo:
            cfg = _config(args.profile, seed, lr, ac)
            rec, start = _Record(), time.monotonic()
            log.info("seed %d: stage two lr %.0e, AC %s", seed, lr, "on" if ac else "off")
            run_stage(cfg, prepared.cache_dir, "stage_two", work / f"seed{seed}" / f"two_lr{lr:.0e}_ac{int(ac)}",
                      init_from=one.checkpoint, eval_fn=make_eval_fn(cfg, prepared), callbacks=[rec],
                      resume=False, progress=False)
            wall = time.monotonic() - start
            lines = [{"seed": seed, "lr": lr, "ac": ac, "epoch": e, "config": _sha(cfg), "wall_s": round(wall, 1),
                      "cpu": cpu, "git_commit": commit, "start/val/mAP": start_val.get("eval/val/mAP", math.nan),
                      "start/val/R1": start_val.get("eval/val/R1", math.nan),
                      **{f"train/{k}": v for k, v in rec.terms[e].items()}, **rec.metrics.get(e, {})}
                     for e in sorted(rec.terms)]
            _append(runs_csv, lines)
    return runs_csv


def report(runs_csv: Path) -> str:
    """The README block: per lr, val mAP after stage two with and without AC, the paired AC effect, and
    what AC did in the last epoch (share of images with L_ID^j < L_ID^f, gradient share, weight change)."""
    runs = _read(runs_csv)
    if runs.empty:
        raise UserError(f"{runs_csv}: no finished stage two yet; run python -m bench.ac_lr_study first")
    last = runs[runs["epoch"] == runs.groupby(["seed", "lr", "ac"])["epoch"].transform("max")]
    groups = sorted({c.rsplit("/", 1)[1] for c in runs.columns if c.startswith("train/ac/rel_change/")})
    out = ["| stage-two lr | AC | seeds | val mAP after stage one | val mAP after stage two | change | "
           "share L_ID^j < L_ID^f | grad share AC_tri / AC_ID | rel. weight change, last epoch ("
           + ", ".join(groups) + ") |", "|---|---|---|---|---|---|---|---|---|"]

    def mean(frame: pd.DataFrame, col: str, fmt: str = "{:.4f}") -> str:
        if col not in frame or frame[col].isna().all():
            return "n/a"
        return fmt.format(frame[col].astype(float).mean())

    for lr in sorted(last["lr"].unique()):
        for ac in (False, True):
            cell = last[(last["lr"] == lr) & (last["ac"] == ac)]
            if cell.empty:
                continue
            change = (cell["eval/val/mAP"] - cell["start/val/mAP"]).astype(float)
            grads = f"{mean(cell, 'train/ac/grad_share/ac_tri', '{:.3f}')} / " \
                    f"{mean(cell, 'train/ac/grad_share/ac_id', '{:.3f}')}" if ac else "-"
            rel = ", ".join(mean(cell, f"train/ac/rel_change/{g}", "{:.1e}") for g in groups)
            out.append(f"| {lr:.0e} | {'on' if ac else 'off'} | {len(cell)} | {mean(cell, 'start/val/mAP')} | "
                       f"{mean(cell, 'eval/val/mAP')} | {change.mean():+.4f} | "
                       f"{mean(cell, 'train/ac/share_j_better', '{:.3f}')} | {grads} | {rel} |")
    out += ["", "| stage-two lr | AC on - AC off, val mAP per seed | mean | 95% CI |", "|---|---|---|---|"]
    for lr in sorted(last["lr"].unique()):
        on = last[(last["lr"] == lr) & last["ac"]].set_index("seed")["eval/val/mAP"]
        off = last[(last["lr"] == lr) & ~last["ac"]].set_index("seed")["eval/val/mAP"]
        seeds = sorted(set(on.index) & set(off.index))
        if not seeds:
            continue
        d = paired_difference(on.loc[seeds].tolist(), off.loc[seeds].tolist())
        ci = f"[{d.mean - d.half_width:+.4f}, {d.mean + d.half_width:+.4f}]" if math.isfinite(d.half_width) else "n/a"
        out.append(f"| {lr:.0e} | " + ", ".join(f"{x:+.4f}" for x in d.diffs) + f" | {d.mean:+.4f} | {ci} |")
    cpus = ", ".join(sorted(set(runs["cpu"].astype(str))))
    walls = last.groupby(["seed", "lr", "ac"])["wall_s"].first().sum()
    out += ["", f"CPU: {cpus}; stage twos: {len(last)}, {walls / 60:.1f} min wall in all (stage ones not counted)."]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ac_lr_study", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="synthetic-wild")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in LRS), help="comma-separated stage-two lrs")
    p.add_argument("--out", default="ablations/ac-lr-study", help="folder of runs.csv and study.md")
    p.add_argument("--work", default=".cache/anet/ac-lr-study", help="checkpoints (resumable, not committed)")
    p.add_argument("--report", action="store_true", help="only rebuild the report from runs.csv")
    p.add_argument("--readme", type=Path, default=None, help="also replace the README's ac-lr-study block")
    args = p.parse_args(argv)
    try:
        args.lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--lrs {args.lrs!r}: expected numbers separated by commas ({exc})") from exc
    if args.seeds < 1 or not args.lrs or min(args.lrs) <= 0:
        raise UserError("--seeds must be at least 1 and every --lrs value positive")
    return args


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        setup_logging()
        args = parse_args(argv)
        runs_csv = Path(args.out) / "runs.csv"
        if not args.report:
            run_study(args)
        block = report(runs_csv)
        atomic_write_text(runs_csv.parent / "study.md", block + "\n")
        if args.readme is not None:
            replace_in_readme(args.readme, runs_csv.parent.name, block)
        sys.stdout.write(block + "\n")
        sys.stdout.write(json.dumps({"runs_csv": str(runs_csv), "lines": int(len(_read(runs_csv)))}) + "\n")
        return 0

    return run_guarded(body, "rerun the same command: finished stage twos are kept")


if __name__ == "__main__":
    sys.exit(main())
