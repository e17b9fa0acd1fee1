"""The paired tests behind `eval compare` and the regression gate: one test per metric gives both the interval
and the p-values (the interval is the set of differences the test does not reject), so the two never disagree.

- 0/1 metrics (acc, exact_match): Tango's score test for the difference of paired proportions (Tango 1998,
  Stat Med 17:891), which takes a margin (the gate's `max_drop`) as its null and behaves at small counts and with
  empty cells, where the Wald interval does not. At a zero margin it is the (asymptotic) McNemar test.
- Other metrics (mc2, bleu): the paired t-test on the per-document differences (n − 1 degrees of freedom).

Holm's step-down adjusts the p-values of a family of claims (the gate's regressions); `detectable` is the
smallest difference from a margin that n documents resolve with 80% power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

LEVEL = 0.95  # the interval; each one-sided claim (regression, pass) is tested at (1 − LEVEL) / 2
ALPHA_ONE_SIDED = (1 - LEVEL) / 2
POWER = 0.8
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Paired:
    """A paired test of after − before over n documents: `statistic(d0)` is large when the difference is above
    d0, and every figure below comes from it."""

    method: str  # "score (Tango)" | "paired t"
    n: int
    difference: float
    # 0/1: documents right after only (x) and right before only (y); other metrics: the differences' sd
    x: int = 0
    y: int = 0
    sd: float = 0.0

    def statistic(self, d0: float) -> float:
        if self.method == "paired t":
            se = self.sd / math.sqrt(self.n)
            gap = self.difference - d0
            return gap / se if se > 0 else (0.0 if gap == 0 else math.copysign(math.inf, gap))
        n, x, y = self.n, self.x, self.y
        a, b, c = 2 * n, -x - y + (2 * n - x + y) * d0, -y * d0 * (1 - d0)
        q = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)  # P(right before only), fitted under d0
        var = n * (2 * q + d0 * (1 - d0))
        gap = x - y - n * d0
        return gap / math.sqrt(var) if var > 1e-15 else (0.0 if abs(gap) < 1e-12 else math.copysign(math.inf, gap))

    def _cdf(self, t: float) -> float:
        if math.isinf(t):
            return 0.0 if t < 0 else 1.0
        if self.method != "paired t":
            return _NORMAL.cdf(t)
        from scipy import stats  # here, not at import: 1 s of every CLI command's start-up, for the t test alone

        return float(stats.t.cdf(t, self.n - 1))

    def p_below(self, d0: float) -> float:
        """One-sided p for "the difference is below d0" (a drop beyond the margin, when d0 = −max_drop)."""
        return self._cdf(self.statistic(d0))

    def p_above(self, d0: float) -> float:
        """One-sided p for "the difference is above d0" (a drop beyond the margin ruled out)."""
        return 1.0 - self._cdf(self.statistic(d0))

    @property
    def p(self) -> float:
        """Two-sided p for "no difference"."""
        return min(1.0, 2 * min(self.p_below(0.0), self.p_above(0.0)))

    @property
    def interval(self) -> tuple[float, float]:
        """The differences the test does not reject at LEVEL, two-sided (its one-sided halves: the gate's claims)."""
        return self._bound(lambda d0: self.p_above(d0) > ALPHA_ONE_SIDED), \
            self._bound(lambda d0: self.p_below(d0) <= ALPHA_ONE_SIDED)

    def _bound(self, is_above: callable) -> float:
        """The d0 where `is_above(d0)` turns true, searched over the metric's range (monotone in d0)."""
        lo, hi = (-1.0, 1.0) if self.method != "paired t" else (self.difference - 1e6, self.difference + 1e6)
        if is_above(lo):
            return lo
        if not is_above(hi):
            return hi
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if is_above(mid) else (mid, hi)
        return (lo + hi) / 2


def paired(before: Sequence[float], after: Sequence[float]) -> Paired | str:
    """The test for two metric values per document (same order), or why none can be made."""
    n = len(before)
    if n == 0:
        return "no documents both evaluated"
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean = sum(diffs) / n
    if all(v in (0.0, 1.0) for v in (*before, *after)):
        x = sum(1 for a, b in zip(before, after, strict=True) if b > a)
        return Paired("score (Tango)", n, mean, x=x, y=sum(1 for d in diffs if d < 0))
    if n < 2:
        return "one document: no error to estimate"
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return "every document differs by the same amount: no error to estimate"
    return Paired("paired t", n, mean, sd=sd)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence between the tests)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def detectable(n: int, score: float | None = None, alpha: float = ALPHA_ONE_SIDED, power: float = POWER) -> float:
    """The smallest true difference from a margin that a one-sided test at `alpha` on n paired 0/1 documents
    detects with `power`: (z_alpha + z_power) * sd / sqrt(n), with the worst-case sd of a paired difference given
    the baseline's score p (every document the two disagree on: 2 min(p, 1 − p)), or p = 0.5 when unknown."""
    p = 0.5 if score is None else min(max(score, 0.0), 1.0)
    variance = max(2 * min(p, 1 - p), 1.0 / max(n, 1))  # a perfect or zero baseline still leaves one document
    return (_NORMAL.inv_cdf(1 - alpha) + _NORMAL.inv_cdf(power)) * math.sqrt(variance / max(n, 1))
