"""Graded target ladders: how the task distance and the robust-minus-standard gap move with the
strength of one transform (a finding, whichever way it goes; not a claims verdict on its own)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from atlib.report.figures import save  # noqa: E402
from atlib.report.load import Results  # noqa: E402
from atlib.report.stats import gap_frame, mean_test, standard_distance  # noqa: E402
from atlib.spec.grid import ladder_levels  # noqa: E402

COLS = ["source", "arch", "eps", "mode", "ladder", "level", "dataset", "strength", "emd", "gap", "gap_lo",
        "gap_hi", "n_seeds"]


def ladder_table(res: Results) -> pd.DataFrame:
    """One row per (source, arch, robust eps, mode, ladder level): strength, EMD from the source
    (standard probe) and the gap with its 95% t-interval over seeds."""
    levels = ladder_levels(res.config)
    g = gap_frame(res.transfers).dropna(subset=["gap"])
    rows = []
    for (source, arch, eps, mode), d in g.groupby(["source", "arch", "eps", "mode"]):
        emd = standard_distance(res.distances, source, arch)
        for ladder, steps in levels.items():
            for k, (dataset, strength) in enumerate(steps, 1):
                gaps = d[d["target"] == dataset]["gap"]
                if gaps.empty:
                    continue
                t = mean_test(gaps, +1, "seeds", "gap")
                rows.append({"source": source, "arch": arch, "eps": eps, "mode": int(mode), "ladder": ladder,
                             "level": k, "dataset": dataset, "strength": strength,
                             "emd": float(emd.get(dataset, np.nan)), "gap": t.effect, "gap_lo": t.lo,
                             "gap_hi": t.hi, "n_seeds": t.n})
    return pd.DataFrame(rows, columns=COLS)


def ladder_findings(table: pd.DataFrame) -> list[str]:
    """One sentence per ladder: how EMD and gap change from the weakest to the strongest level."""
    out = []
    for (source, arch, eps, mode, ladder), d in table.groupby(["source", "arch", "eps", "mode", "ladder"]):
        d = d.sort_values("level")
        first, last = d.iloc[0], d.iloc[-1]
        mono = lambda v: "rises" if np.all(np.diff(v) > 0) else "falls" if np.all(np.diff(v) < 0) else "is not monotone"
        out.append(f"{ladder} ({source} {arch}, eps {eps:g}, mode {mode}): EMD {mono(d['emd'].to_numpy())} "
                   f"({first['emd']:.3g} → {last['emd']:.3g}) and the gap {mono(d['gap'].to_numpy())} "
                   f"({first['gap']:+.2f} → {last['gap']:+.2f} points) over strengths "
                   + ", ".join(f"{s:g}" for s in d["strength"]))
    return out


def ladder_figure(table: pd.DataFrame, out: Path) -> list[Path]:
    """Per ladder: gap (95% CI over seeds) and EMD against the transform strength."""
    t = table[table["mode"] == table["mode"].min()] if not table.empty else table
    panels = list(t.groupby(["ladder"], sort=False))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, ((ladder,), d) in zip(axes[0], panels):
        for i, (eps, e) in enumerate(d.groupby("eps")):
            e = e.sort_values("strength")
            err = np.vstack([e["gap"] - e["gap_lo"], e["gap_hi"] - e["gap"]])
            ax.errorbar(e["strength"], e["gap"], yerr=np.nan_to_num(err), fmt="o-", capsize=3, color=f"C{i}",
                        label=f"gap, eps {eps:g}")
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("transform strength")
        ax.set_ylabel("gap [points]")
        twin = ax.twinx()
        e = d.drop_duplicates("dataset").sort_values("strength")
        twin.plot(e["strength"], e["emd"], "s--", color="k", alpha=0.6, label="EMD")
        twin.set_ylabel("EMD from source")
        ax.set_title(ladder, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return save(fig, out, "ladders")
