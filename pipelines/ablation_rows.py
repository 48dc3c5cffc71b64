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
)

ROW_ORDER: dict[str, int] = {r.key: i for i, r in enumerate(ROWS)}
ROW_LABELS: dict[str, str] = {r.key: r.paper for r in ROWS}
