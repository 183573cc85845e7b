"""Binomial intervals of accuracies measured on a sample of images: the 95% Wilson score interval of
one accuracy, and Newcombe's interval of the difference of two accuracies on the same images.

Shared by evaluation (metrics.json's "<key>_ci"), the AutoAttack comparison and the report.
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import binomtest

LEVEL = 0.95  # the confidence level of every interval: metrics.json's and the claims check's (report.stats)


def wilson_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion of k successes in n trials (scipy's binomtest), as
    fractions in [0, 1]; (nan, nan) without trials. Unlike the Wald interval it stays inside [0, 1] and
    keeps its coverage at k = 0 or k = n, the usual case for robust accuracy on a few images."""
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_interval(acc: float, n: int) -> dict[str, Any]:
    """An accuracy `acc` (%) over `n` images as {"n", "correct", "lo", "hi"} (the 95% Wilson interval, %).
    The count is recovered from the percentage (exact: acc = 100 * correct / n); no accuracy, no interval."""
    if not (n > 0 and math.isfinite(acc)):
        return {"n": int(n), "correct": None, "lo": math.nan, "hi": math.nan}
    k = round(acc * n / 100.0)
    lo, hi = wilson_interval(k, n)
    return {"n": int(n), "correct": int(k), "lo": 100.0 * lo, "hi": 100.0 * hi}


def intervals(accs: dict[str, float], n: int) -> dict[str, dict[str, Any]]:
    """`accuracy_interval` of each accuracy of a {eps: %} dict, all over the same `n` images."""
    return {e: accuracy_interval(a, n) for e, a in accs.items()}


def _pair_correlation(both: int, first_only: int, second_only: int, neither: int) -> float:
    """Newcombe's continuity-corrected correlation of paired outcomes: (ad - bc) shrunk towards 0 by n/2
    when positive, 0 when a margin is empty."""
    n = both + first_only + second_only + neither
    margins = (both + first_only, second_only + neither, both + second_only, first_only + neither)
    if min(margins) == 0:
        return 0.0
    a = both * neither - first_only * second_only
    a = a - n / 2 if a > n / 2 else min(a, 0)
    return a / math.sqrt(math.prod(margins))


def paired_difference_interval(both: int, first_only: int, second_only: int, neither: int,
                               level: float = LEVEL) -> tuple[float, float]:
    """Interval of p1 - p2 for two proportions measured on the same n items, from their 2x2 table
    (p1 = (both + first_only) / n, p2 = (both + second_only) / n), as fractions; (nan, nan) without items.

    Newcombe's hybrid score ("square-and-add") interval for paired proportions (Newcombe 1998, method 10,
    with his continuity-corrected correlation; as in Fagerland, Lydersen & Laake 2017, ch. 8): each
    proportion's Wilson interval, combined with the correlation of the pairs. Unlike the difference of
    two independent intervals it credits the pairing; its width rests on the discordant cells."""
    n = both + first_only + second_only + neither
    if n <= 0:
        return math.nan, math.nan
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    (l1, u1), (l2, u2) = wilson_interval(both + first_only, n, level), wilson_interval(both + second_only, n, level)
    phi = _pair_correlation(both, first_only, second_only, neither)
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    up = math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return p1 - p2 - down, p1 - p2 + up
