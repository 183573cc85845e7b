"""The paper's tables from our results (Tables 1-3, 6-12), as CSV (numbers), Markdown and HTML.

Cell conventions: "mean ± std" over seeds (no ± for one seed); "—" a configured result that is
missing (named in the log); "n/a" a cell this config does not run. In CSVs both are empty (NaN).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from atlib.report.load import Results
from atlib.report.stats import gap_frame, mean_std

MISSING, NOT_RUN = "—", "n/a"
LEGEND = (f"Cells: mean ± std over seeds (no ± for one seed); {MISSING} = configured but the result file is "
          f"missing (see the aggregate log); {NOT_RUN} = not run by this config.")


def fmt(mean: float, std: float = np.nan, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def _cell(v) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency); NaN shows as —."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def html_page(title: str, body_html: str, note: str = "") -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}</style>"
            f"</head><body><h3>{html.escape(title)}</h3>{body_html}<p>{html.escape(note)}</p></body></html>")


def write_table(out: Path, stem: str, numeric: pd.DataFrame, display: pd.DataFrame, title: str,
                note: str = LEGEND) -> list[Path]:
    """stem.csv (numbers), stem.md and stem.html (formatted cells)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.csv", out / f"{stem}.md", out / f"{stem}.html"]
    numeric.to_csv(paths[0], index=False)
    paths[1].write_text(f"### {title}\n\n{markdown_table(display)}\n{note}\n")
    disp = display.map(_cell) if len(display) else display
    paths[2].write_text(html_page(title, disp.to_html(index=False, na_rep=MISSING, escape=True), note))
    return paths


def _lookup(stats: pd.DataFrame, keys: dict) -> tuple[float, float, bool]:
    """(mean, std, configured) of the row of `stats` matching `keys`."""
    m = np.ones(len(stats), bool)
    for k, v in keys.items():
        m &= (stats[k] == v).to_numpy()
    if not m.any():
        return np.nan, np.nan, False
    r = stats[m].iloc[0]
    return float(r["mean"]), float(r["std"]), True


def _cells(stats: pd.DataFrame, keys: dict, targets: list[str], num: dict, disp: dict) -> None:
    for t in targets:
        mean, std, configured = _lookup(stats, {**keys, "target": t})
        num[t], num[f"{t}_std"] = mean, std
        disp[t] = fmt(mean, std) if configured else NOT_RUN


def transfer_table(res: Results, source: str, arch: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 1, 2, 6, 7: top-1 of robust (each eps) and standard backbones per target and mode."""
    t = res.transfers[(res.transfers["source"] == source) & (res.transfers["arch"] == arch)]
    stats = mean_std(t, ["mode", "eps", "target"], "top1")
    targets = res.targets_of(source, arch)
    nums, disps = [], []
    for mode in sorted(t["mode"].unique()):
        for eps in sorted(e for e in t["eps"].unique() if e > 0) + [0.0]:
            num = {"mode": int(mode), "model": "rob" if eps > 0 else "st", "eps": float(eps)}
            disp = {"mode": int(mode), "model": "Rob" if eps > 0 else "St", "eps": f"{eps:g}"}
            _cells(stats, {"mode": mode, "eps": eps}, targets, num, disp)
            nums.append(num)
            disps.append(disp)
    return pd.DataFrame(nums), pd.DataFrame(disps)


def gap_table(res: Results, source: str, arch: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 8, 9, 10: gap = top1(robust) - top1(standard), mean ± std over seeds."""
    t = res.transfers[(res.transfers["source"] == source) & (res.transfers["arch"] == arch)]
    stats = mean_std(gap_frame(t), ["mode", "eps", "target"], "gap")
    targets = res.targets_of(source, arch)
    nums, disps = [], []
    for mode in sorted(t["mode"].unique()):
        for eps in sorted(e for e in t["eps"].unique() if e > 0):
            num = {"mode": int(mode), "eps": float(eps)}
            disp = {"mode": int(mode), "eps": f"{eps:g}"}
            _cells(stats, {"mode": mode, "eps": eps}, targets, num, disp)
            nums.append(num)
            disps.append(disp)
    return pd.DataFrame(nums), pd.DataFrame(disps)


def arch_table(res: Results, source: str, archs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 3, 11, 12: robust, standard and gap rows of every arch of one source."""
    targets: list[str] = []
    for a in archs:
        targets += [t for t in res.targets_of(source, a) if t not in targets]
    nums, disps = [], []
    for a in archs:
        t = res.transfers[(res.transfers["source"] == source) & (res.transfers["arch"] == a)]
        top = mean_std(t, ["mode", "eps", "target"], "top1")
        gap = mean_std(gap_frame(t), ["mode", "eps", "target"], "gap")
        for mode in sorted(t["mode"].unique()):
            for eps in sorted(e for e in t["eps"].unique() if e > 0):
                for row, stats, e in (("rob", top, eps), ("st", top, 0.0), ("gap", gap, eps)):
                    num = {"arch": a, "mode": int(mode), "row": row, "eps": float(e)}
                    disp = {"arch": a, "mode": int(mode), "row": row.capitalize() if row != "gap" else "gap",
                            "eps": f"{e:g}"}
                    _cells(stats, {"mode": mode, "eps": e}, targets, num, disp)
                    nums.append(num)
                    disps.append(disp)
    return pd.DataFrame(nums), pd.DataFrame(disps)


def write_all_tables(res: Results, out: Path) -> list[Path]:
    """Every per-experiment table the results support."""
    paths: list[Path] = []
    groups = res.experiment_groups()
    for source, arch in groups:
        num, disp = transfer_table(res, source, arch)
        paths += write_table(out, f"table_transfer_{source}_{arch}", num, disp,
                             f"Transfer top-1 [%] from {source} ({arch}), robust vs standard (Tables 1, 2, 6, 7)")
        num, disp = gap_table(res, source, arch)
        paths += write_table(out, f"table_gap_{source}_{arch}", num, disp,
                             f"Gap top1(robust) - top1(standard) [points] from {source} ({arch}) (Tables 8-10)")
    for source in dict.fromkeys(s for s, _ in groups):
        archs = [a for s, a in groups if s == source]
        if len(archs) >= 2:
            num, disp = arch_table(res, source, archs)
            paths += write_table(out, f"table_arch_{source}", num, disp,
                                 f"Architectures compared from {source}: {', '.join(archs)} (Tables 3, 11, 12)")
    return paths
