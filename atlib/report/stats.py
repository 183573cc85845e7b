"""Gaps, tests with 95% intervals, and THE verdict rule of the claims check.

The rule (stated once, here, and printed at the top of claims.md): a claim "holds" or "does not
hold" only with at least MIN_UNITS independent units (seeds, targets or images) and a 95% interval
that excludes 0 on the expected or the opposite side; a correlation also needs its permutation
p-value below 0.05. Everything else is "inconclusive"; a claim the run has no data for is "not
testable here", with the reason.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from atlib.core.intervals import LEVEL

GROUP = ["source", "arch", "target", "mode"]
HOLDS, FAILS, INCONCLUSIVE, NOT_TESTABLE = "holds", "does not hold", "inconclusive", "not testable here"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_TESTABLE)
MIN_UNITS = 3
ALPHA = 0.05
MC_PERMUTATIONS = 9999

RULE = (f"**{HOLDS}** / **{FAILS}** only with at least {MIN_UNITS} independent units (seeds, base sets, models "
        f"or images, named on each line) and a {LEVEL:.0%} interval that excludes 0 on the expected / the opposite "
        f"side; a correlation also needs its permutation p-value < {ALPHA:g}. Everything else is **{INCONCLUSIVE}**. "
        f"**{NOT_TESTABLE}**: this run has no data that could test the claim (the reason is given). "
        "**Units.** Claims on seeds (1, 9-12) use the t-interval over paired seeds (scipy.stats.ttest_1samp). "
        "Claims on targets (2-4, 6-8, 15) count *independent base sets*, not targets: targets made from one base "
        "set (a class subset, an inverted or rotated copy, a ladder's levels) are one cluster, and seeds are "
        "nested in targets. Mean effects use the t-interval over base-set means (targets averaged within their "
        "base, seeds within their target, so every level's variance is in the interval; for a balanced design "
        "the intercept interval of a random-intercept model). Correlations (Spearman's rho of the targets' mean "
        "gaps with a distance) use a three-stage bootstrap (base sets, then targets within them, then seeds "
        "within targets; percentile interval) and a two-level permutation test that exchanges base-set means "
        f"between bases and target deviations within a base ({MC_PERMUTATIONS} permutations). A claim with fewer "
        f"than {MIN_UNITS} independent base sets is {INCONCLUSIVE} whatever its target count. **Stability**: the "
        "share of seed resamples (leave one seed out, and the seed bootstrap) that give the same verdict; below "
        "0.95 the verdict is marked *fragile*.")


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


# ----------------------------------------------------------------------------- clustered units
#
# Targets made from one base set (a class subset, a transform, a ladder level of it) are one cluster:
# a shift in how a model sees that base moves all of them together. Seeds are nested in targets,
# targets in base sets. Every interval over targets therefore counts base sets as its units.


@dataclass(frozen=True)
class Nested:
    """Values nested as base set > target > seed: one array of seed values per target.

    Args:
        bases: the base set of each target (targets with one base are one cluster).
        values: per target, its values over seeds.
        x: per target, a covariate (a task distance), or None.
    """

    bases: list[str]
    values: list[np.ndarray]
    x: np.ndarray | None = None

    @classmethod
    def from_frame(cls, df: pd.DataFrame, value: str, x: str | None = None) -> "Nested":
        """From rows (base, target, seed, value[, x]); rows with a missing value are dropped."""
        df = df.dropna(subset=[value] + ([x] if x else []))
        groups = list(df.groupby(["base", "target"], sort=True))
        return cls([b for (b, _), _ in groups], [g[value].to_numpy(float) for _, g in groups],
                   np.array([g[x].iloc[0] for _, g in groups], float) if x else None)

    @property
    def target_means(self) -> np.ndarray:
        return np.array([v.mean() for v in self.values])

    @property
    def n_bases(self) -> int:
        return len(set(self.bases))

    def members(self) -> list[np.ndarray]:
        """Target indices of each base set (in sorted base order)."""
        b = np.asarray(self.bases)
        return [np.flatnonzero(b == name) for name in sorted(set(self.bases))]

    def base_means(self) -> np.ndarray:
        """Per base set: the mean over its targets of each target's mean over seeds."""
        t = self.target_means
        return np.array([t[idx].mean() for idx in self.members()])

    @functools.cached_property
    def _layout(self) -> tuple[np.ndarray, ...]:
        """Targets in base order with each base's start and size; seed values padded to one width."""
        members = self.members()
        sizes = np.array([len(m) for m in members])
        counts = np.array([len(v) for v in self.values])
        padded = np.zeros((len(self.values), counts.max()))
        for i, v in enumerate(self.values):
            padded[i, :len(v)] = v
        return np.concatenate(members), np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes, padded, counts

    def resample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One three-stage bootstrap draw: base sets with replacement, then targets within each drawn
        base, then seeds within each drawn target. Returns (target indices, target means)."""
        order, start, sizes, padded, counts = self._layout
        c = rng.integers(0, len(sizes), len(sizes))
        reps = sizes[c]
        t = order[np.repeat(start[c], reps) + (rng.random(reps.sum()) * np.repeat(reps, reps)).astype(int)]
        cnt = counts[t][:, None]
        drawn = padded[t[:, None], (rng.random((len(t), padded.shape[1])) * cnt).astype(int)]
        used = np.arange(padded.shape[1]) < cnt
        return t, (drawn * used).sum(axis=1) / cnt[:, 0]


def unit_text(data: Nested) -> str:
    """'base sets (9 targets)': the independent units named on a line, with the targets they hold."""
    return f"base sets ({len(data.values)} targets)"


def clustered_mean_test(data: Nested, expect: int, label: str) -> Test:
    """Mean over base sets of (mean over targets of (mean over seeds)), with the t-interval over the
    base-set means. A base-set mean carries the variance of every level below it (base, target
    within base, seed within target), so nothing is averaged away before the interval; for a
    balanced design this is the intercept's interval of a random-effects model."""
    t = mean_test(data.base_means(), expect, unit_text(data), label)
    return Test(t.label, t.effect, t.lo, t.hi, t.n, t.unit, "t-interval over base-set means", expect, t.p)


def hierarchical_interval(data: Nested, stat: Callable[..., np.ndarray], n_boot: int,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of stat(x of the drawn targets, their drawn means, axis) over `n_boot`
    three-stage bootstrap draws (Nested.resample); draws of equal size are evaluated together."""
    rng = np.random.default_rng(seed)
    x = data.x if data.x is not None else np.zeros(len(data.values))
    by_size: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for _ in range(n_boot):
        idx, means = data.resample(rng)
        by_size.setdefault(len(idx), []).append((x[idx], means))
    draws = np.concatenate([stat(np.stack([a for a, _ in d]), np.stack([b for _, b in d]), -1)
                            for d in by_size.values()])
    lo, hi = np.nanpercentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def two_level_permutation_p(data: Nested, stat: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
                            seed: int = 0, n: int = MC_PERMUTATIONS) -> float:
    """Two-sided Monte Carlo p-value of stat(x, target means) under the null that the values do not
    depend on x, permuting within the structure the bootstrap resamples: base-set means are
    exchanged between base sets, and each target's deviation from its base mean among the targets
    of its base. A base's targets move together, so one cluster cannot pass for many units."""
    rng = np.random.default_rng(seed)
    members = data.members()
    t = data.target_means
    base_of = np.empty(len(t), int)
    for c, idx in enumerate(members):
        base_of[idx] = c
    bm = data.base_means()
    dev = t - bm[base_of]
    perm_bm = rng.permuted(np.tile(bm, (n, 1)), axis=1)
    perm_dev = np.empty((n, len(t)))
    for idx in members:
        perm_dev[:, idx] = rng.permuted(np.tile(dev[idx], (n, 1)), axis=1)
    null = stat(np.broadcast_to(data.x, (n, len(t))), perm_bm[:, base_of] + perm_dev, 1)
    observed = float(stat(data.x, t, -1))
    return float((1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + n))


def correlation(data: Nested, n_boot: int, seed: int = 0, names: tuple[str, ...] = ("spearman", "pearson")) -> dict:
    """Spearman (and Pearson) correlation of the target means with x over targets: estimates, 95%
    three-stage bootstrap intervals and two-level permutation p-values; n = independent base sets.
    With one target per base and one seed this is the plain paired bootstrap and permutation test."""
    out = {"n": data.n_bases, "n_targets": len(data.values)}
    for name in ("spearman", "pearson"):
        out.update({name: np.nan, f"{name}_p": np.nan, f"{name}_lo": np.nan, f"{name}_hi": np.nan})
    x, y = data.x, data.target_means
    if len(y) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    for name, fn in (("spearman", _rank_corr), ("pearson", _pearson)):
        if name not in names:
            continue
        out[name] = float(fn(x, y))
        out[f"{name}_p"] = two_level_permutation_p(data, fn, seed)
        if n_boot > 0:
            out[f"{name}_lo"], out[f"{name}_hi"] = hierarchical_interval(data, fn, n_boot, seed)
    return out


def correlation_test(data: Nested, expect: int, label: str, n_boot: int, seed: int = 0) -> Test:
    """Spearman's rho of the target means with x as a Test over independent base sets."""
    r = correlation(data, n_boot, seed, names=("spearman",))
    return Test(label, r["spearman"], r["spearman_lo"], r["spearman_hi"], r["n"], unit_text(data),
                f"Spearman ρ, three-stage bootstrap ({n_boot}) + two-level permutation test", expect,
                r["spearman_p"])


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


def gap_points(transfers: pd.DataFrame, distances: pd.DataFrame, source: str, arch: str, column: str = "emd",
               bases: Callable[[str], str] = str) -> pd.DataFrame:
    """Per (robust eps, target, mode, seed): the gap, the target's distance from the source under the
    standard probe (`column`) and its base set (`bases`: dataset -> base set; by default every
    target its own). The source itself is never a target point here: it is the reference
    (distance 0), not evidence."""
    t = transfers[(transfers["source"] == source) & (transfers["arch"] == arch) & (transfers["target"] != source)]
    g = gap_frame(t)[["eps", "target", "mode", "seed", "gap"]]
    g["distance"] = g["target"].map(standard_distance(distances, source, arch, column)).astype(float)
    g["base"] = g["target"].map(bases)
    return g


def gap_distance_points(transfers: pd.DataFrame, distances: pd.DataFrame, source: str, arch: str,
                        column: str = "emd", bases: Callable[[str], str] = str) -> pd.DataFrame:
    """Per (robust eps, target, mode): gap mean/std/n over seeds, the target's distance and its base
    set (gap_points, averaged over seeds)."""
    g = gap_points(transfers, distances, source, arch, column, bases)
    out = mean_std(g, ["eps", "target", "mode"], "gap")
    first = g.groupby(["eps", "target", "mode"], sort=False)[["distance", "base"]].first().reset_index()
    return out.merge(first, on=["eps", "target", "mode"], how="left")


def correlation_table(transfers: pd.DataFrame, distances: pd.DataFrame, groups: list[tuple[str, str]],
                      n_boot: int, bases: Callable[[str], str] = str) -> pd.DataFrame:
    """Which distance predicts the gap: per (source, arch, robust eps, mode), every measure of
    DISTANCES with the gap's Spearman (bootstrap CI, permutation p) and Pearson correlations over the
    targets (the source excluded; n = independent base sets, see `correlation`), the verdict of its
    expected sign, and its rank by the sign-aligned rho (expect * rho; 1 = best predictor, measures
    without a correlation last)."""
    rows = []
    for source, arch in groups:
        for column, (expect, name) in DISTANCES.items():
            if column not in distances:
                continue
            pts = gap_points(transfers, distances, source, arch, column, bases)
            for (eps, mode), p in pts.groupby(["eps", "mode"], sort=True):
                c = correlation(Nested.from_frame(p, "gap", "distance"), n_boot)
                rows.append({"source": source, "arch": arch, "eps": eps, "mode": int(mode), "distance": column,
                             "name": name, "primary": column == PRIMARY_DISTANCE, "expect": expect, **c,
                             "verdict": verdict(c["spearman_lo"], c["spearman_hi"], c["n"], expect, c["spearman_p"])})
    cols = ["source", "arch", "eps", "mode", "rank", "distance", "name", "primary", "expect", "n", "n_targets",
            "spearman", "spearman_lo", "spearman_hi", "spearman_p", "verdict", "pearson", "pearson_lo", "pearson_hi", "pearson_p"]
    df = pd.DataFrame(rows, columns=[c for c in cols if c != "rank"])
    keys = ["source", "arch", "eps", "mode"]
    aligned = df["expect"] * df["spearman"]
    df["rank"] = aligned.groupby([df[k] for k in keys]).rank(ascending=False, method="min", na_option="bottom")
    df["rank"] = df["rank"].astype("Int64")
    return df.sort_values(keys + ["rank", "distance"])[cols].reset_index(drop=True)
