"""The ablation's rows (paper Tables 1-3 plus two of ours) and the steps of the paper's ordering.

Pure data, shared by the grid (``pipelines.ablation``) and the report (``pipelines.ablation_report``),
so the report needs nothing but ``runs.csv`` and this table.

Example:
    >>> [r.key for r in ROWS][:3]
    ['baseline', 'van_f', 'van_fa']
    >>> STEPS[0].label, STEPS[0].minuend, STEPS[0].subtrahend
    ('VAN (f) - Baseline', 'van_f', 'baseline')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

# "one_total": no joint module, stage one for the whole schedule; "one_only": stop after stage one;
# "both": stage one then ANet's stage two (L', eq. 13); "two_no_ac": the same stage two without AC
Stages = Literal["one_total", "one_only", "both", "two_no_ac"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the ablation: its overrides, which stages it trains, and what it reads in the paper."""

    key: str
    paper: str
    overrides: Mapping[str, Any]
    stages: Stages
    ours: bool = False  # a row the paper does not have


_VAN = {"model.variant": "van", "eval.feature": "f"}

# ANet on FastReID's VeRi-Wild bag of tricks (configs/veriwild-fastreid.yaml, key by key) at the grid's
# size and budget: the ablation profile's data, depth, epochs, milestones and precision; what scales with
# the image or the step count is scaled (padding 10 px at 256 -> 3 at 64; warmup 5000 iterations -> the
# profile's one warm-up epoch, 25 iterations); stage two at BASE_LR x GAMMA^len(STEPS), as the profile.
_FASTREID_BOT: dict[str, Any] = {
    "augment.kind": "fastreid", "augment.autoaug_p": 0.0, "augment.pad": 3, "augment.flip_p": 0.5,
    "augment.zoom_p": 0.0, "augment.cj_p": 0.0, "augment.erase_p": 0.5, "augment.erase_area": [0.02, 0.33],
    "model.maxpool": "ceil", "model.head.kind": "fastreid", "model.head.pool": "gem",
    "model.head.cls_layer": "linear", "model.head.scale": 1.0, "model.head.margin": 0.0,
    "model.head.neck_feat": "before", "model.head.embedding_dim": 0,
    "loss.form": "fastreid", "loss.label_smoothing": 0.1, "loss.triplet_margin": 0.0,
    "loss.triplet_hard_mining": False, "loss.triplet_norm_feat": False,
    "stage_one.lr": 3.5e-4, "stage_one.weight_decay": 5.0e-4, "stage_one.gamma": 0.1, "stage_one.warmup_epochs": 0,
    "stage_one.amsgrad": False, "stage_two.warmup_epochs": 0, "stage_two.amsgrad": False,
    "stage_one.solver.kind": "fastreid", "stage_one.solver.optimizer": "adam", "stage_one.solver.sched": "multistep",
    "stage_one.solver.warmup_factor": 0.1, "stage_one.solver.warmup_iters": 25, "stage_one.solver.freeze_iters": 0,
    "stage_one.solver.bias_lr_factor": 1.0, "stage_one.solver.weight_decay_norm": 5.0e-4,
    "stage_one.solver.weight_decay_bias": 5.0e-4,
    "stage_two.lr": 3.5e-5, "stage_two.weight_decay": 5.0e-4, "stage_two.solver.kind": "fastreid",
    "stage_two.solver.optimizer": "adam", "stage_two.solver.sched": "multistep",
    "stage_two.solver.weight_decay_norm": 5.0e-4, "stage_two.solver.weight_decay_bias": 5.0e-4,
}

ROWS: tuple[Row, ...] = (
    # Table 1
    Row("baseline", "Baseline", {"model.variant": "baseline", "eval.feature": "f"}, "one_total"),
    Row("van_f", "VAN (f)", {**_VAN, "model.attr_branch": "att"}, "one_total"),
    Row("van_fa", "VAN (fa)", {"model.variant": "van", "eval.feature": "fa", "model.attr_branch": "att"},
        "one_total"),
    Row("anet_no_ac", "ANet (j) w/o AC", {"eval.feature": "j"}, "two_no_ac"),
    Row("anet", "ANet (j)", {"eval.feature": "j"}, "both"),
    # Table 2
    Row("anet_att", "ANet (att), eq. 14", {"model.variant": "anet_att", "eval.feature": "j"}, "both"),
    # Table 3: inside VAN (f), fc attribute branches against van_f's attention branches
    Row("van_fc", "VAN (f), fc attribute branch", {**_VAN, "model.attr_branch": "fc"}, "one_total"),
    # ours: not rows of the paper
    Row("anet_stage_one", "ANet (j) after stage one only (ours)", {"eval.feature": "j"}, "one_only", ours=True),
    Row("anet_fc", "ANet (j), fc attribute branch (ours)", {"model.attr_branch": "fc", "eval.feature": "j"},
        "both", ours=True),
    # issue 20: Tables 7-9's "ANet + FastReid" at CPU scale (ANet's stages on FastReID's recipe)
    Row("anet_fastreid", "ANet (j) + FastReID recipe (ours, Tables 7-9 at CPU scale)",
        {**_FASTREID_BOT, "eval.feature": "j"}, "both", ours=True),
)


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the paper's ordering: ``minuend - subtrahend`` per seed."""

    label: str
    minuend: str
    subtrahend: str


STEPS: tuple[Step, ...] = (
    Step("VAN (f) - Baseline", "van_f", "baseline"),
    Step("w/o AC - VAN (f)", "anet_no_ac", "van_f"),
    Step("ANet - w/o AC", "anet", "anet_no_ac"),
    Step("ANet - ANet (att)", "anet", "anet_att"),
    Step("att - fc inside VAN (f)", "van_f", "van_fc"),
    Step("ANet + FastReID recipe - ANet (ours)", "anet_fastreid", "anet"),
)

ROW_ORDER: dict[str, int] = {r.key: i for i, r in enumerate(ROWS)}
ROW_LABELS: dict[str, str] = {r.key: r.paper for r in ROWS}
