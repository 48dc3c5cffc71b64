"""The stage-two lr study's report is made from its runs.csv alone (the study itself is a benchmark)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from anet.errors import UserError
from bench.ac_lr_study import _done, parse_args, report


def _line(seed: int, lr: float, ac: bool, epoch: int, val: float) -> dict[str, object]:
    return {"seed": seed, "lr": lr, "ac": ac, "epoch": epoch, "config": "x", "wall_s": 10.0, "cpu": "cpu A",
            "git_commit": "c", "start/val/mAP": 0.5, "start/val/R1": 0.4, "eval/val/mAP": val,
            "train/ac/share_j_better": 0.25, "train/ac/rel_change/joint": 1e-3,
            **({"train/ac/grad_share/ac_tri": 0.5, "train/ac/grad_share/ac_id": 0.1} if ac else {})}


def test_report_pairs_ac_on_and_off_per_seed_on_the_last_epoch(tmp_path: Path) -> None:
    lines = [_line(s, 6e-5, ac, e, 0.5 + 0.01 * s + (0.02 if ac else 0.0) + 0.1 * (e - 2))
             for s in (0, 1, 2) for ac in (False, True) for e in (1, 2)]
    lines[-1]["eval/val/mAP"] = 0.53  # seed 2, AC on, last epoch: +0.01 instead of +0.02
    path = tmp_path / "runs.csv"
    pd.DataFrame(lines).to_csv(path, index=False)
    text = report(path)
    assert "| 6e-05 | off | 3 | 0.5000 | 0.5100 | +0.0100 | 0.250 | - | 1.0e-03 |" in text
    assert "| 6e-05 | on | 3 | 0.5000 | 0.5267 | +0.0267 | 0.250 | 0.500 / 0.100 | 1.0e-03 |" in text
    # paired differences +0.02, +0.02, +0.01: mean 0.0167, sd 0.00577, t(2) = 4.303 -> half-width 0.0143
    assert "| 6e-05 | +0.0200, +0.0200, +0.0100 | +0.0167 | [+0.0023, +0.0310] |" in text
    frame = pd.read_csv(path)
    assert _done(frame, 1, 6e-5, True) and not _done(frame, 1, 6e-6, True) and not _done(frame, 3, 6e-5, True)


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--lrs"):
        parse_args(["--lrs", "fast"])
    with pytest.raises(UserError, match="no finished stage two"):
        report(tmp_path / "runs.csv")
