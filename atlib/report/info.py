"""Per-model information summaries: Fisher, representation separability, inversion speed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from atlib.info.invert import speedup_vs_plain
from atlib.report.load import KEY_COLS, Results


def information_table(res: Results) -> pd.DataFrame:
    """One row per analysed model: Fisher (weights and input), kNN accuracy, silhouette, final ||w||."""
    f, r = res.fisher, res.representation
    on = KEY_COLS + ["objective"]  # objective follows from the key: merged on, not duplicated
    out = f.merge(r, on=on, how="outer") if not f.empty or not r.empty else pd.DataFrame(columns=on)
    h = res.histories
    if not h.empty and "weight_norm" in h:
        final = h.sort_values("epoch").groupby(KEY_COLS, as_index=False).last()[KEY_COLS + ["weight_norm"]]
        out = out.merge(final.rename(columns={"weight_norm": "final_weight_norm"}), on=KEY_COLS, how="left")
    return out.sort_values(["source", "arch", "seed", "eps"]).reset_index(drop=True)


PLATEAU_TAIL, PLATEAU_DROP = 0.2, 0.01


def plateaued(loss: np.ndarray) -> bool:
    """True when the loss fell by less than 1% (relative) over the last 20% of the steps: the
    optimizer has converged within its budget, and a faster method can only tie with it."""
    k = int(len(loss) * (1 - PLATEAU_TAIL))
    start = float(loss[min(k, len(loss) - 1)])
    return bool(start <= 0 or (start - float(loss[-1])) / start < PLATEAU_DROP)


def inversion_images(res: Results) -> pd.DataFrame:
    """Per model, method and test image: PSNR and SSIM of the reconstruction (rows with a value)."""
    return res.invert_images.dropna(subset=["psnr"]).reset_index(drop=True)


def inversion_table(res: Results) -> pd.DataFrame:
    """Per model and method: final loss, and the steps a method needs to reach the loss plain
    inversion reaches with its whole budget (`ratio` = plain's steps / the method's steps)."""
    cols = KEY_COLS + ["method", "final_loss", "initial_loss", "plain_final_loss", "plain_steps",
                       "steps_to_plain_final", "ratio", "plain_converged"]
    c = res.invert_curves
    rows = []
    for key, g in c.groupby(KEY_COLS, sort=False):
        curves = {m: d.sort_values("step")["loss"].to_numpy() for m, d in g.groupby("method")}
        plain = curves.get("plain")
        for method, loss in curves.items():
            row = dict(zip(KEY_COLS, key), method=method, final_loss=float(loss[-1]), initial_loss=float(loss[0]))
            if plain is not None:
                s = speedup_vs_plain(plain, loss)
                row.update(plain_final_loss=s["plain_final_loss"], plain_steps=s["plain_steps"],
                           plain_converged=plateaued(plain),
                           steps_to_plain_final=np.nan if s["steps"] is None else s["steps"],
                           ratio=np.nan if s["ratio"] is None else s["ratio"])
            rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    quality = [k for k in ("pixel_mse", "psnr", "ssim") if k in res.invert.columns]
    if quality and not out.empty:
        out = out.merge(res.invert[KEY_COLS + ["method"] + quality], on=KEY_COLS + ["method"], how="left")
    return out
