"""Our top-1 beside the paper's, wherever our setting matches one of the paper's tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from atlib.report.load import Results
from atlib.report.stats import mean_std
from atlib.report.tables import fmt, write_table

PAPER_CSV = Path(__file__).resolve().parent.parent / "reference" / "paper_results.csv"
COLUMNS = ["table", "source", "arch", "eps", "mode", "target", "model", "paper_top1", "our_top1", "our_std",
           "n_seeds", "diff", "note"]
NO_MATCH = ("no setting of this run matches the paper's (source, arch, eps, target, mode); "
            "nothing to compare (the paper's settings: atlib/reference/paper_results.csv)")


def paper_arch(arch: str) -> str:
    """The paper's tables call the ImageNet ResNet-50 just resnet50."""
    return "resnet50" if arch == "resnet50_imagenet" else arch


def load_paper(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    p = pd.read_csv(path)
    p["eps"] = p["eps"].astype(float)
    return p


def paper_comparison(res: Results, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per paper cell (table, source, arch, eps, mode, target, model) we have a result for."""
    paper = load_paper() if paper is None else paper
    ours = mean_std(res.transfers, ["source", "arch", "eps", "target", "mode"], "top1")
    ours = ours[ours["n"] > 0].assign(paper_arch=lambda d: d["arch"].map(paper_arch))
    m = paper.merge(ours, left_on=["source", "arch", "eps", "mode", "target"],
                    right_on=["source", "paper_arch", "eps", "mode", "target"], suffixes=("", "_ours"))
    if m.empty:
        return pd.DataFrame([{c: (NO_MATCH if c == "note" else np.nan) for c in COLUMNS}], columns=COLUMNS)
    out = pd.DataFrame({
        "table": m["table"], "source": m["source"], "arch": m["arch_ours"], "eps": m["eps"], "mode": m["mode"],
        "target": m["target"], "model": m["model"], "paper_top1": m["top1"], "our_top1": m["mean"],
        "our_std": m["std"], "n_seeds": m["n"], "diff": m["mean"] - m["top1"], "note": "",
    })
    return out.sort_values(["table", "source", "arch", "mode", "target", "model"]).reset_index(drop=True)


def write_paper_comparison(res: Results, out: Path, paper: pd.DataFrame | None = None) -> list[Path]:
    cmp = paper_comparison(res, paper)
    matched = cmp["paper_top1"].notna().any()
    if matched:
        disp = cmp.drop(columns=["our_std", "note"]).assign(
            eps=cmp["eps"].map(lambda e: f"{e:g}"), table=cmp["table"].map(lambda t: f"{int(t)}"),
            our_top1=[fmt(m, s) for m, s in zip(cmp["our_top1"], cmp["our_std"])],
            n_seeds=cmp["n_seeds"].map(lambda n: f"{int(n)}"),
            diff=cmp["diff"].map(lambda d: f"{d:+.2f}"))
        note = "diff = ours - paper, in points. Our top-1: mean ± std over seeds."
    else:
        disp = pd.DataFrame(columns=COLUMNS)
        note = NO_MATCH.capitalize() + "."
    return write_table(out, "paper_comparison", cmp, disp, "Our results beside the paper's", note)
