"""PGD beside AutoAttack for every source model evaluated with both: how far PGD overstated robustness.

Both numbers come from the same test images (the model's metrics: `autoattack_acc` and
`autoattack.pgd_acc_same_images`), so their difference is the images PGD left standing that
AutoAttack broke, not a difference of image sets. Every accuracy carries its 95% Wilson interval;
PGD's overstatement per model carries the paired interval of its 2x2 table of per-image outcomes
(Newcombe's hybrid score interval, `atlib.core.intervals.paired_difference_interval`), and across models
the mean overstatement carries a t-interval over models.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from atlib.core.intervals import accuracy_interval, paired_difference_interval
from atlib.report.load import Results
from atlib.report.stats import mean_test

COLS = ["source", "arch", "objective", "eps", "seed", "attack_eps", "n_images", "attacks", "pgd_acc", "pgd_lo",
        "pgd_hi", "autoattack_acc", "autoattack_lo", "autoattack_hi", "pgd_only", "autoattack_only",
        "pgd_overstatement", "overstatement_lo", "overstatement_hi"]
CELLS = ("both", "pgd_only", "autoattack_only", "neither")  # the 2x2 table, as robust_eval.paired_table


def _overstatement_interval(r: pd.Series, e: str) -> tuple[float, float]:
    """The paired 95% interval (points) of PGD - AutoAttack from the model's 2x2 table; NaN when its
    metrics predate the table (a difference of two proportions on the same images needs it)."""
    cells = [r.get(f"paired_{c}_{e}", np.nan) for c in CELLS]
    if any(pd.isna(c) for c in cells):
        return math.nan, math.nan
    lo, hi = paired_difference_interval(*(int(c) for c in cells))
    return 100.0 * lo, 100.0 * hi


def _row(r: pd.Series, e: str) -> dict:
    """One model's row at attacked eps `e`: both accuracies with their Wilson intervals (recomputed from the
    accuracy and the image count, so older metrics get them too), the discordant cells and the overstatement."""
    n, aa, pgd = int(r["autoattack_n"]), r[f"autoattack_acc_{e}"], r.get(f"pgd_same_images_{e}", np.nan)
    ci_pgd, ci_aa = accuracy_interval(pgd, n), accuracy_interval(aa, n)
    lo, hi = _overstatement_interval(r, e)
    return {"source": r["source"], "arch": r["arch"], "objective": r.get("objective"), "eps": r["eps"],
            "seed": r["seed"], "attack_eps": float(e), "n_images": n, "attacks": r["autoattack_attacks"],
            "pgd_acc": pgd, "pgd_lo": ci_pgd["lo"], "pgd_hi": ci_pgd["hi"], "autoattack_acc": aa,
            "autoattack_lo": ci_aa["lo"], "autoattack_hi": ci_aa["hi"],
            "pgd_only": r.get(f"paired_pgd_only_{e}", np.nan),
            "autoattack_only": r.get(f"paired_autoattack_only_{e}", np.nan),
            "pgd_overstatement": pgd - aa, "overstatement_lo": lo, "overstatement_hi": hi}


def robustness_table(res: Results) -> pd.DataFrame:
    """One row per (source model, attacked eps) with AutoAttack: PGD and AutoAttack accuracy [%] on the
    same images with their 95% Wilson intervals, the discordant images (robust to PGD only, to AutoAttack
    only), and PGD's overstatement (PGD - AutoAttack, points) with its paired 95% interval."""
    rows = []
    for frame in (res.sources, res.gaussian_sources):
        for _, r in frame.iterrows():
            for col in [c for c in frame.columns if c.startswith("autoattack_acc_")]:
                if not pd.isna(r.get(col, np.nan)):
                    rows.append(_row(r, col[len("autoattack_acc_"):]))
    return pd.DataFrame(rows, columns=COLS)


def _with_interval(v: float, lo: float, hi: float) -> str:
    """"v [lo, hi]"; a missing value or interval says so."""
    if pd.isna(v):
        return "—"
    return f"{v:.2f} [no interval]" if pd.isna(lo) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def robustness_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table for robustness.md: each accuracy and the overstatement as "value [95% CI]" (Wilson for the
    accuracies, paired for the overstatement), and the discordant images as "PGD only / AutoAttack only"."""
    keep = ["source", "arch", "objective", "eps", "seed", "attack_eps", "n_images", "attacks"]
    out = table[keep].copy()
    for name, col, lo, hi in (("PGD [95% Wilson]", "pgd_acc", "pgd_lo", "pgd_hi"),
                              ("AutoAttack [95% Wilson]", "autoattack_acc", "autoattack_lo", "autoattack_hi")):
        out[name] = [_with_interval(*v) for v in table[[col, lo, hi]].itertuples(index=False)]
    cells = table[["pgd_only", "autoattack_only"]].itertuples(index=False)
    out["robust to PGD only / AutoAttack only"] = ["—" if pd.isna(a) else f"{a:.0f} / {b:.0f}" for a, b in cells]
    over = table[["pgd_overstatement", "overstatement_lo", "overstatement_hi"]].itertuples(index=False)
    out["overstatement [95% paired]"] = [_with_interval(*v) for v in over]
    return out


def _spread(over: pd.Series) -> str:
    """The mean overstatement's t-interval over models (`stats.mean_test`), in words."""
    t = mean_test(over, +1, "models", "overstatement")
    if t.n < 2:
        return f"{t.n} model: no t-interval"
    if t.lo == t.hi:  # every model the same: the t-interval has no width, the paired intervals do
        return f"t-interval over {t.n} models: all equal, zero width"
    return f"95% t-interval over {t.n} models [{t.lo:+.2f}, {t.hi:+.2f}]"


def _paired_envelope(g: pd.DataFrame) -> str:
    """The range that every model's paired 95% interval lies in, in words."""
    ok = g.dropna(subset=["overstatement_lo", "overstatement_hi"])
    if ok.empty:
        return "no paired interval: these metrics predate the 2x2 table of per-image outcomes (rerun the evaluation)"
    part = "" if len(ok) == len(g) else f" ({len(ok)} of {len(g)} models; the others predate the 2x2 table)"
    return (f"each model's paired 95% interval (Newcombe) inside [{ok['overstatement_lo'].min():+.1f}, "
            f"{ok['overstatement_hi'].max():+.1f}]{part}")


def _overstatement(d: pd.DataFrame) -> str:
    """PGD's overstatement over the models of `d`, per attacked eps, with its intervals."""
    parts = []
    for e, g in d.groupby("attack_eps"):
        over = g["pgd_overstatement"]
        n = int(g["n_images"].min())
        parts.append(f"at eps {e:g} by {over.mean():.2f} points on average ({_spread(over)}; per model "
                     f"{over.min():.2f} to {over.max():.2f}, {_paired_envelope(g)}; at least {n} images each: one "
                     f"image is {100 / n:.1f} points)")
    return "; ".join(parts)


def robustness_finding(table: pd.DataFrame) -> str:
    """PGD's overstatement over the robust (eps > 0) models, per attacked eps, and over the standard
    ones, where a weak PGD makes their robust accuracy an upper bound (robust-vs-standard gaps then err
    on the small side)."""
    robust, standard = table[table["eps"] > 0], table[table["eps"] == 0]
    if robust.empty:
        return "No robust source model was evaluated with AutoAttack."
    text = (f"AutoAttack ({robust['attacks'].iloc[0]}) against PGD on the same images: on the robust models "
            f"PGD overstated robust accuracy {_overstatement(robust)}.")
    if not standard.empty:
        text += (f" On the standard models it overstated it {_overstatement(standard)}: their PGD accuracies are "
                 "upper bounds, so robust-minus-standard differences measured with PGD err on the small side.")
    return text
