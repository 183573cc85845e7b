"""PGD beside AutoAttack for every source model evaluated with both: how far PGD overstated robustness.

Both numbers come from the same test images (the model's metrics: `autoattack_acc` and
`autoattack.pgd_acc_same_images`), so their difference is the images PGD left standing that
AutoAttack broke, not a difference of image sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .load import Results

COLS = ["source", "arch", "objective", "eps", "seed", "attack_eps", "n_images", "attacks", "pgd_acc",
        "autoattack_acc", "pgd_overstatement"]


def robustness_table(res: Results) -> pd.DataFrame:
    """One row per (source model, attacked eps) with AutoAttack: PGD and AutoAttack accuracy [%] on the
    same images and PGD's overstatement (PGD - AutoAttack, points)."""
    rows = []
    for frame in (res.sources, res.gaussian_sources):
        for _, r in frame.iterrows():
            for col in [c for c in frame.columns if c.startswith("autoattack_acc_")]:
                e = col[len("autoattack_acc_"):]
                aa, pgd = r.get(col, np.nan), r.get(f"pgd_same_images_{e}", np.nan)
                if pd.isna(aa):
                    continue
                rows.append({"source": r["source"], "arch": r["arch"], "objective": r.get("objective"),
                             "eps": r["eps"], "seed": r["seed"], "attack_eps": float(e),
                             "n_images": int(r["autoattack_n"]), "attacks": r["autoattack_attacks"], "pgd_acc": pgd,
                             "autoattack_acc": aa, "pgd_overstatement": pgd - aa})
    return pd.DataFrame(rows, columns=COLS)


def _overstatement(d: pd.DataFrame) -> str:
    """PGD's overstatement over the models of `d`, per attacked eps."""
    parts = []
    for e, g in d.groupby("attack_eps"):
        over = g["pgd_overstatement"]
        n = int(g["n_images"].min())
        parts.append(f"at eps {e:g} by {over.mean():.2f} points on average (min {over.min():.2f}, max "
                     f"{over.max():.2f}; {len(g)} models, at least {n} images each: one image is {100 / n:.1f} points)")
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
