"""Which source model to fine-tune on your own image folder, predicted before and confirmed after.

`python -m atlib.workflow.recommend --target DIR` (make recommend TARGET=DIR), on a finished run:

1. the folder is checked (every bad file listed, before any job) and prepared like any dataset;
2. every candidate model of the experiment (each eps and seed, trained or imported) extracts features
   of the source and of the folder, cached per candidate, and gives its task distances to the folder;
3. per eps, the run's own mode-0 results fit the gap (robust - standard top-1) and the top-1 against the
   standard probe's distance (`prediction.clustered_prediction`: base sets are the units), and predict both
   at the folder's distance with a 95% prediction interval;
4. the relation is used only where claim 4's test holds for that eps and the folder lies inside the
   fitted distance range; otherwise the ranking says so, uses `recommend.fallback` in each
   candidate's own feature space, and marks the rows extrapolated.

`--confirm` fine-tunes (mode 0) the top_k candidates and the standard model through the workflow
(cached, resumable, on SLURM with its profile) and scores the prediction: Spearman and regret.

Steps 1 and 2 (the setup, the prepared folder, the distances) are `atlib.workflow.recommend_inputs`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from atlib.core.io import atomic_write
from atlib.report.prediction import Prediction, clustered_prediction
from atlib.report.stats import (
    DISTANCES,
    HOLDS,
    LEVEL,
    Nested,
    correlation_test,
    gap_points,
    standard_distance,
)
from atlib.spec import jobs
from atlib.spec.grid import ModelKey, base_set, pretrained_entry, probe_of
from atlib.spec.schema import ConfigError
from atlib.workflow.recommend_inputs import Setup, candidate_distances, prepared_target, setup

COLUMNS = ["rank", "model", "eps", "seed", "origin", "distance", "distance_value", "target_distance",
           "predicted_gap", "gap_lo", "gap_hi", "predicted_top1", "predicted_lo", "predicted_hi", "decided",
           "extrapolated", "basis", "fallback", "fallback_value", "emd", "otdd", "otdd_exact", "logme"]


# --------------------------------------------------------------------------- the fitted relation


@dataclass(frozen=True)
class Fit:
    """Per eps: the gap and top-1 predictions at the folder's distance and whether claim 4's test
    (Spearman of gap with distance over base sets) holds there."""

    gap: Prediction
    top1: Prediction
    decided: bool
    test: str


def fits(s: Setup, x0: float) -> dict[float, Fit]:
    """The relation of every eps, fitted on the run's own mode-0 results (the folder is not in them)."""
    from atlib.report.load import load_results

    res = load_results(s.run_config, s.results)
    exp, column = s.exp, s.config["recommend"]["distance"]
    src, arch = exp["source"], exp["arch"]
    bases = lambda ds: base_set(s.run_config, ds)  # noqa: E731
    expect = DISTANCES[column][0]
    t = res.transfers
    t = t[(t["source"] == src) & (t["arch"] == arch) & (t["target"] != src) & (t["mode"] == 0)]
    dist = standard_distance(res.distances, src, arch, column)
    top = t.assign(distance=t["target"].map(dist).astype(float), base=t["target"].map(bases))
    pts = gap_points(res.transfers, res.distances, src, arch, column, bases)
    pts = pts[pts["mode"] == 0]
    out = {}
    for eps in sorted({float(e) for e in exp["eps"]}):
        tdata = Nested.from_frame(top[top["eps"] == eps], "top1", "distance")
        top1 = _predict(tdata, x0)
        if eps == 0:
            out[eps] = Fit(Prediction(0.0, 0.0, 0.0, 0.0, top1.n, top1.n_targets, top1.x_min, top1.x_max), top1,
                           True, "the reference (gap 0 by definition)")
            continue
        gdata = Nested.from_frame(pts[pts["eps"] == eps], "gap", "distance")
        test = correlation_test(gdata, expect, f"eps {eps:g}: Spearman ρ(gap, {column})",
                                s.config["report"]["bootstrap"]) if gdata.values else None
        out[eps] = Fit(_predict(gdata, x0), top1, test is not None and test.verdict == HOLDS,
                       test.text() if test else "no mode-0 gaps with a distance in this run")
    return out


def _predict(data: Nested, x0: float) -> Prediction:
    if not data.values:
        return clustered_prediction([], [], [], x0)
    return clustered_prediction(data.x, data.target_means, data.bases, x0)


# --------------------------------------------------------------------------- the ranking


def target_distance(s: Setup, dist: pd.DataFrame) -> float:
    """The folder's distance from the source under the standard probe(s): gap_points' x for the run's
    targets (mean over the experiment's probes)."""
    probes = {probe_of(k, s.config["distance"]).path for k in s.candidates()}
    return float(dist.loc[dist["model"].isin(probes), s.config["recommend"]["distance"]].mean())


def rank(s: Setup, dist: pd.DataFrame, fitted: dict[float, Fit], x0: float) -> tuple[pd.DataFrame, list[str]]:
    """One row per candidate with its predictions, ranked; and why the relation cannot tell (empty:
    it can, and the ranking follows the predicted gap)."""
    cfg = s.config["recommend"]
    column, fallback = cfg["distance"], cfg["fallback"]
    why = []
    for eps, f in sorted(fitted.items()):
        if eps == 0:
            continue
        if not f.decided:
            why.append(f"eps {eps:g}: claim 4's test does not hold here ({f.test})")
        if not math.isfinite(f.gap.value):
            why.append(f"eps {eps:g}: {f.gap.text()}")
        elif not f.gap.inside(x0):
            why.append(f"eps {eps:g}: the folder's {column} {x0:.4g} is outside the fitted range "
                       f"[{f.gap.x_min:.4g}, {f.gap.x_max:.4g}]")
    rows = []
    for _, r in dist.iterrows():
        if r["model"] not in {k.path for k in s.candidates()}:
            continue  # a probe of another seed, not a candidate
        key = next(k for k in s.candidates() if k.path == r["model"])
        f = fitted[float(key.eps)]
        rows.append({"model": key.path, "eps": float(key.eps), "seed": key.seed,
                     "origin": "imported" if pretrained_entry(s.config, s.exp, key.eps) else "trained",
                     "distance": column, "distance_value": r[column], "target_distance": x0,
                     "predicted_gap": f.gap.value, "gap_lo": f.gap.lo, "gap_hi": f.gap.hi,
                     # top-1 is a percentage: its interval is cut at 0 and 100 (NaN, no interval, stays NaN)
                     "predicted_top1": f.top1.value, "predicted_lo": max(f.top1.lo, 0.0),
                     "predicted_hi": min(f.top1.hi, 100.0),
                     "decided": f.decided, "extrapolated": bool(why), "fallback": fallback,
                     "fallback_value": r[fallback], **{c: r.get(c, math.nan) for c in DISTANCES if c in r}})
    df = pd.DataFrame(rows)
    df["basis"] = "distance alone" if why else "fitted relation"
    if why:  # LogME is a score (higher = better); a distance, smaller = the candidate sees the folder nearer
        score = df["fallback_value"] * (1 if DISTANCES[fallback][0] < 0 else -1)
    else:
        score = df["predicted_gap"]
    df["rank"] = score.rank(ascending=False, method="first").astype(int)
    return df.sort_values(["rank"])[[c for c in COLUMNS if c in df]].reset_index(drop=True), why


def _interval(v: float, lo: float, hi: float, unit: str = "") -> str:
    if not (math.isfinite(v) and math.isfinite(lo)):
        return "no interval"
    return f"{v:+.1f}{unit} [{lo:+.1f}, {hi:+.1f}]" if unit else f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def _gap_cell(r: pd.Series) -> str:
    return "0 (the reference)" if r["eps"] == 0 else _interval(r["predicted_gap"], r["gap_lo"], r["gap_hi"], " ")


def summary(s: Setup, df: pd.DataFrame, why: list[str], fitted: dict[float, Fit], confirm: dict | None) -> str:
    """The one-screen summary (summary.md): the pick with its interval, or why the relation cannot tell."""
    exp, first = s.exp, df.iloc[0]
    column, x0 = s.config["recommend"]["distance"], float(first["target_distance"])
    g = next((f.gap for e, f in sorted(fitted.items()) if e > 0), None)
    fitted_on = (f"{g.n_targets} targets from {g.n} base sets, {column} {g.x_min:.4g} to {g.x_max:.4g}"
                 if g is not None and g.n_targets else "no targets")
    lines = [f"# Which model to fine-tune on `{s.name}`", "",
             f"Folder `{s.config['datasets'][s.name]['path']}`; candidates: the {len(df)} models of experiment "
             f"`{s.experiment}` ({exp['source']}, {exp['arch']}). The folder's {column} from {exp['source']} "
             f"(standard probe): {x0:.4g}; the relation is fitted on this run's mode-0 results ({fitted_on}).", ""]
    pick = f"eps {first['eps']:g} (`{first['model']}`)"
    pred = _interval(first["predicted_gap"], first["gap_lo"], first["gap_hi"], " points") + " over the standard model"
    if first["eps"] == 0:
        pred = "the standard model itself (no robust candidate is predicted to beat it)"
    if not why:
        lines.append(f"**Start from {pick}: predicted {pred}** "
                     f"({LEVEL:.0%} prediction interval for a new base set).")
    else:
        lines += ["**The fitted relation cannot tell for this folder:**", *[f"- {w}" for w in why], "",
                  f"Ranked by the distance alone ({first['fallback']} of each candidate's own features); every "
                  f"row is marked *extrapolated*. First pick: {pick}; the fitted prediction, for reference only: "
                  f"{pred if first['eps'] > 0 and math.isfinite(first['predicted_gap']) else 'none'}."]
    lines += ["", "| rank | model | eps | predicted top-1 [95% PI] | predicted gap [95% PI] | "
              f"{first['fallback']} | extrapolated |" + (" measured top-1 |" if confirm else ""),
              "|---|---|---|---|---|---|---|" + ("---|" if confirm else "")]
    for _, r in df.iterrows():
        measured = f" {r['measured_top1']:.1f} |" if confirm and math.isfinite(r.get("measured_top1", math.nan)) \
            else (" |" if confirm else "")
        lines.append(f"| {r['rank']} | `{r['model']}` | {r['eps']:g} | "
                     f"{_interval(r['predicted_top1'], r['predicted_lo'], r['predicted_hi'])} | "
                     f"{_gap_cell(r)} | {r['fallback_value']:.4g} | "
                     f"{'yes' if r['extrapolated'] else 'no'} |{measured}")
    if confirm:
        rho = f"{confirm['spearman']:+.2f}" if math.isfinite(confirm["spearman"]) else "undefined (tied)"
        lines += ["", f"**Confirmed** ({confirm['n']} candidate(s) fine-tuned, mode 0): Spearman between the "
                  f"predicted order and the measured top-1 {rho}; regret (best measured minus "
                  f"the first pick's) {confirm['regret']:.2f} points."]
    return "\n".join(lines) + "\n"


def figure(df: pd.DataFrame, path: Path) -> None:
    """Predicted top-1 against eps with the 95% prediction intervals (and the measured top-1, if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ok = df[np.isfinite(df["predicted_top1"])]
    ax.errorbar(ok["eps"], ok["predicted_top1"], yerr=[ok["predicted_top1"] - ok["predicted_lo"],
                ok["predicted_hi"] - ok["predicted_top1"]], fmt="o", capsize=4, label="predicted (95% PI)")
    if "measured_top1" in df:
        ax.plot(df["eps"], df["measured_top1"], "x", color="k", label="measured")
    if ok.empty:
        ax.text(0.5, 0.5, "no prediction interval:\nranked by the distance alone", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("eps of the source model")
    ax.set_ylabel("mode-0 top-1 (%)")
    ax.set_title(("extrapolated: " if df["extrapolated"].any() else "") + f"{df['basis'].iloc[0]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".pdf"))  # beside the png, as every report figure
    plt.close(fig)


def write(s: Setup, df: pd.DataFrame, why: list[str], fitted: dict[float, Fit], confirm: dict | None = None) -> Path:
    """ranking.csv, summary.md and ranking.png under results/recommend/<name>/ (atomic csv)."""
    out = s.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "ranking.csv") as tmp:
        df.to_csv(tmp, index=False)
    (out / "summary.md").write_text(summary(s, df, why, fitted, confirm))
    figure(df, out / "ranking.png")
    return out


def recommend(s: Setup) -> tuple[pd.DataFrame, list[str], dict[float, Fit]]:
    """Rank the candidates for the folder (distances only, no fine-tuning) and write the outputs."""
    target_dir = prepared_target(s)
    dist = candidate_distances(s, target_dir)
    x0 = target_distance(s, dist)
    fitted = fits(s, x0)
    df, why = rank(s, dist, fitted, x0)
    write(s, df, why, fitted)
    return df, why, fitted


# --------------------------------------------------------------------------- --confirm


def confirm_models(s: Setup, df: pd.DataFrame) -> list[ModelKey]:
    """The first top_k candidates and the standard model of each of their seeds."""
    keys = {k.path: k for k in s.candidates()}
    picked = [keys[m] for m in df["model"].head(s.config["recommend"]["top_k"])]
    return list(dict.fromkeys(picked + [k.standard for k in picked if k.standard.path in keys]))


def confirm(s: Setup, df: pd.DataFrame, configs: list[str], extra: dict, results: str, workdir: Path,
            profile: str) -> tuple[pd.DataFrame, dict]:
    """Fine-tune (mode 0) the chosen candidates on the folder through the workflow (cached: finished
    transfers are not redone) and score the prediction: Spearman of the predicted order with the
    measured top-1, and regret = best measured - measured of the first pick."""
    from scipy import stats

    from atlib.workflow.demo import run_workflow

    picks = confirm_models(s, df)
    files = {k.path: jobs.Job(jobs.TRANSFER, k, target=s.name, mode=0).path(results, "metrics") for k in picks}
    over = s.out_dir / "confirm.yaml"
    over.write_text(json.dumps(extra, indent=1))  # JSON is YAML: Snakemake reads it as a config file
    code, _, _ = run_workflow([str(Path(c).resolve()) for c in configs] + [str(over.resolve())], results, workdir,
                              tuple(files.values()), profile)
    if code != 0:
        raise SystemExit(f"recommend --confirm: the workflow failed (exit {code}); see the log named above")
    measured = {m: json.loads((Path(workdir) / f).read_text())["top1"] for m, f in files.items()}
    df = df.assign(measured_top1=df["model"].map(measured).astype(float))
    done = df.dropna(subset=["measured_top1"])
    tied = len(done) < 2 or done["measured_top1"].nunique() < 2  # no order to agree with
    rho = math.nan if tied else stats.spearmanr(-done["rank"], done["measured_top1"]).statistic
    first = done.sort_values("rank").iloc[0]
    score = {"n": len(done), "spearman": float(rho),
             "regret": float(done["measured_top1"].max() - first["measured_top1"])}
    return df, score


# --------------------------------------------------------------------------- MLflow and the command


def track(s: Setup, score: dict | None) -> str | None:
    """The recommendation as an MLflow run nested under a run of its target (never fails the command)."""
    from atlib.workflow.tracking.live import log_recommendation

    try:
        return log_recommendation(s.results, s.config["tracking"], s.name, s.out_dir, score or {})
    except Exception as err:  # noqa: BLE001 - MLflow is a view; the files are the result
        print(f"recommend: MLflow logging skipped ({type(err).__name__}: {err})", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="the image folder (ImageFolder layout)")
    ap.add_argument("--config", nargs="+", default=["config/demo.yaml"], help="the finished run's config file(s)")
    ap.add_argument("--results", default="results", help="its results directory (relative to --workdir)")
    ap.add_argument("--workdir", type=Path, default=Path.cwd(), help="where the run's Snakemake ran")
    ap.add_argument("--name", help="the target's dataset name (default: the folder's name)")
    ap.add_argument("--confirm", action="store_true", help="fine-tune the top_k and the standard model, score it")
    ap.add_argument("--top-k", type=int, help="override recommend.top_k")
    ap.add_argument("--profile", default="profiles/local", help="Snakemake profile of --confirm (profiles/slurm)")
    args = ap.parse_args(argv)
    try:
        s, extra = setup(args.config, str(args.workdir / args.results), args.target, args.name)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"recommend: {err}") from None
    if args.top_k:
        s.config["recommend"]["top_k"] = args.top_k
    df, why, fitted = recommend(s)
    score = None
    if args.confirm:
        df, score = confirm(s, df, args.config, extra, args.results, args.workdir, args.profile)
        write(s, df, why, fitted, score)
    track(s, score)
    print((s.out_dir / "summary.md").read_text())
    print(f"ranking: {s.out_dir / 'ranking.csv'}; figure: {s.out_dir / 'ranking.png'}")


if __name__ == "__main__":
    main()
