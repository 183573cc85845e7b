"""The claims check: every claim of atlib/reference/claims.md judged on this run's results.

One verdict rule for every line of evidence (`stats.verdict`, stated in `stats.RULE`): "holds" /
"does not hold" need >= 3 independent units and a 95% interval excluding 0; otherwise
"inconclusive"; "not testable here" (with the reason) when the run has no data for the claim.
Each claim returns a `Finding`: the verdict, its headline test (effect, interval, n, test) and
the evidence lines behind it.

One idea: one judge per claim of claims.md, each a short function over the same context (`Ctx`) and
helpers (`_decide`, `_paired`), in the order of claims.md; split, the judges would be read apart from
the claims table and the rule they share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from atlib.report.info import inversion_images, inversion_table
from atlib.report.load import KEY_COLS, Results
from atlib.report.stability import marker, stability
from atlib.report.stats import (
    DISTANCES,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MIN_UNITS,
    NOT_TESTABLE,
    PRIMARY_DISTANCE,
    RULE,
    Nested,
    Test,
    clustered_mean_test,
    combine,
    correlation_test,
    gap_distance_points,
    gap_frame,
    gap_points,
    mean_std,
    mean_test,
)
from atlib.spec.grid import base_set, near_far

CLAIMS_MD = Path(__file__).resolve().parent.parent / "reference" / "claims.md"
ARCH_SIZE = {"resnet8": 0, "resnet18": 1, "resnet50": 2, "resnet50_imagenet": 2}


@dataclass
class Ctx:
    res: Results
    n_boot: int

    def base(self, dataset: str) -> str:
        """The independent base set of a dataset (targets of one base are one cluster)."""
        return base_set(self.res.config, dataset)

    def per_target(self, values: pd.Series) -> Nested:
        """Per-target (or per (target, seed)) values, indexed by target, nested in their base sets."""
        df = values.rename("value").reset_index()
        return Nested.from_frame(df.assign(base=df["target"].map(self.base)), "value")


@dataclass
class Finding:
    """A claim's verdict, its headline test (None when not testable) and the evidence lines."""

    verdict: str
    lines: list[str] = field(default_factory=list)
    test: Test | None = None


def load_claims(path: str | Path = CLAIMS_MD) -> pd.DataFrame:
    """The claims table (columns claim, statement, paper, evidence_needed)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"\d+", cells[0]):
            rows.append({"claim": int(cells[0]), "statement": cells[1], "paper": cells[2],
                         "evidence_needed": cells[3]})
    return pd.DataFrame(rows)


def _decide(tests: list[Test], lines: list[str], reason: str) -> Finding:
    """Verdict from the tests that have enough units (unanimous, else inconclusive); the headline
    is the first of them (or the first test). No test with data: not testable here, with `reason`."""
    tests = [t for t in tests if t.n > 0]
    if not tests:
        return Finding(NOT_TESTABLE, [reason] + lines)
    strong = [t for t in tests if t.n >= MIN_UNITS]
    v = combine([t.verdict for t in strong]) if strong else INCONCLUSIVE
    return Finding(v, lines, (strong or tests)[0])


def _fmt_gap(r) -> str:
    s = f"{r['mean']:+.2f}" if np.isfinite(r["mean"]) else "—"
    return s + (f"±{r['std']:.2f}" if np.isfinite(r.get("std", np.nan)) else "") + f" (n={int(r['n'])})"


def _paired(df: pd.DataFrame, col: str, expect: int, label: str, log: bool = False
            ) -> Iterator[tuple[str, str, float, Test]]:
    """Per (source, arch) and robust eps: col(eps) - col(eps 0) over seeds present at both (paired
    seeds share data order and initialization). log: compare log(col)."""
    d = df.dropna(subset=[col]) if col in df else df.iloc[0:0]
    for (source, arch), g in d.groupby(["source", "arch"], sort=False):
        base = g[g["eps"] == 0].groupby("seed")[col].mean()
        for eps in sorted(e for e in g["eps"].unique() if e > 0):
            rob = g[g["eps"] == eps].groupby("seed")[col].mean()
            common = base.index.intersection(rob.index)
            if len(common) == 0:
                continue
            a, b = rob[common].to_numpy(float), base[common].to_numpy(float)
            diff = np.log(a) - np.log(b) if log else a - b
            yield source, arch, eps, mean_test(diff, expect, "seeds", f"{source} ({arch}) {label}, eps {eps:g} − eps 0")


def _by_n(tests: list[Test]) -> list[Test]:
    """Most units first (then the order given): the best-powered comparison is the headline."""
    return sorted(tests, key=lambda t: -t.n)


def _per_eps_means(df: pd.DataFrame, col: str, fmt: str = ".4g") -> str:
    m = df.dropna(subset=[col]).groupby("eps")[col].agg(["mean", "count"])
    return ", ".join(f"eps {e:g}: {r['mean']:{fmt}} (n={int(r['count'])})" for e, r in m.iterrows())


# ----------------------------------------------------------------------------- transfer claims


def claim1(c: Ctx) -> Finding:
    s = c.res.sources
    pgd = [k for k in s.columns if k.startswith("pgd_acc_")]
    s = s.assign(pgd_mean=s[pgd].mean(axis=1) if pgd else np.nan)
    nat = [t for *_, t in _paired(s, "natural_acc", -1, "natural accuracy [points]")]
    rob = [t for *_, t in _paired(s, "pgd_mean", +1, f"PGD accuracy (mean over test eps {', '.join(k[8:] for k in pgd)})")]
    lines = [f"natural accuracy by eps: {_per_eps_means(s, 'natural_acc', '.1f')}"]
    lines += [t.text() for t in _by_n(nat) + _by_n(rob)]
    f_nat = _decide(_by_n(nat), [], "no source model metrics with eps 0 and eps > 0")
    f_rob = _decide(_by_n(rob), [], "no PGD accuracy of source models")
    if f_nat.verdict == NOT_TESTABLE:
        return Finding(NOT_TESTABLE, f_nat.lines)
    both = [f_nat.verdict, f_rob.verdict]
    v = HOLDS if both == [HOLDS, HOLDS] else FAILS if FAILS in both else INCONCLUSIVE
    return Finding(v, lines, f_nat.test)


def _declared(c: Ctx, source: str, arch: str, far: bool) -> list[str]:
    out: list[str] = []
    for name, exp in c.res.config["experiments"].items():
        if (exp["source"], exp["arch"]) == (source, arch):
            out += [t for t in near_far(c.res.config, name)[1 if far else 0] if t not in out]
    return out


def _near_far(c: Ctx, far: bool) -> Finding:
    tests, lines = [], []
    word = "far" if far else "near"
    for source, arch in c.res.experiment_groups():
        declared = _declared(c, source, arch, far)
        if not declared:
            continue
        pts = gap_points(c.res.transfers, c.res.distances, source, arch, bases=c.base)
        pts = pts[(pts["mode"] == 0) & pts["target"].isin(declared)]
        means = gap_distance_points(c.res.transfers, c.res.distances, source, arch, bases=c.base)
        for eps, p in pts.groupby("eps"):
            t = clustered_mean_test(Nested.from_frame(p, "gap"), +1 if far else -1,
                                    f"{source} ({arch}) eps {eps:g}, mode 0: mean gap over {word} targets [points]")
            tests.append(t)
            m = means[(means["eps"] == eps) & (means["mode"] == 0) & means["target"].isin(declared)]
            lines.append(t.text() + f"; 95% half-width {t.half_width:.2f} points; per base set: "
                         + "; ".join(f"{b}: " + ", ".join(f"{r['target']} {_fmt_gap(r)} (EMD {r['distance']:.3g})"
                                                          for _, r in g.sort_values("distance").iterrows())
                                     for b, g in m.groupby("base")))
    reason = (f"no {word} targets declared for any experiment with mode-0 transfers (experiments.<name>.{word}, "
              "or ladders whose levels define them)")
    return _decide(_by_n(tests), lines, reason)


def claim2(c: Ctx) -> Finding:
    return _near_far(c, far=True)


def claim3(c: Ctx) -> Finding:
    return _near_far(c, far=False)


def claim4(c: Ctx) -> Finding:
    """Decided on the pre-declared primary distance (EMD, the paper's); the others are shown beside it."""
    tests, lines = [], []
    _, primary = DISTANCES[PRIMARY_DISTANCE]
    for source, arch in c.res.experiment_groups():
        pts = {col: gap_points(c.res.transfers, c.res.distances, source, arch, col, c.base)
               for col in DISTANCES if col in c.res.distances}
        main = pts[PRIMARY_DISTANCE]
        for eps, p in main[main["mode"] == 0].groupby("eps"):
            data = Nested.from_frame(p, "gap", "distance")
            if not data.values:
                continue
            t = correlation_test(data, +1, f"{source} ({arch}) eps {eps:g} mode 0: Spearman ρ(gap, {primary})",
                                 c.n_boot)
            tests.append(t)
            lines.append(t.text() + f" (the source excluded; decided on {primary}, the pre-declared primary "
                         "distance)")
            for col, other in pts.items():
                q = Nested.from_frame(other[(other["eps"] == eps) & (other["mode"] == 0)], "gap", "distance")
                if col == PRIMARY_DISTANCE or not q.values:
                    continue
                expect, name = DISTANCES[col]
                lines.append("for comparison, " + correlation_test(q, expect, f"Spearman ρ(gap, {name})",
                                                                   c.n_boot).text())
    return _decide(_by_n(tests), lines, "no mode-0 transfers with both a gap and a distance")


def claim5(c: Ctx) -> Finding:
    g = gap_frame(c.res.transfers).dropna(subset=["gap"])
    tests, lines = [], []
    for (a, b, arch, eps, mode), ab in g.groupby(["source", "target", "arch", "eps", "mode"]):
        if a >= b:
            continue
        ba = g[(g["source"] == b) & (g["target"] == a) & (g["arch"] == arch) & (g["eps"] == eps) & (g["mode"] == mode)]
        m = ab.merge(ba, on="seed", suffixes=("_ab", "_ba"))
        if m.empty:
            continue
        t = mean_test(m["gap_ab"] + m["gap_ba"], 0, "seeds",
                      f"{a}↔{b} ({arch}, eps {eps:g}, mode {mode}): gap(A→B) + gap(B→A)")
        tests.append(t)
        lines.append(t.text())
    sources = sorted(c.res.transfers["source"].unique())
    return _decide(tests, lines, "needs transfers in both directions between two datasets (A→B and B→A); this "
                   f"run's sources are {', '.join(sources) or 'none'} and no target is also a source")


def claim6(c: Ctx) -> Finding:
    gs = mean_std(gap_frame(c.res.transfers), ["source", "arch", "eps", "target", "mode"], "gap").dropna(subset=["mean"])
    tests, lines = [], []
    for (source, arch, eps), d in gs.groupby(["source", "arch", "eps"], sort=False):
        d = d[d["target"] != source]
        wide = d.pivot_table(index="target", columns="mode", values="mean").dropna()
        if wide.shape[1] < 2 or wide.empty:
            continue
        first, last = wide.columns.min(), wide.columns.max()
        t = clustered_mean_test(c.per_target(wide[first].abs() - wide[last].abs()), +1,
                                f"{source} ({arch}) eps {eps:g}: |gap| mode {first} − |gap| mode {last} [points]")
        tests.append(t)
        lines.append(t.text() + "; mean |gap| per mode: "
                     + ", ".join(f"mode {m}: {wide[m].abs().mean():.2f}" for m in wide.columns))
    return _decide(tests, lines, "no target transferred in two or more modes")


def claim7(c: Ctx) -> Finding:
    t = c.res.transfers.dropna(subset=["top1"])
    on = KEY_COLS + ["target"]
    m = t[t["mode"] == 0][on + ["top1"]].merge(t[t["mode"] == 1][on + ["top1"]], on=on, suffixes=("_0", "_1"))
    m = m[m["target"] != m["source"]]
    tests, lines = [], []
    for (source, arch), d in m.groupby(["source", "arch"], sort=False):
        per_target = (d["top1_1"] - d["top1_0"]).groupby(d["target"]).mean()
        test = clustered_mean_test(c.per_target(per_target), +1, f"{source} ({arch}) top1(mode 1) − top1(mode 0), "
                                   "mean over backbones and seeds [points]")
        tests.append(test)
        lines.append(test.text() + "; per target: " + ", ".join(f"{k} {x:+.2f}" for k, x in per_target.items()))
    if len(tests) == 1:
        lines.append("'most for simple sources' needs two or more sources: not assessed")
    return _decide(tests, lines, "no transfer run in both mode 0 and mode 1")


def claim8(c: Ctx) -> Finding:
    gs = mean_std(gap_frame(c.res.transfers), ["source", "arch", "eps", "target", "mode"], "gap").dropna(subset=["mean"])
    tests, lines = [], []
    for source, d in gs.groupby("source", sort=False):
        archs = sorted(d["arch"].unique(), key=lambda a: ARCH_SIZE.get(a, 99))
        for small, large in zip(archs, archs[1:]):
            if ARCH_SIZE.get(small) == ARCH_SIZE.get(large):
                continue
            m = d[d["arch"] == small].merge(d[d["arch"] == large], on=["eps", "target", "mode"], suffixes=("_s", "_l"))
            m = m[m["target"] != source]
            if m.empty:
                continue
            t = clustered_mean_test(c.per_target((m["mean_l"] - m["mean_s"]).groupby(m["target"]).mean()), +1,
                                    f"{source}: gap({large}) − gap({small})")
            tests.append(t)
            lines.append(t.text() + " (narrowing where standard wins and widening where robust wins both mean "
                         "gap(large) > gap(small))")
    archs = sorted(c.res.transfers["arch"].unique())
    return _decide(tests, lines, f"needs one source transferred with two architectures of different size; this "
                   f"run has {', '.join(archs) or 'none'}")


def claim15(c: Ctx) -> Finding:
    t = c.res.transfers
    pgd = [k for k in t.columns if k.startswith("pgd_acc_")]
    if not pgd or t[pgd].notna().sum().sum() == 0:
        return Finding(NOT_TESTABLE, ["no PGD accuracy of transferred models"])
    on = ["source", "arch", "target", "mode", "seed"]
    t = t.assign(pgd_mean=t[pgd].mean(axis=1))
    m = t[t["eps"] > 0][on + ["eps", "pgd_mean"]].merge(t[t["eps"] == 0][on + ["pgd_mean"]], on=on, suffixes=("_r", "_s"))
    m = m[m["target"] != m["source"]].dropna(subset=["pgd_mean_r", "pgd_mean_s"])
    tests, lines = [], []
    for (source, arch, eps, mode), d in m.groupby(["source", "arch", "eps", "mode"]):
        per_seed = (d["pgd_mean_r"] - d["pgd_mean_s"]).groupby([d["target"], d["seed"]]).mean()
        per_target = per_seed.groupby(level="target").mean()
        test = clustered_mean_test(c.per_target(per_seed), +1, f"{source} ({arch}) eps {eps:g} mode {mode}: PGD "
                                   f"accuracy robust − standard backbone (mean over test eps "
                                   f"{', '.join(k[8:] for k in pgd)}) [points]")
        (tests if mode == m["mode"].min() else []).append(test)
        lines.append(test.text() + "; per target: " + ", ".join(f"{k} {x:+.1f}" for k, x in per_target.items()))
    return _decide(_by_n(tests), lines, "no robust/standard pair of transferred models with PGD accuracy")


# ----------------------------------------------------------------------------- information claims


def claim9(c: Ctx) -> Finding:
    f = c.res.fisher
    tests = [t for *_, t in _paired(f, "log_variance_mean", +1, "mean log-variance of Σ*")]
    lines = [f"mean log-variance of Σ* by eps: {_per_eps_means(f, 'log_variance_mean')}"]
    lines += [t.text() for t in _by_n(tests)]
    found = _decide(_by_n(tests), [], "no Fisher summaries of eps 0 and eps > 0 models of the same seed")
    sweep = c.res.fisher_sweep
    verdicts = [found.verdict]
    for budget, s in sweep.groupby("loss_budget"):
        st = _by_n([t for *_, t in _paired(s, "log_variance_mean", +1, f"log-variance at budget {budget:g} nats")])
        if st:
            verdicts.append(_decide(st, [], "").verdict)
            lines.append(f"sensitivity: {st[0].text()}")
    if "loss_increase" in f and f["loss_increase"].notna().any():
        lines.append("calibration: measured training-loss increase under one draw of Q* by eps (budget "
                     f"{f['loss_budget'].iloc[0]:g} nats): {_per_eps_means(f, 'loss_increase', '.3g')}")
    if found.verdict != NOT_TESTABLE and len(set(verdicts)) > 1:
        lines.append("the verdict changes across the β sweep: it hinges on β, so it is inconclusive")
        return Finding(INCONCLUSIVE, lines, found.test)
    return Finding(found.verdict, lines if found.verdict != NOT_TESTABLE else found.lines, found.test)


def _final_norms(res: Results) -> pd.DataFrame:
    h = res.histories
    if not h.empty and "weight_norm" in h and h["weight_norm"].notna().any():
        return h.dropna(subset=["weight_norm"]).sort_values("epoch").groupby(KEY_COLS, as_index=False).last()
    return res.sources.dropna(subset=["weight_norm"])


def claim10(c: Ctx) -> Finding:
    """Two regimes: no fall below eps ~1, a fall above it. The threshold is approximate and depends
    on the data's scale, so eps = 1 itself belongs to neither regime's test."""
    f = _final_norms(c.res)
    rel = [(eps, t) for _, _, eps, t in _paired(f, "weight_norm", -1, "log ‖w‖", log=True)]
    lines = [f"final ‖w‖ by eps: {_per_eps_means(f, 'weight_norm')}"] + [t.text() for _, t in rel]
    if not rel:
        return Finding(NOT_TESTABLE, ["no weight norms of eps 0 and eps > 0 models of the same seed"])
    low = [t for e, t in rel if e < 1 and t.n >= MIN_UNITS]
    high = _by_n([t for e, t in rel if e > 1])
    if any(t.verdict == HOLDS for t in low):  # a significant fall below eps 1 contradicts "only above ~1"
        return Finding(FAILS, lines + ["‖w‖ falls significantly already below eps 1"], low[0])
    if not high or high[0].n < MIN_UNITS:
        at1 = [t for e, t in rel if e == 1]
        lines.append(f"the fall above eps 1 needs ≥ {MIN_UNITS} paired seeds at an eps > 1 (this run has "
                     f"{high[0].n if high else 0}), the flat regime ≥ {MIN_UNITS} at an eps < 1 (this run has "
                     f"{max((t.n for e, t in rel if e < 1), default=0)})"
                     + (f"; at eps 1 itself ‖w‖ changes by {np.expm1(at1[0].effect):+.1%}" if at1 else ""))
        return Finding(INCONCLUSIVE, lines, high[0] if high else rel[0][1])
    return Finding(high[0].verdict, lines, high[0])


def claim11(c: Ctx) -> Finding:
    r = c.res.representation
    knn = _by_n([t for *_, t in _paired(r, "knn_acc", -1, "kNN accuracy [points]")])
    sil = _by_n([t for *_, t in _paired(r, "silhouette", -1, "silhouette")])
    lines = [f"kNN accuracy by eps: {_per_eps_means(r, 'knn_acc', '.1f')}; silhouette by eps: "
             f"{_per_eps_means(r, 'silhouette', '.3f')}"] + [t.text() for t in knn + sil]
    f1 = _decide(knn, [], "no representation summaries of eps 0 and eps > 0 models of the same seed")
    f2 = _decide(sil, [], "")
    if f1.verdict == NOT_TESTABLE:
        return f1
    return Finding(combine([f1.verdict, f2.verdict]), lines, f1.test)


def claim12(c: Ctx) -> Finding:
    """AT vs Gaussian noise at the same eps: log lambda1(AT) - log lambda1(GN) per seed, expected < 0."""
    at, gn = c.res.fisher.dropna(subset=["lambda1"]), c.res.gaussian_fisher.dropna(subset=["lambda1"])
    lines = ["tr(S)/n ≤ λ1(S) holds for every positive semi-definite S (linear algebra, not evidence); what the "
             "paper argues is that AT lowers λ1 more than Gaussian noise of the same norm does"]
    both = pd.concat([at.assign(objective="AT"), gn.assign(objective="GN")], ignore_index=True)
    if not both.empty:
        both = both.assign(ratio=both["lambda1"] / both["trace_over_n"])
        lines.append("n·λ1/tr(S) (how concentrated the input Fisher is) per model: " + ", ".join(
            f"{r['objective']} eps {r['eps']:g} s{r['seed']}: {r['ratio']:.3g}" for _, r in both.iterrows()))
    tests = []
    for (source, arch, eps), g in gn[gn["eps"] > 0].groupby(["source", "arch", "eps"]):
        a = at[(at["source"] == source) & (at["arch"] == arch) & (at["eps"] == eps)].groupby("seed")["lambda1"].mean()
        b = g.groupby("seed")["lambda1"].mean()
        common = a.index.intersection(b.index)
        if len(common):
            t = mean_test(np.log(a[common]) - np.log(b[common]), -1, "seeds",
                          f"{source} ({arch}) eps {eps:g}: log λ1(AT) − log λ1(Gaussian noise)")
            tests.append(t)
            lines.append(t.text() + f" (λ1 ratio AT/GN {np.exp(t.effect):.3g})")
    return _decide(_by_n(tests), lines, "needs models trained with Gaussian noise (train_schedules.<name>.objective: "
                   "gaussian) and adversarially at the same eps and seeds, both with the fisher analysis")


def claim13(c: Ctx) -> Finding:
    inv = inversion_table(c.res)
    var = inv[inv["method"] == "variational"] if not inv.empty else inv
    if var.empty or var["plain_final_loss"].isna().all():
        return Finding(NOT_TESTABLE, ["no plain and variational inversion curves of the same model"])
    budget = c.res.config["invert"]["steps"]
    lines = [", ".join(f"{r['source']} eps {r['eps']:g} s{r['seed']}: plain needs {int(r['plain_steps'])} steps, "
                       + (f"variational {int(r['steps_to_plain_final'])} (x{r['ratio']:.1f})"
                          if np.isfinite(r["ratio"]) else f"variational never reaches it in {budget}")
                       for _, r in var.iterrows())]
    if not var["plain_converged"].eq(False).any():
        lines.append("plain inversion converged within its budget for every model (its loss stopped falling), so "
                     "'reaches plain's final loss faster' compares against a plateau; raise invert.steps")
    verdict, t, line = _censored_speedup(var, budget)
    return Finding(verdict, lines + [line], t)


def _censored_speedup(var: pd.DataFrame, budget: int) -> tuple[str, Test, str]:
    """Claim 13's verdict, headline test and evidence line, honest both ways about censored models.

    A model whose variational inversion never reaches plain's final loss within the budget is right-
    censored: its ratio lies anywhere in (0, plain_steps / (budget + 1)]. At the bound most favourable to
    the claim it is that upper end; at the least favourable one it is arbitrarily slow, so "faster" cannot
    hold while any model is censored. Holds only if the least favourable test holds; does not hold only if
    the most favourable test does not hold; otherwise inconclusive."""
    censored = var["ratio"].isna() & var["plain_steps"].notna()
    ratio = var["ratio"].fillna(var["plain_steps"] / (budget + 1))
    label = "log(steps plain / steps variational) to plain's final loss"
    speed = "geometric-mean speed-up x{:.2f}; paper: ~x40"
    if not censored.any():  # both bounds are the observed ratios
        t = mean_test(np.log(ratio), +1, "models", label)
        return t.verdict, t, f"{t.text()} ({speed.format(np.exp(t.effect))}; no model censored)"
    t = mean_test(np.log(ratio), +1, "models", f"{label}, censored models at the bound most favourable to the claim")
    verdict = FAILS if t.verdict == FAILS else INCONCLUSIVE
    why = ("it does not hold even at the most favourable bound" if verdict == FAILS else
           "inconclusive: it holds only with no model censored, and does not hold only if it fails at the most "
           "favourable bound")
    return verdict, t, (f"{t.text()} ({speed.format(np.exp(t.effect))}); {int(censored.sum())} of {t.n} models "
                        f"never reach plain's final loss in {budget} steps (right-censored), counted above at their "
                        "most favourable bound plain steps / (budget + 1); at the least favourable bound a censored "
                        f"model is arbitrarily slow and 'faster' cannot hold: {why}")


PRIMARY_INVERSION = "plain"  # Figure 9 inverts with Eq. 3; the other methods are shown beside it


def _optimum_test(d: pd.DataFrame, label: str) -> tuple[Test, Test, str] | None:
    """PSNR at the best interior eps minus PSNR at the smallest and at the largest eps, per image.
    The optimum is picked on the even-indexed images and tested on the odd ones, so the selection
    does not inflate the tests."""
    wide = d.pivot_table(index="image", columns="eps", values="psnr").dropna()
    eps = sorted(wide.columns)
    if len(eps) < 3 or len(wide) < 2 * MIN_UNITS:
        return None
    pick, held = wide.iloc[::2], wide.iloc[1::2]
    best = max(eps[1:-1], key=lambda e: pick[e].mean())
    low = mean_test(held[best] - held[eps[0]], +1, "images", f"{label}: PSNR(eps {best:g}) − PSNR(eps {eps[0]:g}) [dB]")
    high = mean_test(held[best] - held[eps[-1]], +1, "images",
                     f"{label}: PSNR(eps {best:g}) − PSNR(eps {eps[-1]:g}) [dB]")
    note = ("; mean PSNR by eps: " + ", ".join(f"{e:g}: {wide[e].mean():.2f}" for e in eps)
            + f"; optimum eps {best:g} picked on {len(pick)} images, tested on {len(held)} others")
    return low, high, note


def claim14(c: Ctx) -> Finding:
    """Holds when the interior optimum beats both ends; does not hold when robust training does not
    help inversion at all (the best interior eps is worse than eps 0); quality still rising at the
    largest eps means the optimum, if any, lies beyond the sweep: inconclusive, never 'does not hold'."""
    img = inversion_images(c.res)
    if img.empty:
        return Finding(NOT_TESTABLE, ["no per-image pixel-space quality (PSNR/SSIM) of reconstructions"])
    verdicts, lines, head = [], [], None
    for (source, arch, seed, method), d in img.groupby(["source", "arch", "seed", "method"]):
        found = _optimum_test(d, f"{source} ({arch}) {method} inversion")
        if found is None:
            continue
        low, high, note = found
        aside = "" if method == PRIMARY_INVERSION else " (beside the verdict)"
        lines.append(f"{low.text()}; {high.text()}{note}{aside}")
        if method != PRIMARY_INVERSION:
            continue
        head = head or (low if low.verdict != HOLDS else high)
        if low.verdict == HOLDS and high.verdict == HOLDS:
            verdicts.append(HOLDS)
        elif low.verdict == FAILS:
            verdicts.append(FAILS)
        else:
            if high.verdict == FAILS:
                lines.append("quality still rises at the largest eps of the sweep: the optimum, if any, lies "
                             "beyond it; add a larger eps to test the decline")
            verdicts.append(INCONCLUSIVE)
    if not verdicts:
        return Finding(NOT_TESTABLE, [f"needs per-image PSNR of {PRIMARY_INVERSION} reconstructions for 3 or more "
                                      f"eps and at least {2 * MIN_UNITS} images"] + lines)
    return Finding(combine(verdicts), lines, head)


CHECKS: dict[int, Callable[[Ctx], Finding]] = {
    1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7, 8: claim8, 9: claim9,
    10: claim10, 11: claim11, 12: claim12, 13: claim13, 14: claim14, 15: claim15,
}


def _judge(res: Results, n_boot: int, claims_md: str | Path) -> pd.DataFrame:
    """One row per claim: claim, statement, paper, verdict, effect, lo, hi, n, unit, test, evidence."""
    ctx = Ctx(res, n_boot)
    rows = []
    for _, cl in load_claims(claims_md).iterrows():
        fn = CHECKS.get(int(cl["claim"]))
        f = fn(ctx) if fn else Finding(NOT_TESTABLE, ["no check implemented for this claim"])
        t = f.test
        rows.append({"claim": int(cl["claim"]), "statement": cl["statement"], "paper": cl["paper"],
                     "verdict": f.verdict, "effect": t.effect if t else np.nan, "lo": t.lo if t else np.nan,
                     "hi": t.hi if t else np.nan, "n": t.n if t else 0, "unit": t.unit if t else "",
                     "test": (t.method + (f" ({t.label})" if t.label else "")) if t else "",
                     "evidence": "; ".join(f.lines)})
    return pd.DataFrame(rows)


def check_claims(res: Results, n_boot: int = 1000, claims_md: str | Path = CLAIMS_MD,
                 stable: bool = True) -> pd.DataFrame:
    """One row per claim: claim, statement, paper, verdict, stability (stability_loso,
    stability_boot, draws: see atlib.report.stability), effect, lo, hi, n, unit, test, evidence.
    stable=False skips the stability columns (each draw judges every claim again)."""
    claims = _judge(res, n_boot, claims_md)
    if not stable:
        return claims
    stab = stability(res, lambda r: _judge(r, n_boot, claims_md), claims)
    out = claims.merge(stab, on="claim", how="left")
    first = ["claim", "statement", "paper", "verdict", "stability", "stability_loso", "stability_boot", "draws"]
    return out[first + [c for c in out.columns if c not in first]]


def effect_text(r) -> str:
    """'+1.2 [95% CI +0.3, +2.1]' or '—'."""
    if not np.isfinite(r["effect"]):
        return "—"
    ci = f" [{r['lo']:+.3g}, {r['hi']:+.3g}]" if np.isfinite(r["lo"]) and np.isfinite(r["hi"]) else " [no CI]"
    return f"{r['effect']:+.3g}{ci}"


def stability_text(r) -> str:
    """'fragile 0.71 (leave-one-out 0.67, bootstrap 0.70)', or '—' when nothing was measured."""
    if "stability" not in r:
        return "—"
    m = marker(r["verdict"], r["stability"])
    if not m or not np.isfinite(r["stability"]):
        return m or "—"
    parts = [f"{k} {r[c]:.2f}" for k, c in (("leave-one-seed-out", "stability_loso"), ("seed bootstrap",
                                                                                     "stability_boot"))
             if np.isfinite(r[c])]
    return f"{m} ({', '.join(parts)})"


def claims_markdown(claims: pd.DataFrame) -> str:
    head = ("# Claims check\n\nEvery claim of the paper (atlib/reference/claims.md) judged on this run's results.\n\n"
            f"**The verdict rule.** {RULE}\n\nGaps are top1(robust) − top1(standard) in points; the source is never "
            "counted as a target.\n\n")
    counts = claims["verdict"].value_counts()
    head += "Summary: " + ", ".join(f"{n} {v}" for v, n in counts.items())
    if "stability" in claims:
        fragile = [str(r["claim"]) for _, r in claims.iterrows() if marker(r["verdict"], r["stability"])
                   and not marker(r["verdict"], r["stability"]).startswith("stable")]
        head += f"; fragile (stability < 0.95, or unmeasured): {', '.join(fragile) or 'none'}"
    head += ".\n\n"
    lines = ["| # | claim | paper | verdict | stability | effect [95% CI] | n | test | evidence |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in claims.iterrows():
        cells = [r["claim"], r["statement"], r["paper"], f"**{r['verdict']}**", stability_text(r), effect_text(r),
                 f"{r['n']} {r['unit']}".strip() if r["n"] else "—", r["test"] or "—", r["evidence"]]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return head + "\n".join(lines) + "\n"
