"""A regression across targets with a prediction interval for a new target of a new base set
(`recommend` predicts a user's folder with it): OLS with cluster-robust errors, base sets the clusters.
The tests, intervals and the verdict rule are `atlib.report.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from atlib.report.stats import LEVEL, MIN_UNITS


@dataclass(frozen=True)
class Prediction:
    """A fitted line's value at x0 with its 95% prediction interval for a new target of a new base set.

    value, lo and hi are all NaN when there is no interval (never a bare number); n = base sets,
    n_targets = the points fitted; x_min, x_max = the fitted range of x."""

    value: float
    lo: float
    hi: float
    slope: float
    n: int
    n_targets: int
    x_min: float
    x_max: float

    def inside(self, x0: float) -> bool:
        return bool(self.x_min <= x0 <= self.x_max)

    def text(self, unit: str = "") -> str:
        if not math.isfinite(self.value):
            return f"no prediction (fewer than {MIN_UNITS} base sets or targets to fit)"
        return f"{self.value:+.1f}{unit} [{self.lo:+.1f}, {self.hi:+.1f}]"


def clustered_prediction(x, y, bases, x0: float) -> Prediction:
    """OLS of y on x over targets, with a 95% prediction interval at x0 for a new target from a new
    base set (a user's folder is one).

    The coefficients' covariance is cluster-robust (CR1 sandwich, one cluster per base set), so
    targets of one base, which move together, count as one unit; the interval adds the residual
    variance between targets and uses the t quantile with (base sets - 1) degrees of freedom. With
    fewer than MIN_UNITS base sets or targets there is no interval, and no value.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, g = x[ok], y[ok], np.asarray(bases)[ok]
    groups = sorted(set(g.tolist()))
    lo_x, hi_x = (float(x.min()), float(x.max())) if len(x) else (math.nan, math.nan)
    none = Prediction(math.nan, math.nan, math.nan, math.nan, len(groups), len(x), lo_x, hi_x)
    if len(groups) < MIN_UNITS or len(x) < MIN_UNITS or np.ptp(x) == 0:
        return none
    X = np.column_stack([np.ones_like(x), x])
    bread = np.linalg.inv(X.T @ X)
    beta = bread @ X.T @ y
    u = y - X @ beta
    meat = sum(np.outer(X[g == c].T @ u[g == c], X[g == c].T @ u[g == c]) for c in groups)
    n, k, G = len(x), 2, len(groups)
    cov = bread @ meat @ bread * (G / (G - 1)) * ((n - 1) / (n - k))
    s2 = float(u @ u) / (n - k)
    x0v = np.array([1.0, x0])
    se = math.sqrt(float(x0v @ cov @ x0v) + s2)
    value = float(x0v @ beta)
    q = float(stats.t.ppf((1 + LEVEL) / 2, G - 1))
    return Prediction(value, value - q * se, value + q * se, float(beta[1]), G, n, lo_x, hi_x)
