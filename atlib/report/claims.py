"""The claims check: every claim of atlib/reference/claims.md judged on this run's results.

Verdicts: holds / does not hold / inconclusive / not tested. Accuracy effects smaller than
`noise` points, or whose 95% interval includes 0, are inconclusive; so are claims on which
the run's groups (sources, archs, eps) disagree. Each verdict comes with the numbers behind it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps

from .info import inversion_table
from .load import KEY_COLS, Results
from .stats import (FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED, combine, correlation, gap_distance_points,
                    gap_frame, judge, mean_std)

CLAIMS_MD = Path(__file__).resolve().parent.parent / "reference" / "claims.md"
ARCH_SIZE = {"resnet8": 0, "resnet18": 1, "resnet50": 2, "resnet50_imagenet": 2}
NORM_TOL = 0.05  # claim 10: relative change of ||w|| vs eps 0 treated as "no change"
SPEEDUP = 2.0  # claim 13: "much faster" needs at least this ratio (the paper reports ~40x)
MIN_TARGETS = 5  # claim 4: fewer targets give degenerate bootstrap intervals (a monotone 3-point set gives [1, 1])


@dataclass
class Ctx:
    res: Results
    noise: float
    near_far: float
    n_boot: int


def load_claims(path: str | Path = CLAIMS_MD) -> pd.DataFrame:
    """The claims table (columns claim, statement, paper, evidence_needed)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"\d+", cells[0]):
            rows.append({"claim": int(cells[0]), "statement": cells[1], "paper": cells[2],
                         "evidence_needed": cells[3]})
    return pd.DataFrame(rows)


def _groups(res: Results) -> list[tuple[str, str]]:
    return res.experiment_groups()


def _fmt_gap(r) -> str:
    s = f"{r['mean']:+.2f}" if np.isfinite(r["mean"]) else "—"
    return s + (f"±{r['std']:.2f}" if np.isfinite(r.get("std", np.nan)) else "")


def _trend(eps: np.ndarray, values: np.ndarray, expect: int, noise: float = 0.0) -> tuple[str, str]:
    """Monotone trend of values against eps: holds if the last-vs-first change has the expected
    sign beyond `noise` and (with >= 3 eps) Spearman rho has that sign with |rho| >= 0.8."""
    ok = np.isfinite(values)
    eps, values = eps[ok], values[ok]
    if len(eps) < 2:
        return NOT_TESTED, "fewer than 2 eps"
    order = np.argsort(eps)
    eps, values = eps[order], values[order]
    change = values[-1] - values[0]
    rho = float(sps.spearmanr(eps, values)[0]) if len(eps) >= 3 and np.ptp(values) > 0 else np.nan
    text = ", ".join(f"eps {e:g}: {v:.4g}" for e, v in zip(eps, values))
    text += f"; change {change:+.4g}" + (f", Spearman ρ={rho:+.2f}" if np.isfinite(rho) else "")
    if abs(change) <= noise:
        return INCONCLUSIVE, text
    if np.sign(change) != expect:
        return FAILS, text
    if len(eps) >= 3 and not (np.isfinite(rho) and rho * expect >= 0.8):
        return INCONCLUSIVE, text
    return HOLDS, text


# ----------------------------------------------------------------------------- the claims


def claim1(c: Ctx) -> tuple[str, str]:
    s = c.res.sources
    pgd = [k for k in s.columns if k.startswith("pgd_acc_")]
    verdicts, ev = [], []
    for (source, arch), g in s.groupby(["source", "arch"], sort=False):
        g = g[g["natural_acc"].notna()]
        if g.empty or g["eps"].max() == 0 or (g["eps"] == 0).sum() == 0:
            continue
        emax = g["eps"].max()
        pair = g[g["eps"] == 0].merge(g[g["eps"] == emax], on="seed", suffixes=("_0", "_r"))
        v_nat, t_nat = judge(pair["natural_acc_r"] - pair["natural_acc_0"], -1, c.noise)
        d_pgd = pair[[f"{k}_r" for k in pgd]].to_numpy() - pair[[f"{k}_0" for k in pgd]].to_numpy()
        v_pgd, t_pgd = judge(pd.DataFrame(d_pgd).mean(axis=1) if pgd else [], +1, c.noise)
        v = HOLDS if (v_nat == HOLDS and v_pgd == HOLDS) else FAILS if FAILS in (v_nat, v_pgd) else INCONCLUSIVE
        verdicts.append(v)
        per_eps = g.groupby("eps")[["natural_acc"] + pgd].mean()
        ev.append(f"{source} ({arch}) natural acc by eps: "
                  + ", ".join(f"{e:g}: {r['natural_acc']:.1f}" for e, r in per_eps.iterrows())
                  + f"; eps {emax:g} - eps 0 (paired seeds): natural {t_nat} [{v_nat}], PGD (mean over test eps "
                  + f"{', '.join(k[8:] for k in pgd)}) {t_pgd} [{v_pgd}]")
    return (combine(verdicts), "; ".join(ev)) if ev else (NOT_TESTED, "no source model metrics with eps 0 and eps > 0")


def _near_far(c: Ctx, far: bool) -> tuple[str, str]:
    verdicts, ev = [], []
    for source, arch in _groups(c.res):
        pts = gap_distance_points(c.res.transfers, c.res.distances, source, arch)
        pts = pts[(pts["mode"] == 0) & pts["mean"].notna() & pts["distance"].notna()]
        for eps, p in pts.groupby("eps"):
            if len(p) < 2:
                continue
            q = p["distance"].quantile(c.near_far)
            sel = p[p["distance"] > q] if far else p[p["distance"] <= q]
            if sel.empty:
                continue
            v, t = judge(sel["mean"], +1 if far else -1, c.noise)
            verdicts.append(v)
            ev.append(f"{source} ({arch}) eps {eps:g}, mode 0, {'far' if far else 'near'} targets (EMD "
                      f"{'>' if far else '<='} {q:.3g}, the {c.near_far:g} quantile): "
                      + ", ".join(f"{r['target']} {_fmt_gap(r)} (EMD {r['distance']:.3g})"
                                  for _, r in sel.sort_values("distance").iterrows())
                      + f"; over targets {t} [{v}]")
    if not ev:
        return NOT_TESTED, "no mode-0 transfers with both a gap and a distance"
    return combine(verdicts), "; ".join(ev)


def claim2(c: Ctx) -> tuple[str, str]:
    return _near_far(c, far=True)


def claim3(c: Ctx) -> tuple[str, str]:
    return _near_far(c, far=False)


def claim4(c: Ctx) -> tuple[str, str]:
    verdicts, ev = [], []
    for source, arch in _groups(c.res):
        pts = gap_distance_points(c.res.transfers, c.res.distances, source, arch)
        for (eps, mode), p in pts[pts["mode"] == pts["mode"].min()].groupby(["eps", "mode"]):
            r = correlation(p["distance"], p["mean"], c.n_boot)
            if not np.isfinite(r["spearman"]):
                ev.append(f"{source} ({arch}) eps {eps:g} mode {mode}: {r['n']} targets, too few or constant")
                continue
            lo, hi = r["spearman_lo"], r["spearman_hi"]
            v = (INCONCLUSIVE if r["n"] < MIN_TARGETS else HOLDS if r["spearman"] > 0 and lo > 0
                 else FAILS if r["spearman"] < 0 and hi < 0 else INCONCLUSIVE)
            verdicts.append(v)
            ev.append(f"{source} ({arch}) eps {eps:g} mode {mode}: Spearman ρ={r['spearman']:+.2f} "
                      f"[95% bootstrap CI {lo:+.2f}, {hi:+.2f}; {c.n_boot} resamples over {r['n']} targets], "
                      f"Pearson r={r['pearson']:+.2f} [{r['pearson_lo']:+.2f}, {r['pearson_hi']:+.2f}]"
                      + (f"; fewer than {MIN_TARGETS} targets: not enough for a verdict" if r["n"] < MIN_TARGETS
                         else "") + f" [{v}]")
    if not verdicts:
        return NOT_TESTED, "; ".join(ev) or "no transfers with distances"
    return combine(verdicts), "; ".join(ev)


def claim5(c: Ctx) -> tuple[str, str]:
    gs = mean_std(gap_frame(c.res.transfers), ["source", "arch", "eps", "target", "mode"], "gap")
    gs = gs[gs["mean"].notna()]
    verdicts, ev = [], []
    for _, ab in gs.iterrows():
        if ab["source"] >= ab["target"]:  # each unordered pair once
            continue
        ba = gs[(gs["source"] == ab["target"]) & (gs["target"] == ab["source"]) & (gs["arch"] == ab["arch"])
                & (gs["eps"] == ab["eps"]) & (gs["mode"] == ab["mode"])]
        if ba.empty:
            continue
        asym = ab["mean"] + ba.iloc[0]["mean"]
        v = HOLDS if abs(asym) >= c.noise else INCONCLUSIVE
        verdicts.append(v)
        ev.append(f"{ab['source']}<->{ab['target']} ({ab['arch']}, eps {ab['eps']:g}, mode {ab['mode']}): "
                  f"gap A->B {ab['mean']:+.2f}, B->A {ba.iloc[0]['mean']:+.2f}, sum {asym:+.2f} [{v}]")
    if not ev:
        return NOT_TESTED, "no pair of datasets run in both directions (A->B and B->A)"
    return combine(verdicts), "; ".join(ev)


def claim6(c: Ctx) -> tuple[str, str]:
    g = gap_frame(c.res.transfers).dropna(subset=["gap"])
    verdicts, ev = [], []
    for (source, arch, eps), d in g.groupby(["source", "arch", "eps"], sort=False):
        modes = sorted(d["mode"].unique())
        if len(modes) < 2:
            continue
        # Compare modes on the same (target, seed) pairs only.
        sets = [set(map(tuple, d[d["mode"] == m][["target", "seed"]].to_numpy())) for m in modes]
        common = set.intersection(*sets)
        if not common:
            continue
        keep = d[[(t, s) in common for t, s in d[["target", "seed"]].to_numpy()]]
        per_mode = keep.assign(abs_gap=keep["gap"].abs()).groupby("mode")["abs_gap"].mean()
        vals = per_mode.to_numpy()
        steps = np.diff(vals)
        if (steps < 0).all() and vals[0] - vals[-1] >= c.noise:
            v = HOLDS
        elif (steps > c.noise).any():
            v = FAILS
        else:
            v = INCONCLUSIVE
        verdicts.append(v)
        ev.append(f"{source} ({arch}) eps {eps:g}, mean |gap| on {len(common)} common (target, seed) pairs: "
                  + ", ".join(f"mode {m}: {x:.2f}" for m, x in per_mode.items()) + f" [{v}]")
    if not ev:
        return NOT_TESTED, "no (target, seed) run in two or more modes"
    return combine(verdicts), "; ".join(ev)


def claim7(c: Ctx) -> tuple[str, str]:
    t = c.res.transfers.dropna(subset=["top1"])
    on = KEY_COLS + ["target"]
    m = t[t["mode"] == 0][on + ["top1"]].merge(t[t["mode"] == 1][on + ["top1"]], on=on, suffixes=("_0", "_1"))
    if m.empty:
        return NOT_TESTED, "no transfer run in both mode 0 and mode 1"
    m["boost"] = m["top1_1"] - m["top1_0"]
    verdicts, ev = [], []
    for (source, arch), d in m.groupby(["source", "arch"], sort=False):
        per_target = d.groupby("target")["boost"].mean()
        v, txt = judge(per_target, +1, c.noise)
        verdicts.append(v)
        ev.append(f"{source} ({arch}) top1(mode 1) - top1(mode 0), robust and standard backbones: "
                  + ", ".join(f"{k} {x:+.2f}" for k, x in per_target.items()) + f"; over targets {txt} [{v}]")
    if len(verdicts) < 2:
        ev.append("'most for simple sources' needs two or more sources: not assessed")
    return combine(verdicts), "; ".join(ev)


def claim8(c: Ctx) -> tuple[str, str]:
    gs = mean_std(gap_frame(c.res.transfers), ["source", "arch", "eps", "target", "mode"], "gap")
    gs = gs[gs["mean"].notna()]
    verdicts, ev = [], []
    for source, d in gs.groupby("source", sort=False):
        archs = sorted(d["arch"].unique(), key=lambda a: ARCH_SIZE.get(a, 99))
        for small, large in zip(archs, archs[1:]):
            if ARCH_SIZE.get(small) == ARCH_SIZE.get(large):
                continue
            m = d[d["arch"] == small].merge(d[d["arch"] == large], on=["eps", "target", "mode"],
                                            suffixes=("_s", "_l"))
            if m.empty:
                continue
            diff = m["mean_l"] - m["mean_s"]
            v, txt = judge(diff, +1, c.noise)
            verdicts.append(v)
            ev.append(f"{source}: gap({large}) - gap({small}) per (target, mode): "
                      + ", ".join(f"{r['target']}/m{r['mode']} {r['mean_s']:+.1f}->{r['mean_l']:+.1f}"
                                  for _, r in m.iterrows())
                      + f"; {txt} [{v}] (narrowing where standard wins and widening where robust wins both "
                        "mean gap(large) > gap(small))")
    if not ev:
        return NOT_TESTED, "no source transferred with two architectures of different size"
    return combine(verdicts), "; ".join(ev)


def _per_eps_trend(df: pd.DataFrame, col: str, expect: int, label: str, noise: float = 0.0
                   ) -> tuple[list[str], list[str]]:
    verdicts, ev = [], []
    d = df.dropna(subset=[col]) if col in df else df.iloc[0:0]
    for (source, arch), g in d.groupby(["source", "arch"], sort=False):
        m = g.groupby("eps")[col].mean()
        v, txt = _trend(m.index.to_numpy(float), m.to_numpy(float), expect, noise)
        if v != NOT_TESTED:
            verdicts.append(v)
            ev.append(f"{source} ({arch}) {label} (mean over seeds): {txt} [{v}]")
    return verdicts, ev


def claim9(c: Ctx) -> tuple[str, str]:
    v, ev = _per_eps_trend(c.res.fisher, "log_variance_mean", +1, "mean log-variance of Σ*")
    return (combine(v), "; ".join(ev)) if ev else (NOT_TESTED, "no Fisher summaries for two or more eps")


def _final_norms(res: Results) -> pd.DataFrame:
    h = res.histories
    if not h.empty and "weight_norm" in h and h["weight_norm"].notna().any():
        return h.dropna(subset=["weight_norm"]).sort_values("epoch").groupby(KEY_COLS, as_index=False).last()
    return res.sources.dropna(subset=["weight_norm"])


def claim10(c: Ctx) -> tuple[str, str]:
    f = _final_norms(c.res)
    verdicts, ev = [], []
    for (source, arch), g in f.groupby(["source", "arch"], sort=False):
        m = g.groupby("eps")["weight_norm"].mean()
        if 0.0 not in m.index or len(m) < 2:
            continue
        rel = m / m[0.0] - 1
        low, high = rel[(rel.index > 0) & (rel.index <= 1)], rel[rel.index > 1]
        text = ", ".join(f"eps {e:g}: {m[e]:.4g} ({r:+.1%})" for e, r in rel.items())
        if (low < -NORM_TOL).any() or (high > -NORM_TOL).any():
            v = FAILS
        elif high.empty:
            v = INCONCLUSIVE
            text += (f"; no eps > 1 run: only the low regime is tested (|change| within {NORM_TOL:.0%} "
                     "or up, as claimed), the fall above eps 1 is not")
        else:
            v = HOLDS
        verdicts.append(v)
        ev.append(f"{source} ({arch}) final ‖w‖ (relative to eps 0): {text} [{v}]")
    return (combine(verdicts), "; ".join(ev)) if ev else (NOT_TESTED, "no weight norms for eps 0 and eps > 0")


def claim11(c: Ctx) -> tuple[str, str]:
    r = c.res.representation
    v1, e1 = _per_eps_trend(r, "knn_acc", -1, "kNN accuracy [%]", c.noise)
    v2, e2 = _per_eps_trend(r, "silhouette", -1, "silhouette")
    if not (e1 or e2):
        return NOT_TESTED, "no representation summaries for two or more eps"
    return combine(v1 + v2), "; ".join(e1 + e2)


def claim12(c: Ctx) -> tuple[str, str]:
    f = c.res.fisher.dropna(subset=["lambda1", "trace_over_n"])
    if f.empty:
        return NOT_TESTED, "no input-Fisher estimates"
    ok = f["trace_over_n"] <= f["lambda1"]
    text = ", ".join(f"{r['source']} eps {r['eps']:g} s{r['seed']}: tr/n {r['trace_over_n']:.3g} vs λ1 "
                     f"{r['lambda1']:.3g}" for _, r in f.iterrows())
    return (HOLDS if ok.all() else FAILS), f"{int(ok.sum())}/{len(f)} models have tr(S)/n ≤ λ1 ({text})"


def claim13(c: Ctx) -> tuple[str, str]:
    inv = inversion_table(c.res)
    var = inv[inv["method"] == "variational"] if not inv.empty else inv
    if var.empty or var["plain_final_loss"].isna().all():
        return NOT_TESTED, "no plain and variational inversion curves of the same model"
    ratios = var["ratio"].fillna(0.0)  # never reaching plain's final loss counts as no speed-up
    med = float(ratios.median())
    v = HOLDS if med >= SPEEDUP else FAILS if med < 1 else INCONCLUSIVE
    text = ", ".join(f"{r['source']} eps {r['eps']:g} s{r['seed']}: "
                     + (f"{int(r['steps_to_plain_final'])} vs {int(r['plain_steps'])} steps (x{r['ratio']:.1f})"
                        if np.isfinite(r["ratio"]) else "never reached")
                     for _, r in var.iterrows())
    return v, (f"steps variational inversion needs to reach plain's final loss vs plain's steps: {text}; median "
               f"ratio x{med:.1f} (paper: ~x40; 'much faster' here means ≥ x{SPEEDUP:g})")


def claim14(c: Ctx) -> tuple[str, str]:
    inv = inversion_table(c.res)
    quality = [k for k in ("psnr", "ssim", "pixel_mse") if k in inv.columns and inv[k].notna().any()]
    if not quality:
        rel = ""
        if not inv.empty:
            p = inv[inv["method"] == "plain"].groupby("eps").apply(
                lambda d: (d["final_loss"] / d["initial_loss"]).mean(), include_groups=False)
            rel = "; for context, plain final/initial L_inv by eps: " + ", ".join(
                f"{e:g}: {x:.3g}" for e, x in p.items())
        return NOT_TESTED, ("no pixel-space quality measure of reconstructions against the original images in "
                            "the inversion summaries (psnr, ssim or pixel_mse); L_inv is measured in each "
                            "model's own feature space, so it does not compare quality across eps" + rel)
    key = quality[0]
    better = -1 if key == "pixel_mse" else +1
    verdicts, ev = [], []
    for (source, arch, method), d in inv.dropna(subset=[key]).groupby(["source", "arch", "method"]):
        m = d.groupby("eps")[key].mean()
        if len(m) < 3:
            continue
        best = m.idxmax() if better > 0 else m.idxmin()
        v = HOLDS if m.index.min() < best < m.index.max() else FAILS
        verdicts.append(v)
        ev.append(f"{source} ({arch}) {method} {key} by eps: "
                  + ", ".join(f"{e:g}: {x:.3g}" for e, x in m.items()) + f"; best eps {best:g} [{v}]")
    if not ev:
        return NOT_TESTED, f"{key} available for fewer than 3 eps"
    return combine(verdicts), "; ".join(ev)


def claim15(c: Ctx) -> tuple[str, str]:
    t = c.res.transfers
    pgd = [k for k in t.columns if k.startswith("pgd_acc_")]
    if not pgd or t[pgd].notna().sum().sum() == 0:
        return NOT_TESTED, "no PGD accuracy of transferred models"
    on = ["source", "arch", "target", "mode", "seed"]
    st = t[t["eps"] == 0][on + pgd]
    rob = t[t["eps"] > 0][on + ["eps"] + pgd]
    m = rob.merge(st, on=on, suffixes=("_r", "_s"))
    m["diff"] = pd.DataFrame(m[[f"{k}_r" for k in pgd]].to_numpy() - m[[f"{k}_s" for k in pgd]].to_numpy()).mean(axis=1)
    verdicts, ev = [], []
    for (source, arch, eps, mode), d in m.dropna(subset=["diff"]).groupby(["source", "arch", "eps", "mode"]):
        per_target = d.groupby("target")["diff"].mean()
        v, txt = judge(per_target, +1, c.noise)
        if mode == d["mode"].min():
            verdicts.append(v)
        ev.append(f"{source} ({arch}) eps {eps:g} mode {mode}: PGD acc robust - standard (mean over test eps "
                  f"{', '.join(k[8:] for k in pgd)}): " + ", ".join(f"{k} {x:+.1f}" for k, x in per_target.items())
                  + f"; {txt} [{v}]")
    if not ev:
        return NOT_TESTED, "no robust/standard pair with PGD accuracy"
    return combine(verdicts), "; ".join(ev)


CHECKS: dict[int, Callable[[Ctx], tuple[str, str]]] = {
    1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7, 8: claim8, 9: claim9,
    10: claim10, 11: claim11, 12: claim12, 13: claim13, 14: claim14, 15: claim15,
}


def check_claims(res: Results, noise: float = 2.0, near_far: float = 0.5, n_boot: int = 1000,
                 claims_md: str | Path = CLAIMS_MD) -> pd.DataFrame:
    """One row per claim: claim, statement, paper, verdict, evidence."""
    ctx = Ctx(res, noise, near_far, n_boot)
    rows = []
    for _, cl in load_claims(claims_md).iterrows():
        fn = CHECKS.get(int(cl["claim"]))
        verdict, evidence = fn(ctx) if fn else (NOT_TESTED, "no check implemented for this claim")
        rows.append({"claim": int(cl["claim"]), "statement": cl["statement"], "paper": cl["paper"],
                     "verdict": verdict, "evidence": evidence})
    return pd.DataFrame(rows)


def claims_markdown(claims: pd.DataFrame, noise: float) -> str:
    head = ("# Claims check\n\nEvery claim of the paper (atlib/reference/claims.md) judged on this run's results.\n"
            f"Verdicts: **{HOLDS}**; **{FAILS}**; **{INCONCLUSIVE}** (the effect is within noise: |difference| < "
            f"{noise:g} points, or its 95% interval includes 0, or the run's sources/archs/eps disagree); "
            f"**{NOT_TESTED}** (this run has no data for it). Gaps are top1(robust) - top1(standard) in points, "
            "mean ± std over seeds; intervals over targets are t-intervals, correlation intervals bootstrap.\n\n")
    counts = claims["verdict"].value_counts()
    head += "Summary: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".\n\n"
    lines = ["| # | claim | paper | verdict | evidence |", "|---|---|---|---|---|"]
    for _, r in claims.iterrows():
        cells = [str(r["claim"]), r["statement"], r["paper"], f"**{r['verdict']}**", r["evidence"]]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return head + "\n".join(lines) + "\n"
