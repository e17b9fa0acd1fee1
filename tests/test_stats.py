"""The paired tests against references: the score statistic against its definition (a numerically fitted
constrained likelihood), the paired t against scipy, interval and p in agreement, Holm by hand, power by
simulation."""

import math
import random

import pytest
from scipy import optimize
from scipy import stats as sp

from nemotron.records import stats


def tables(x: int, y: int, n: int) -> tuple[list[float], list[float]]:
    """n documents: x right after only, y right before only, the rest right in both (half) or neither."""
    rest = n - x - y
    before = [0.0] * x + [1.0] * y + [1.0] * (rest // 2) + [0.0] * (rest - rest // 2)
    after = [1.0] * x + [0.0] * y + [1.0] * (rest // 2) + [0.0] * (rest - rest // 2)
    return before, after


def score_by_definition(x: int, y: int, n: int, d0: float) -> float:
    """The score statistic from scratch: the multinomial likelihood maximised numerically under
    P(after only) − P(before only) = d0, and the variance of (x − y)/n at that fit."""
    def nll(q: float) -> float:
        q12, q21 = q + d0, q
        rest = 1 - q12 - q21
        return -(x * math.log(max(q12, 1e-300)) + y * math.log(max(q21, 1e-300))
                 + (n - x - y) * math.log(max(rest, 1e-300)))
    lo, hi = max(0.0, -d0) + 1e-12, (1 - d0) / 2 - 1e-12
    q = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    return (x - y - n * d0) / math.sqrt(n * (2 * q + d0 - d0 * d0))


@pytest.mark.parametrize(("x", "y", "n", "d0"), [(5, 0, 40, -0.05), (3, 11, 200, 0.01), (0, 12, 20, -0.01),
                                                  (40, 25, 1319, -0.02), (7, 7, 100, 0.03), (0, 0, 500, -0.01)])
def test_the_score_statistic_is_the_constrained_likelihood_score(x, y, n, d0):
    t = stats.paired(*tables(x, y, n))
    assert t.method == "score (Tango)" and t.statistic(d0) == pytest.approx(score_by_definition(x, y, n, d0), rel=1e-5)


def test_at_no_difference_the_score_test_is_mcnemars_and_the_t_test_is_scipys():
    t = stats.paired(*tables(3, 11, 200))
    chi2 = (11 - 3) ** 2 / (11 + 3)  # McNemar's statistic, without continuity correction
    assert t.p == pytest.approx(sp.chi2.sf(chi2, 1), rel=1e-9)
    before = [0.1, 0.5, 0.3, 0.9, 0.42, 0.77]
    after = [0.2, 0.5, 0.5, 0.8, 0.47, 0.9]
    t = stats.paired(before, after)
    assert t.method == "paired t" and t.p == pytest.approx(sp.ttest_rel(after, before).pvalue, rel=1e-9)
    low, high = t.interval
    ref = sp.ttest_rel(after, before).confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ref.low, abs=1e-9), pytest.approx(ref.high, abs=1e-9))


@pytest.mark.parametrize("n", [10, 20, 40, 200, 1000])
def test_interval_and_p_agree_in_sign_and_significance_on_a_grid(n):
    """Issue 26: the interval excludes 0 exactly when p < 0.05, on the side of the difference, and a margin
    outside the interval is exactly a one-sided p below 2.5%."""
    for x in range(0, n + 1, max(1, n // 10)):
        for y in range(0, n - x + 1, max(1, n // 7)):
            t = stats.paired(*tables(x, y, n))
            low, high = t.interval
            assert low <= t.difference <= high
            if t.p < 0.05 - 1e-9:
                assert low > 0 or high < 0, (x, y, n)
                assert (low > 0) == (t.difference > 0)
            elif t.p > 0.05 + 1e-9:
                assert low <= 0 <= high, (x, y, n, low, high, t.p)
            for margin in (-0.1, -0.01, 0.01):
                if abs(margin - high) > 1e-6:
                    assert (t.p_below(margin) < stats.ALPHA_ONE_SIDED) == (high < margin), (x, y, n, margin)
                if abs(margin - low) > 1e-6:
                    assert (t.p_above(margin) < stats.ALPHA_ONE_SIDED) == (low > margin), (x, y, n, margin)


def test_holm_against_a_hand_computed_case():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5] and stats.holm([0.4, 0.6]) == [0.8, 0.8] and stats.holm([]) == []


def test_what_cannot_be_tested_says_why():
    assert stats.paired([], []) == "no documents both evaluated"
    assert "same amount" in stats.paired([0.2, 0.3], [0.25, 0.35])
    assert "one document" in stats.paired([0.2], [0.3])


def test_the_detectable_drop_has_its_power_by_simulation():
    """A drop of exactly `detectable` beyond the margin, at the worst case for the baseline's score (every
    document the two disagree on moves one way or the other), is shown about 80% of the time."""
    n, score, margin = 400, 0.5, 0.01
    drop = margin + stats.detectable(n, score)
    rng = random.Random(7)
    # worst case at p = 0.5: every document discordant; P(right before only) − P(right after only) = drop
    q_before_only = (1 + drop) / 2
    shown = 0
    for _ in range(400):
        y = sum(rng.random() < q_before_only for _ in range(n))
        before = [1.0] * y + [0.0] * (n - y)
        after = [0.0] * y + [1.0] * (n - y)
        shown += stats.paired(before, after).p_below(-margin) < stats.ALPHA_ONE_SIDED
    assert 0.72 < shown / 400 < 0.88, shown
    assert stats.detectable(20) == pytest.approx((1.959964 + 0.841621) * math.sqrt(1 / 20), rel=1e-5)
    assert stats.detectable(14042, 0.7) < stats.detectable(14042) < stats.detectable(1000)
