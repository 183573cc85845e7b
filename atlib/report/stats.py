"""Gaps, correlations with bootstrap intervals, and the verdict rule of the claims check."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

GROUP = ["source", "arch", "target", "mode"]


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
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    return out


def gap_summary(transfers: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds of the gap, per (source, arch, eps, target, mode)."""
    return mean_std(gap_frame(transfers), ["source", "arch", "eps", "target", "mode"], "gap")


def standard_distance(distances: pd.DataFrame, source: str, arch: str, column: str = "emd") -> pd.Series:
    """Distance of each dataset from `source` under the standard (eps 0) probes, mean over seeds."""
    d = distances[(distances["probe_source"] == source) & (distances["probe_arch"] == arch)
                  & (distances["probe_eps"] == 0)]
    return d.groupby("dataset")[column].mean()


def correlation(x, y, n_boot: int, seed: int = 0) -> dict:
    """Spearman and Pearson correlation of y with x, with percentile bootstrap 95% intervals
    (resampling the points, i.e. the targets, with replacement; degenerate resamples skipped)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(len(x))}
    for name in ("spearman", "pearson"):
        out.update({name: np.nan, f"{name}_p": np.nan, f"{name}_lo": np.nan, f"{name}_hi": np.nan})
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    fns = {"spearman": stats.spearmanr, "pearson": stats.pearsonr}
    for name, fn in fns.items():
        r = fn(x, y)
        out[name], out[f"{name}_p"] = float(r[0]), float(r[1])
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {"spearman": [], "pearson": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            continue
        for name, fn in fns.items():
            boots[name].append(float(fn(x[i], y[i])[0]))
    for name, vals in boots.items():
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            out[f"{name}_lo"], out[f"{name}_hi"] = (float(v) for v in np.percentile(vals, [2.5, 97.5]))
    return out


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and its 95% t-interval (NaN bounds for fewer than 2 values)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, np.nan, np.nan
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h


HOLDS, FAILS, INCONCLUSIVE, NOT_TESTED = "holds", "does not hold", "inconclusive", "not tested"


def judge(values, expect: int, noise: float) -> tuple[str, str]:
    """Verdict on differences `values` expected to have sign `expect` (+1 or -1).

    holds / does not hold when the mean is beyond `noise` in the expected / opposite
    direction and either its 95% interval (when there are >= 2 values) excludes 0 or every
    value is beyond `noise` in that same direction; otherwise inconclusive.
    Returns (verdict, "mean m [lo, hi], n=k").
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    m, lo, hi = mean_ci(v)
    n = len(v)
    text = f"mean {m:+.2f}" + (f" [95% CI {lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else "") + f", n={n}"
    if n == 0:
        return NOT_TESTED, "no data"
    excludes_zero = not np.isfinite(lo) or lo > 0 or hi < 0
    consistent = bool((np.sign(m) * v >= noise).all())
    if abs(m) < noise or not (excludes_zero or consistent):
        return INCONCLUSIVE, text
    return (HOLDS if np.sign(m) == expect else FAILS), text


def combine(verdicts: list[str]) -> str:
    """One verdict from several groups: unanimous, else inconclusive (mixed)."""
    tested = [v for v in verdicts if v != NOT_TESTED]
    if not tested:
        return NOT_TESTED
    return tested[0] if all(v == tested[0] for v in tested) else INCONCLUSIVE


def gap_distance_points(transfers: pd.DataFrame, distances: pd.DataFrame, source: str, arch: str,
                        column: str = "emd") -> pd.DataFrame:
    """Per (robust eps, target, mode): gap mean/std/n over seeds and the target's distance from the
    source under the standard probe (`column`: emd or otdd)."""
    t = transfers[(transfers["source"] == source) & (transfers["arch"] == arch)]
    g = mean_std(gap_frame(t), ["eps", "target", "mode"], "gap")
    g["distance"] = g["target"].map(standard_distance(distances, source, arch, column)).astype(float)
    return g


def correlation_table(transfers: pd.DataFrame, distances: pd.DataFrame, groups: list[tuple[str, str]],
                      n_boot: int) -> pd.DataFrame:
    """Gap-versus-distance correlations per (source, arch, robust eps, mode, distance measure)."""
    rows = []
    for source, arch in groups:
        for column in ("emd", "otdd"):
            pts = gap_distance_points(transfers, distances, source, arch, column)
            for (eps, mode), p in pts.groupby(["eps", "mode"], sort=True):
                rows.append({"source": source, "arch": arch, "eps": eps, "mode": int(mode), "distance": column,
                             **correlation(p["distance"], p["mean"], n_boot)})
    cols = ["source", "arch", "eps", "mode", "distance", "n", "spearman", "spearman_lo", "spearman_hi",
            "spearman_p", "pearson", "pearson_lo", "pearson_hi", "pearson_p"]
    return pd.DataFrame(rows, columns=cols)
