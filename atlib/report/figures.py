"""The paper's figures from our results (PNG + PDF): Figures 2-5, 3/7/8, 6, 10-14 and the
source trade-off. Each function returns the files it wrote (none when it has no data)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from atlib.report.load import KEY_COLS, Results  # noqa: E402
from atlib.report.stats import (  # noqa: E402
    DISTANCES,
    PRIMARY_DISTANCE,
    Nested,
    correlation,
    gap_distance_points,
    gap_frame,
    gap_points,
    mean_std,
    standard_distance,
)
from atlib.spec.grid import base_set  # noqa: E402

log = logging.getLogger("atlib.report")


def save(fig: plt.Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _ci_text(c: dict, name: str, sym: str) -> str:
    if not np.isfinite(c[name]):
        return f"{sym} n/a (n={c['n']})"
    ci = f" [{c[name + '_lo']:+.2f}, {c[name + '_hi']:+.2f}]" if np.isfinite(c[name + "_lo"]) else ""
    return f"{sym}={c[name]:+.2f}{ci} p={c[name + '_p']:.2g}"


def _source_reference(ax, res: Results, source: str, arch: str, mode: int) -> None:
    """The source transferred to itself: drawn hollow at its own distance, never counted as a target."""
    t = res.transfers[(res.transfers["source"] == source) & (res.transfers["arch"] == arch)
                      & (res.transfers["target"] == source) & (res.transfers["mode"] == mode)]
    g = mean_std(gap_frame(t), ["eps"], "gap").dropna(subset=["mean"])
    d = standard_distance(res.distances, source, arch).get(source, 0.0)
    for i, (_, r) in enumerate(g.iterrows()):
        ax.errorbar([d], [r["mean"]], yerr=[0 if np.isnan(r["std"]) else r["std"]], fmt="o", mfc="none",
                    color=f"C{i}", capsize=3, label=f"{source} itself, eps {r['eps']:g} (reference, not counted)")


def gap_vs_distance(res: Results, source: str, arch: str, mode: int, n_boot: int, out: Path,
                    stems: list[str]) -> list[Path]:
    """Figures 3, 7, 8: mean gap (seed std as error bars) against the EMD from the source."""
    bases = partial(base_set, res.config)
    pts = gap_distance_points(res.transfers, res.distances, source, arch, bases=bases)
    seeds = gap_points(res.transfers, res.distances, source, arch, bases=bases)
    pts = pts[pts["mode"] == mode]
    if pts.empty:
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, (eps, p) in enumerate(pts.groupby("eps")):
        c = correlation(Nested.from_frame(seeds[(seeds["eps"] == eps) & (seeds["mode"] == mode)], "gap", "distance"),
                        n_boot)
        label = f"eps {eps:g}: {_ci_text(c, 'spearman', 'Spearman ρ')}, {_ci_text(c, 'pearson', 'Pearson r')}"
        ok = p["distance"].notna() & p["mean"].notna()
        ax.errorbar(p["distance"][ok], p["mean"][ok], yerr=p["std"][ok].fillna(0), fmt="o", capsize=3,
                    color=f"C{i}", label=label)
        for _, r in p[ok].iterrows():
            ax.annotate(r["target"], (r["distance"], r["mean"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        lost = p.loc[~ok, "target"].tolist()
        if lost:
            log.warning("gap vs distance %s %s mode %d eps %g: no gap or distance for %s", source, arch, mode,
                        eps, lost)
    _source_reference(ax, res, source, arch, mode)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"EMD from {source} (standard {arch} features)")
    ax.set_ylabel("gap top1(robust) - top1(standard) [points]")
    ax.set_title(f"{source} ({arch}), mode {mode}: gap vs task distance (the source is not a target)\n"
                 f"95% three-stage bootstrap CI ({n_boot} resamples: base sets, targets, seeds), two-level "
                 "permutation p", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    paths: list[Path] = []
    for stem in stems:
        paths += [out / f"{stem}.png", out / f"{stem}.pdf"]
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=130)
        fig.savefig(out / f"{stem}.pdf")
    plt.close(fig)
    return paths


def distance_grid(res: Results, source: str, arch: str, mode: int, n_boot: int, out: Path) -> list[Path]:
    """Which distance predicts the gap: one panel per measure of DISTANCES, the mean gap of each
    target against it (one colour per robust eps), Spearman's rho with its bootstrap CI and
    permutation p in the legend."""
    measures = [c for c in DISTANCES if c in res.distances and res.distances[c].notna().any()]
    panels, bases = [], partial(base_set, res.config)
    for column in measures:
        pts = gap_distance_points(res.transfers, res.distances, source, arch, column, bases)
        seeds = gap_points(res.transfers, res.distances, source, arch, column, bases)
        panels.append((column, pts[(pts["mode"] == mode)].dropna(subset=["mean", "distance"]),
                       seeds[seeds["mode"] == mode]))
    if not any(len(p) for _, p, _ in panels):
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (column, pts, seeds) in zip(axes[0], panels):
        for i, (eps, p) in enumerate(pts.groupby("eps")):
            c = correlation(Nested.from_frame(seeds[seeds["eps"] == eps], "gap", "distance"), n_boot)
            ax.errorbar(p["distance"], p["mean"], yerr=p["std"].fillna(0), fmt="o", ms=3, capsize=2, color=f"C{i}",
                        label=f"eps {eps:g}: {_ci_text(c, 'spearman', 'ρ')}")
        expect, name = DISTANCES[column]
        ax.set_title(f"{name}{' (primary)' if column == PRIMARY_DISTANCE else ''}\nexpected sign "
                     f"{'+' if expect > 0 else '−'}", fontsize=9)
        ax.set_xlabel(column)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=6, loc="best")
    axes[0, 0].set_ylabel("gap robust - standard [points]")
    fig.suptitle(f"{source} ({arch}), mode {mode}: gap vs each task measure (targets; the source excluded)",
                 fontsize=10)
    return save(fig, out, f"distance_grid_{source}_{arch}_mode{mode}")


def mode_comparison(res: Results, source: str, arch: str, out: Path) -> list[Path]:
    """Figure 14: gap per target for each fine-tuning mode (error bars: std over seeds)."""
    t = res.transfers[(res.transfers["source"] == source) & (res.transfers["arch"] == arch)]
    g = mean_std(gap_frame(t), ["eps", "target", "mode"], "gap")
    if g["mean"].notna().sum() == 0:
        return []
    targets = [x for x in res.targets_of(source, arch) if x in set(g["target"])]
    eps_list = sorted(g["eps"].unique())
    modes = sorted(g["mode"].unique())
    fig, axes = plt.subplots(len(eps_list), 1, figsize=(max(6, 1.1 * len(targets)), 3.6 * len(eps_list)),
                             squeeze=False)
    width = 0.8 / len(modes)
    for ax, eps in zip(axes[:, 0], eps_list):
        for j, mode in enumerate(modes):
            s = g[(g["eps"] == eps) & (g["mode"] == mode)].set_index("target").reindex(targets)
            x = np.arange(len(targets)) + (j - (len(modes) - 1) / 2) * width
            ax.bar(x, s["mean"], width, yerr=s["std"].fillna(0), capsize=2, label=f"mode {mode}", color=f"C{j}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(targets)), targets, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("gap [points]")
        ax.set_title(f"{source} ({arch}), robust eps {eps:g} - standard, per fine-tuning mode", fontsize=9)
        ax.legend(fontsize=8)
    return save(fig, out, f"mode_comparison_{source}_{arch}")


def learning_curves(res: Results, source: str, arch: str, out: Path) -> list[Path]:
    """Figures 10-13: target test top-1 per fine-tuning epoch, robust vs standard, per mode."""
    h = res.transfer_histories
    h = h[(h["source"] == source) & (h["arch"] == arch)]
    if h.empty:
        return []
    targets = [x for x in res.targets_of(source, arch) if x in set(h["target"])]
    modes = sorted(h["mode"].unique())
    fig, axes = plt.subplots(len(modes), len(targets), figsize=(2.8 * len(targets), 2.4 * len(modes)),
                             squeeze=False, sharex="col")
    for i, mode in enumerate(modes):
        for j, target in enumerate(targets):
            ax = axes[i, j]
            s = h[(h["mode"] == mode) & (h["target"] == target)]
            for k, (eps, e) in enumerate(s.groupby("eps")):
                m = e.groupby("epoch")["test_top1"].agg(["mean", "std"])
                label = "standard" if eps == 0 else f"robust eps {eps:g}"
                ax.plot(m.index, m["mean"], color="C0" if eps == 0 else f"C{k + 1}", label=label)
                ax.fill_between(m.index, m["mean"] - m["std"].fillna(0), m["mean"] + m["std"].fillna(0),
                                color="C0" if eps == 0 else f"C{k + 1}", alpha=0.2)
            if i == 0:
                ax.set_title(target, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"mode {mode}\ntest top-1 [%]", fontsize=8)
            if i == len(modes) - 1:
                ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Fine-tuning from {source} ({arch}): mean over seeds, band = std", fontsize=10)
    return save(fig, out, f"learning_curves_{source}_{arch}")


def _per_eps(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Mean and std over seeds of `col`, per (source, arch, eps)."""
    return df.groupby(["source", "arch", "eps"])[col].agg(["mean", "std", "count"]).reset_index()


def source_tradeoff(res: Results, out: Path) -> list[Path]:
    """Claim 1: natural and PGD accuracy of the source models against the training eps."""
    s = res.sources
    if s["natural_acc"].notna().sum() == 0:
        return []
    pgd_cols = sorted((c for c in s.columns if c.startswith("pgd_acc_")), key=lambda c: float(c[8:]))
    groups = list(s.groupby(["source", "arch"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, ((source, arch), g) in zip(axes[0], groups):
        for k, col in enumerate(["natural_acc"] + pgd_cols):
            m = _per_eps(g, col)
            if m["count"].sum() == 0:
                continue
            label = "natural" if col == "natural_acc" else f"PGD eps {col[8:]}"
            ax.errorbar(m["eps"], m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3, label=label,
                        color=f"C{k}", ls="-" if k == 0 else "--")
        ax.set_xlabel("training eps (L2)")
        ax.set_ylabel("source test accuracy [%]")
        ax.set_title(f"{source} ({arch})", fontsize=9)
        ax.legend(fontsize=7)
    return save(fig, out, "source_tradeoff")


def _by_eps_plot(df: pd.DataFrame, cols: dict[str, str], ylabel: str, title: str, out: Path, stem: str,
                 logy: bool = False) -> list[Path]:
    if df.empty or all(df[c].notna().sum() == 0 for c in cols if c in df):
        return []
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    k = 0
    for (source, arch), g in df.groupby(["source", "arch"], sort=False):
        for col, name in cols.items():
            if col not in g:
                continue
            m = _per_eps(g, col)
            ax.errorbar(m["eps"], m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3, color=f"C{k}",
                        label=f"{name}, {source} ({arch})")
            k += 1
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training eps (L2)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, out, stem)


def fisher_vs_eps(res: Results, out: Path) -> list[Path]:
    """Figure 4: mean log-variance of the optimal weight posterior Sigma* against eps."""
    return _by_eps_plot(res.fisher, {"log_variance_mean": "mean log-variance"}, "mean log Σ*",
                        "Flatness of the Fisher information: log-variance of Σ* vs eps", out, "fisher_vs_eps")


def input_fisher_vs_eps(res: Results, out: Path) -> list[Path]:
    """Claim 12: top eigenvalue and trace/n of the input Fisher against eps."""
    return _by_eps_plot(res.fisher, {"lambda1": "λ1", "trace_over_n": "tr/n"}, "input Fisher",
                        "Input Fisher: λ1 (power iteration) and tr(S)/n (Hutchinson)", out,
                        "input_fisher_vs_eps", logy=True)


def weight_norm_vs_eps(res: Results, out: Path) -> list[Path]:
    """Figure 5: ||w|| during training per eps (left) and at the end against eps (right)."""
    h = res.histories
    if h.empty or "weight_norm" not in h or h["weight_norm"].notna().sum() == 0:
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    eps_vals = sorted(h["eps"].unique())
    colors = {e: plt.cm.viridis(i / max(1, len(eps_vals) - 1)) for i, e in enumerate(eps_vals)}
    styles = {g: ls for g, ls in zip(h[["source", "arch"]].drop_duplicates().itertuples(index=False, name=None),
                                     ["-", "--", ":", "-."] * 8)}
    for (source, arch, eps, seed), g in h.groupby(KEY_COLS):
        a1.plot(g["epoch"], g["weight_norm"], color=colors[eps], alpha=0.8, ls=styles[(source, arch)],
                label=f"eps {eps:g}, {source} ({arch})")
    a1.set_xlabel("epoch")
    a1.set_ylabel("‖w‖₂")
    a1.set_title("weight norm during training (one line per model and seed)", fontsize=9)
    handles, labels = a1.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    a1.legend(uniq.values(), uniq.keys(), fontsize=7)
    final = h.sort_values("epoch").groupby(KEY_COLS, as_index=False).last()
    for k, ((source, arch), g) in enumerate(final.groupby(["source", "arch"], sort=False)):
        m = _per_eps(g, "weight_norm")
        a2.errorbar(m["eps"], m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3, color=f"C{k}",
                    label=f"{source} ({arch})")
    a2.set_xlabel("training eps (L2)")
    a2.set_ylabel("final ‖w‖₂")
    a2.set_title("final weight norm vs eps (mean ± std over seeds)", fontsize=9)
    a2.legend(fontsize=7)
    return save(fig, out, "weight_norm_vs_eps")


def model_panels(frame: pd.DataFrame, max_cols: int, width: float):
    """One subplot per model of `frame` (ordered by source, arch, seed, eps); spare panels hidden."""
    models = frame[KEY_COLS].drop_duplicates().sort_values(["source", "arch", "seed", "eps"])
    cols = min(len(models), max_cols)
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3 * rows), squeeze=False)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    return models, fig, axes


def tsne_grid(res: Results, out: Path) -> list[Path]:
    """Figure 6: t-SNE of final representations, one panel per model, ordered by eps."""
    t = res.tsne
    if t.empty:
        return []
    models, fig, axes = model_panels(t, max_cols=5, width=3.0)
    rep = res.representation.set_index(KEY_COLS)
    for ax, key in zip(axes.flat, models.itertuples(index=False)):
        p = t[(t[KEY_COLS] == pd.Series(key._asdict())).all(axis=1)]
        ax.scatter(p["x"], p["y"], c=pd.factorize(p["label"])[0], cmap="tab10", s=5)
        knn = rep["knn_acc"].get(tuple(key), np.nan) if "knn_acc" in rep else np.nan
        ax.set_title(f"{key.source} {key.arch} s{key.seed}\neps {key.eps:g}"
                     + (f", kNN {knn:.1f}%" if np.isfinite(knn) else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return save(fig, out, "tsne_grid")


def inversion_curves(res: Results, out: Path) -> list[Path]:
    """Figure 2: inversion loss ||f_w(r_k) - z|| per step for each method, one panel per model."""
    c = res.invert_curves
    if c.empty:
        return []
    models, fig, axes = model_panels(c, max_cols=4, width=3.6)
    for ax, key in zip(axes.flat, models.itertuples(index=False)):
        p = c[(c[KEY_COLS] == pd.Series(key._asdict())).all(axis=1)]
        for k, (method, m) in enumerate(p.groupby("method", sort=False)):
            ax.plot(m["step"], m["loss"], label=method, color=f"C{k}")
        ax.set_yscale("log")
        ax.set_title(f"{key.source} {key.arch} s{key.seed}, eps {key.eps:g}", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("L_inv (clean model)", fontsize=8)
        ax.legend(fontsize=7)
    return save(fig, out, "inversion_curves")


def _pick_images(photo: np.ndarray, n_test: int, n_photo: int) -> list[int]:
    test, photos = np.flatnonzero(~photo), np.flatnonzero(photo)
    return list(test[:n_test]) + list(photos[:n_photo])


def inversion_grid(res: Results, out: Path, n_test: int = 2, n_photo: int = 1) -> list[Path]:
    """Figures 1 and 9: one row per model (ordered by source, arch, seed, eps); for each of a few
    images (test images, then photos) the original, then each method's reconstruction, titled
    with its PSNR [dB] / SSIM."""
    rec = res.invert_recon
    if not rec:
        return []
    methods = [m for m in ("plain", "variational", "effective") if any(k[4] == m for k in rec)]
    models = sorted({k[:4] for k in rec}, key=lambda k: (k[0], k[1], k[3], k[2]))
    first = next(rec[k + (m,)] for k in models for m in methods if k + (m,) in rec)
    picks = _pick_images(first["photo"], n_test, n_photo)
    q = res.invert_images.set_index(KEY_COLS + ["method", "image"]) if not res.invert_images.empty else None
    cols = len(picks) * (1 + len(methods))
    fig, axes = plt.subplots(len(models), cols, figsize=(1.05 * cols, 1.25 * len(models) + 0.3), squeeze=False)
    for r, key in enumerate(models):
        for j, i in enumerate(picks):
            for c, method in enumerate(["original"] + methods):
                ax = axes[r][j * (1 + len(methods)) + c]
                ax.set_xticks([])
                ax.set_yticks([])
                d = rec.get(key + ((methods[0] if method == "original" else method),))
                if d is None or i >= len(d["recon"]):
                    ax.axis("off")
                    continue
                img = (d["original"] if method == "original" else d["recon"])[i].transpose(1, 2, 0)
                gray = img.shape[2] == 1
                ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1)
                title = method
                if method != "original" and q is not None and (*key, method, i) in q.index:
                    row = q.loc[(*key, method, i)]
                    title += f"\n{row['psnr']:.1f}dB {row['ssim']:.2f}"
                ax.set_title(title, fontsize=6)
                if j == 0 and c == 0:
                    ax.set_ylabel(f"{key[0]} {key[1]} s{key[3]}\neps {key[2]:g}", fontsize=7)
    fig.suptitle("Inversion per training eps: original, then each method (PSNR / SSIM)", fontsize=8)
    return save(fig, out, "inversion_grid")
