"""Gaps, tests with 95% intervals, and THE verdict rule of the claims check.

The rule (stated once, here, and printed at the top of claims.md): a claim "holds" or "does not
hold" only with at least MIN_UNITS independent units (seeds, targets or images) and a 95% interval
that excludes 0 on the expected or the opposite side; a correlation also needs its permutation
p-value below 0.05. Everything else is "inconclusive"; a claim the run has no data for is "not
testable here", with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

GROUP = ["source", "arch", "target", "mode"]
HOLDS, FAILS, INCONCLUSIVE, NOT_TESTABLE = "holds", "does not hold", "inconclusive", "not testable here"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_TESTABLE)
MIN_UNITS = 3
LEVEL = 0.95
ALPHA = 0.05
EXACT_PERMUTATIONS_UP_TO = 8  # n! permutations enumerated exactly up to n = 8 (40,320); Monte Carlo beyond
MC_PERMUTATIONS = 9999

RULE = (f"**{HOLDS}** / **{FAILS}** only with at least {MIN_UNITS} independent units (seeds, targets or images, "
        f"named on each line) and a {LEVEL:.0%} interval that excludes 0 on the expected / the opposite side; a "
        f"correlation also needs its permutation p-value < {ALPHA:g} (exact over all permutations up to n = "
        f"{EXACT_PERMUTATIONS_UP_TO}, {MC_PERMUTATIONS} Monte Carlo permutations beyond). Everything else is "
        f"**{INCONCLUSIVE}**. **{NOT_TESTABLE}**: this run has no data that could test the claim (the reason is "
        "given). Mean effects use the t-interval over units (scipy.stats.ttest_1samp); correlations are Spearman's "
        "rho with a paired percentile bootstrap interval (scipy.stats.bootstrap) and a permutation test "
        "(scipy.stats.permutation_test).")


def verdict(lo: float, hi: float, n: int, expect: int, p: float = math.nan) -> str:
    """The verdict rule. expect: +1 / -1 (the claimed sign), or 0 (claimed: "differs from 0")."""
    if n < MIN_UNITS or not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    side = 1 if lo > 0 else -1 if hi < 0 else 0
    if side == 0 or (math.isfinite(p) and p >= ALPHA):
        return INCONCLUSIVE
    return HOLDS if expect == 0 or side == expect else FAILS


@dataclass(frozen=True)
class Test:
    """One line of evidence: an effect, its 95% interval over n independent units, and the test."""

    label: str
    effect: float
    lo: float
    hi: float
    n: int
    unit: str
    method: str
    expect: int
    p: float = math.nan

    @property
    def verdict(self) -> str:
        return verdict(self.lo, self.hi, self.n, self.expect, self.p)

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def interval(self) -> str:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return "no interval"
        return f"[{LEVEL:.0%} CI {self.lo:+.3g}, {self.hi:+.3g}]"

    def text(self) -> str:
        p = f", p={self.p:.3g}" if math.isfinite(self.p) else ""
        few = f" (fewer than {MIN_UNITS} units)" if self.n < MIN_UNITS else ""
        return (f"{self.label} {self.effect:+.3g} {self.interval()}, n={self.n} {self.unit}{few}, "
                f"{self.method}{p} [{self.verdict}]")


def mean_test(values, expect: int, unit: str, label: str) -> Test:
    """Mean of `values` (one per independent unit) with its 95% t-interval and t-test p-value."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = len(v)
    m = float(v.mean()) if n else math.nan
    lo = hi = p = math.nan
    if n >= 2 and np.ptp(v) > 0:
        r = stats.ttest_1samp(v, 0.0)
        ci = r.confidence_interval(LEVEL)
        lo, hi, p = float(ci.low), float(ci.high), float(r.pvalue)
    elif n >= 2:  # identical values: a zero-width interval
        lo = hi = m
    return Test(label, m, lo, hi, n, unit, "t-interval", expect, p)


def _pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson's r along `axis` (vectorized over resamples). A resample where a or b is constant has
    no defined correlation: it counts as 0, which can only pull an interval towards 0 (never away)."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=axis) / np.where(den > 0, den, 1), 0.0)


def _rank_corr(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis`: Pearson's r of the ranks (ties share their mean rank)."""
    return _pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis)


def permutation_p(x, y, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: exact (all n! pairings) up to n = 8."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    exact = n <= EXACT_PERMUTATIONS_UP_TO
    res = stats.permutation_test((y,), lambda yy, axis=-1: _rank_corr(np.broadcast_to(x, yy.shape), yy, axis),
                                 permutation_type="pairings", vectorized=True,
                                 n_resamples=math.factorial(n) if exact else MC_PERMUTATIONS,
                                 alternative="two-sided", rng=np.random.default_rng(seed))
    return float(res.pvalue)


def correlation(x, y, n_boot: int, seed: int = 0) -> dict:
    """Spearman (and Pearson) correlation of y with x over points (targets): estimates, paired
    percentile bootstrap 95% intervals, and the permutation p-value of Spearman's rho."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(len(x))}
    for name in ("spearman", "pearson"):
        out.update({name: np.nan, f"{name}_p": np.nan, f"{name}_lo": np.nan, f"{name}_hi": np.nan})
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["spearman"] = float(_rank_corr(x, y))
    out["spearman_p"] = permutation_p(x, y, seed)
    r = stats.pearsonr(x, y)
    out["pearson"], out["pearson_p"] = float(r[0]), float(r[1])
    if n_boot > 0:
        for name, fn in (("spearman", _rank_corr), ("pearson", _pearson)):
            ci = stats.bootstrap((x, y), fn, paired=True, vectorized=True, n_resamples=n_boot,
                                 confidence_level=LEVEL, method="percentile",
                                 rng=np.random.default_rng(seed)).confidence_interval
            out[f"{name}_lo"], out[f"{name}_hi"] = float(ci.low), float(ci.high)
    return out


def correlation_test(x, y, expect: int, unit: str, label: str, n_boot: int, seed: int = 0) -> Test:
    """Spearman's rho of y with x as a Test (bootstrap interval, permutation p-value)."""
    r = correlation(x, y, n_boot, seed)
    return Test(label, r["spearman"], r["spearman_lo"], r["spearman_hi"], r["n"], unit,
                f"Spearman ρ, paired bootstrap ({n_boot}) + permutation test", expect, r["spearman_p"])


def combine(verdicts: list[str]) -> str:
    """One verdict from several groups (sources, archs, eps): unanimous, else inconclusive."""
    tested = [v for v in verdicts if v != NOT_TESTABLE]
    if not tested:
        return NOT_TESTABLE
    return tested[0] if all(v == tested[0] for v in tested) else INCONCLUSIVE


# ----------------------------------------------------------------------------- gaps and distances

# Every task measure of a distance record: (expected sign of its correlation with the gap, name).
# The expected sign is declared here, before any result: a distance grows with the gap (+1); LogME
# is a transferability score (high = the probe's features already fit the target), so it falls (-1).
DISTANCES: dict[str, tuple[int, str]] = {
    "emd": (+1, "EMD (Cui et al.)"),
    "otdd": (+1, "OTDD, Gaussian (Bures)"),
    "otdd_exact": (+1, "OTDD, exact"),
    "task2vec": (+1, "Task2Vec"),
    "logme": (-1, "LogME (a score)"),
}
# The pre-declared primary distance of claim 4: the paper's choice, never picked after the results.
PRIMARY_DISTANCE = "emd"


def gap_frame(transfers: pd.DataFrame) -> pd.DataFrame:
    """Per-seed gaps: top1(robust, eps) - top1(standard), paired by (source, arch, target, mode, seed).

    Returns columns source, arch, eps (the robust eps), seed, target, mode, top1_rob, top1_st, gap.
    """
    cols = GROUP + ["seed"]
    st = transfers[transfers["eps"] == 0][cols + ["top1"]].rename(columns={"top1": "top1_st"})
    rob = transfers[transfers["eps"] > 0][cols + ["eps", "top1"]].rename(columns={"top1": "top1_rob"})
    g = rob.merge(st, on=cols, how="left")
    g["gap"] = g["top1_rob"] - g["top1_st"]
    return g[["source", "arch", "eps", "seed", "target", "mode", "top1_rob", "top1_st", "gap"]]


def mean_std(df: pd.DataFrame, by: list[str], col: str) -> pd.DataFrame:
    """Mean, sample std (NaN for one value) and count of `col` over the rows of each group; NaN
    values are not counted, so a group of missing results has mean NaN (never 0)."""
    g = df.groupby(by, sort=False, dropna=False)[col]
    return g.agg(mean="mean", std="std", n="count").reset_index()


def gap_summary(transfers: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds of the gap, per (source, arch, eps, target, mode)."""
    return mean_std(gap_frame(transfers), ["source", "arch", "eps", "target", "mode"], "gap")


def standard_distance(distances: pd.DataFrame, source: str, arch: str, column: str = "emd") -> pd.Series:
    """Distance of each dataset from `source` under the standard (eps 0) probes, mean over seeds."""
    d = distances[(distances["probe_source"] == source) & (distances["probe_arch"] == arch)
                  & (distances["probe_eps"] == 0)]
    return d.groupby("dataset")[column].mean()


def gap_distance_points(transfers: pd.DataFrame, distances: pd.DataFrame, source: str, arch: str,
                        column: str = "emd") -> pd.DataFrame:
    """Per (robust eps, target, mode): gap mean/std/n over seeds and the target's distance from the
    source under the standard probe (`column`: emd or otdd). The source itself is never a target
    point here: it is the reference (distance 0), not evidence."""
    t = transfers[(transfers["source"] == source) & (transfers["arch"] == arch) & (transfers["target"] != source)]
    g = mean_std(gap_frame(t), ["eps", "target", "mode"], "gap")
    g["distance"] = g["target"].map(standard_distance(distances, source, arch, column)).astype(float)
    return g


def correlation_table(transfers: pd.DataFrame, distances: pd.DataFrame, groups: list[tuple[str, str]],
                      n_boot: int) -> pd.DataFrame:
    """Which distance predicts the gap: per (source, arch, robust eps, mode), every measure of
    DISTANCES with the gap's Spearman (bootstrap CI, permutation p) and Pearson correlations over the
    targets (the source excluded), the verdict of its expected sign, and its rank by the sign-aligned
    rho (expect * rho; 1 = best predictor, measures without a correlation last)."""
    rows = []
    for source, arch in groups:
        for column, (expect, name) in DISTANCES.items():
            if column not in distances:
                continue
            pts = gap_distance_points(transfers, distances, source, arch, column)
            for (eps, mode), p in pts.groupby(["eps", "mode"], sort=True):
                c = correlation(p["distance"], p["mean"], n_boot)
                rows.append({"source": source, "arch": arch, "eps": eps, "mode": int(mode), "distance": column,
                             "name": name, "primary": column == PRIMARY_DISTANCE, "expect": expect, **c,
                             "verdict": verdict(c["spearman_lo"], c["spearman_hi"], c["n"], expect, c["spearman_p"])})
    cols = ["source", "arch", "eps", "mode", "rank", "distance", "name", "primary", "expect", "n", "spearman",
            "spearman_lo", "spearman_hi", "spearman_p", "verdict", "pearson", "pearson_lo", "pearson_hi", "pearson_p"]
    df = pd.DataFrame(rows, columns=[c for c in cols if c != "rank"])
    keys = ["source", "arch", "eps", "mode"]
    aligned = df["expect"] * df["spearman"]
    df["rank"] = aligned.groupby([df[k] for k in keys]).rank(ascending=False, method="min", na_option="bottom")
    df["rank"] = df["rank"].astype("Int64")
    return df.sort_values(keys + ["rank", "distance"])[cols].reset_index(drop=True)
