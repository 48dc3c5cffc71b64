"""Paired per-seed differences between ablation rows: mean, 95% Student-t interval, power in seeds.

Runs with the same seed share the synthetic data, the initial weights' random stream and the batch
order, so a step of the paper's ordering (row A - row B) is judged on the per-seed differences
``d_s = A_s - B_s``: mean ``m``, sample standard deviation ``sd`` (ddof=1), half-width
``h = t_{0.975, n-1} * sd / sqrt(n)`` and interval ``[m - h, m + h]``. The step is resolved when the
interval excludes 0; ``h`` is the smallest difference this grid resolves. An unresolved step needs the
smallest ``n`` with ``t_{0.975, n-1} * sd / sqrt(n) < |m|`` (taking this grid's ``m`` and ``sd`` as the
truth); a mean below half the table's last digit (``|m| < 0.0005``) is "unresolvable".

Example:
    >>> d = paired_difference([0.13, 0.22, 0.34], [0.10, 0.20, 0.30])
    >>> round(d.mean, 3), round(d.half_width, 4), d.resolved
    (0.03, 0.0248, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

MEAN_ZERO = 0.0005  # below half a unit of the table's third decimal: no number of seeds is meaningful
MAX_SEEDS = 1_000_000


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2))
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2.0 * theta / math.pi
    term, total = math.cos(theta), math.cos(theta)  # cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... up to cos^(df-2)
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2.0 / math.pi * (theta + s * total)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the two-sided 95% critical value (12.706 for df=1, 2.776 for 4, -> 1.960)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 300:  # Cornish-Fisher expansion around z = 1.959964; error < 1e-7 here
        z = 1.959963984540054
        return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
                + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))
    lo, hi = 0.0, 1000.0
    for _ in range(200):  # bisection on the exact two-sided mass
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < 0.95 else (lo, mid)
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def seeds_needed(mean: float, sd: float) -> int | None:
    """Smallest n >= 2 with ``t_{0.975,n-1} * sd / sqrt(n) < |mean|``; None when ``|mean|`` is ~0."""
    if not math.isfinite(mean) or not math.isfinite(sd) or abs(mean) < MEAN_ZERO:
        return None
    n = max(2, math.ceil((1.959963984540054 * sd / abs(mean)) ** 2))  # the normal bound: t is larger
    while t_quantile_975(n - 1) * sd / math.sqrt(n) >= abs(mean):
        n += 1
        if n > MAX_SEEDS:
            return None
    while n > 2 and t_quantile_975(n - 2) * sd / math.sqrt(n - 1) < abs(mean):  # the bound can overshoot
        n -= 1
    return n


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences of one step and what they resolve (NaN interval with fewer than 2 seeds)."""

    diffs: tuple[float, ...]
    mean: float
    sd: float
    half_width: float

    @property
    def n(self) -> int:
        """Number of paired seeds."""
        return len(self.diffs)

    @property
    def resolved(self) -> bool:
        """True when the 95% interval excludes 0."""
        return math.isfinite(self.half_width) and abs(self.mean) > self.half_width

    @property
    def needed(self) -> int | None:
        """Seeds that would resolve this mean at this spread (None: unresolvable, mean ~0)."""
        return seeds_needed(self.mean, self.sd)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """``a - b`` seed by seed (the sequences are aligned by seed); mean, sd and the t half-width."""
    if len(a) != len(b):
        raise ValueError(f"paired values must align seed by seed: {len(a)} vs {len(b)}")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b, strict=True))
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    if n < 2:
        return PairedDifference(diffs, mean, math.nan, math.nan)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return PairedDifference(diffs, mean, sd, t_quantile_975(n - 1) * sd / math.sqrt(n))
