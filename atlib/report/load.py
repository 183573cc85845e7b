"""Read every result file the config implies into tidy pandas tables.

The config (not a directory scan) says what should exist, so a missing file is known by
name: it is logged with `logging.warning`, listed in `Results.missing`, and its cells stay
NaN (never 0). A corrupt file stops with a message naming it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ModelKey, eps_str, iter_models

log = logging.getLogger("atlib.report")

KEY_COLS = ["source", "arch", "eps", "seed"]


@dataclass
class Jobs:
    """Every job the config asks for (the same grid as workflow/rules/common.smk)."""

    models: list[ModelKey]
    transfers: list[tuple[ModelKey, str, int]]
    distances: list[tuple[ModelKey, str]]
    analyses: dict[str, list[ModelKey]]
    invert_methods: list[str]
    probe: str


def probe_of(key: ModelKey, probe: str) -> ModelKey:
    return key.standard if probe == "standard" else key


def expected_jobs(config: dict) -> Jobs:
    models, transfers, distances = [], [], []
    analyses: dict[str, list[ModelKey]] = {"fisher": [], "representation": [], "invert": []}
    probe = config.get("distance", {}).get("probe", "standard")
    for name, key in iter_models(config):
        exp = config["experiments"][name]
        if key not in models:
            models.append(key)
        for target in exp.get("targets", []):
            for mode in exp.get("modes", [0]):
                if (key, target, mode) not in transfers:
                    transfers.append((key, target, mode))
                for ds in (key.source, target):
                    if (probe_of(key, probe), ds) not in distances:
                        distances.append((probe_of(key, probe), ds))
        for a in exp.get("analyses", []):
            if key not in analyses[a]:
                analyses[a].append(key)
    methods = config.get("invert", {}).get("methods", ["plain", "variational", "effective"])
    return Jobs(models, transfers, distances, analyses, list(methods), probe)


@dataclass
class Results:
    """Everything the report needs, as tidy DataFrames (accuracies in percent)."""

    config: dict
    sources: pd.DataFrame
    histories: pd.DataFrame
    transfers: pd.DataFrame
    transfer_histories: pd.DataFrame
    distances: pd.DataFrame
    fisher: pd.DataFrame
    representation: pd.DataFrame
    tsne: pd.DataFrame
    invert: pd.DataFrame
    invert_curves: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    # One row per inverted image: KEY_COLS + method, image (index within the job), kind ("test" or
    # "photo"), psnr, ssim, final_loss (that image's clean loss at the last step).
    invert_images: pd.DataFrame = field(default_factory=pd.DataFrame)
    # recon.npz contents by (source, arch, eps, seed, method), see atlib.invert.load_recon:
    # float images `original`, `recon`; `photo` mask; `loss` (steps + 1, N) per-image curves.
    invert_recon: dict[tuple, dict] = field(default_factory=dict)

    def experiment_groups(self) -> list[tuple[str, str]]:
        """(source, arch) of every experiment with transfers, in config order."""
        out: list[tuple[str, str]] = []
        for exp in self.config["experiments"].values():
            if exp.get("targets") and (exp["source"], exp["arch"]) not in out:
                out.append((exp["source"], exp["arch"]))
        return out

    def targets_of(self, source: str, arch: str) -> list[str]:
        out: list[str] = []
        for exp in self.config["experiments"].values():
            if (exp["source"], exp["arch"]) == (source, arch):
                out += [t for t in exp.get("targets", []) if t not in out]
        return out


class _Reader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.missing: list[str] = []

    def _absent(self, path: Path, what: str) -> bool:
        if path.exists():
            return False
        log.warning("missing result %s (%s): its cells are left empty", path, what)
        self.missing.append(str(path))
        return True

    def json(self, rel: str, what: str) -> dict | None:
        path = self.root / rel
        if self._absent(path, what):
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); delete it and rerun the rule that "
                             "writes it") from None

    def csv(self, rel: str, what: str, required: tuple[str, ...]) -> pd.DataFrame | None:
        path = self.root / rel
        if self._absent(path, what):
            return None
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable CSV ({err}); delete it and rerun the rule "
                             "that writes it") from None
        lacking = [c for c in required if c not in df.columns]
        if lacking:
            raise ValueError(f"{path}: lacks columns {lacking}; delete it and rerun the rule that writes it")
        return df


def _key_cols(key: ModelKey) -> dict:
    return {"source": key.source, "arch": key.arch, "eps": float(key.eps), "seed": int(key.seed)}


def _pgd_cols(pgd: dict | None) -> dict:
    return {f"pgd_acc_{eps_str(float(e))}": float(v) for e, v in (pgd or {}).items()}


def _frame(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float)
    return df


def load_results(config: dict, results_dir: str | Path | None = None) -> Results:
    """Read all result files of `config` under `results_dir` (default: config["results"])."""
    root = Path(results_dir if results_dir is not None else config["results"])
    jobs = expected_jobs(config)
    rd = _Reader(root)

    sources, histories = [], []
    for key in jobs.models:
        m = rd.json(f"models/{key.path}/metrics.json", "source model metrics")
        row = _key_cols(key)
        if m is not None:
            row.update(natural_acc=m.get("natural_acc", np.nan), weight_norm=m.get("weight_norm", np.nan),
                       epochs=m.get("epochs", np.nan), train_time_s=m.get("train_time_s", np.nan),
                       **_pgd_cols(m.get("pgd_acc")))
        else:
            row.update(natural_acc=np.nan, weight_norm=np.nan)
        sources.append(row)
        h = rd.csv(f"models/{key.path}/history.csv", "source training history", ("epoch",))
        if h is not None:
            histories.append(h.assign(**_key_cols(key)))

    dist_rows = []
    for probe, ds in jobs.distances:
        d = rd.json(f"distance/{probe.path}/{ds}.json", "task distance")
        row = {**{f"probe_{k}": v for k, v in _key_cols(probe).items()}, "dataset": ds}
        row.update({k: (d or {}).get(k, np.nan) for k in ("emd", "similarity", "otdd", "n_images")})
        dist_rows.append(row)
    distances = _frame(dist_rows, ["probe_source", "probe_arch", "probe_eps", "probe_seed", "dataset", "emd",
                                   "similarity", "otdd"])
    dist_index = {(r["probe_source"], r["probe_arch"], r["probe_eps"], r["probe_seed"], r["dataset"]): r
                  for r in dist_rows}

    transfers, thist = [], []
    for key, target, mode in jobs.transfers:
        rel = f"transfer/{key.path}/{target}/mode{mode}"
        m = rd.json(f"{rel}/metrics.json", "transfer metrics")
        row = {**_key_cols(key), "target": target, "mode": int(mode), "top1": np.nan}
        if m is not None:
            row.update(top1=m.get("top1", np.nan), epochs=m.get("epochs", np.nan), cached=m.get("cached"),
                       train_time_s=m.get("train_time_s", np.nan), **_pgd_cols(m.get("pgd_acc")))
        p = probe_of(key, jobs.probe)
        d = dist_index.get((p.source, p.arch, float(p.eps), int(p.seed), target), {})
        row.update(distance=d.get("emd", np.nan), similarity=d.get("similarity", np.nan),
                   otdd=d.get("otdd", np.nan))
        transfers.append(row)
        h = rd.csv(f"{rel}/history.csv", "transfer history", ("epoch", "test_top1"))
        if h is not None:
            thist.append(h.assign(**_key_cols(key), target=target, mode=int(mode)))

    fisher, rep, tsne = [], [], []
    for key in jobs.analyses["fisher"]:
        f = rd.json(f"fisher/{key.path}/summary.json", "Fisher summary")
        row = _key_cols(key)
        if f is not None:
            inp = f.get("input_fisher") or {}
            row.update(log_variance_mean=f.get("log_variance_mean", np.nan), kl_total=f.get("kl_total", np.nan),
                       fisher_trace=f.get("fisher_trace", np.nan), fisher_weight_norm=f.get("weight_norm", np.nan),
                       lambda1=inp.get("lambda1", np.nan), trace=inp.get("trace", np.nan),
                       trace_over_n=inp.get("trace_over_n", np.nan), n_input=inp.get("n", np.nan))
        fisher.append(row)
    for key in jobs.analyses["representation"]:
        r = rd.json(f"representation/{key.path}/summary.json", "representation summary")
        row = _key_cols(key)
        if r is not None:
            row.update(knn_acc=r.get("knn_acc", np.nan), silhouette=r.get("silhouette", np.nan))
        rep.append(row)
        path = root / f"representation/{key.path}/tsne.csv"
        if path.exists():  # optional by contract: no warning when absent
            t = _tsne_frame(pd.read_csv(path), path)
            if t is not None:
                tsne.append(t.assign(**_key_cols(key)))

    inv, curves, images, recon = [], [], [], {}
    for key in jobs.analyses["invert"]:
        for method in jobs.invert_methods:
            c = rd.csv(f"invert/{key.path}/{method}/curve.csv", "inversion curve", ("step", "loss"))
            if c is not None:
                curves.append(c[["step", "loss"]].assign(**_key_cols(key), method=method))
            s_path = root / f"invert/{key.path}/{method}/summary.json"
            s = json.loads(s_path.read_text()) if s_path.exists() else {}
            inv.append({**_key_cols(key), "method": method,
                        **{k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
            images += _invert_image_rows(s, {**_key_cols(key), "method": method})
            r_path = root / f"invert/{key.path}/{method}/recon.npz"
            if r_path.exists():  # optional by contract (older runs lack it): no warning when absent
                recon[(key.source, key.arch, float(key.eps), int(key.seed), method)] = _recon(r_path)

    return Results(
        config=config,
        sources=_frame(sources, KEY_COLS + ["natural_acc", "weight_norm"]),
        histories=pd.concat(histories, ignore_index=True) if histories else _frame([], KEY_COLS + ["epoch"]),
        transfers=_frame(transfers, KEY_COLS + ["target", "mode", "top1", "distance", "similarity", "otdd"]),
        transfer_histories=(pd.concat(thist, ignore_index=True) if thist
                            else _frame([], KEY_COLS + ["target", "mode", "epoch", "test_top1"])),
        distances=distances,
        fisher=_frame(fisher, KEY_COLS + ["log_variance_mean", "lambda1", "trace_over_n"]),
        representation=_frame(rep, KEY_COLS + ["knn_acc", "silhouette"]),
        tsne=pd.concat(tsne, ignore_index=True) if tsne else _frame([], KEY_COLS + ["x", "y", "label"]),
        invert=_frame(inv, KEY_COLS + ["method", "final_loss"]),
        invert_curves=(pd.concat(curves, ignore_index=True) if curves
                       else _frame([], KEY_COLS + ["method", "step", "loss"])),
        missing=rd.missing,
        invert_images=_frame(images, KEY_COLS + ["method", "image", "kind", "psnr", "ssim", "final_loss"]),
        invert_recon=recon,
    )


def _invert_image_rows(s: dict, cols: dict) -> list[dict]:
    """Per-image rows of an invert summary.json: test images first, then photos, in job order."""
    rows = []
    losses = s.get("final_loss_per_image") or []
    for kind, prefix in (("test", ""), ("photo", "photo_")):
        psnr, ssim = s.get(f"{prefix}psnr_per_image") or [], s.get(f"{prefix}ssim_per_image") or []
        for i, (p, q) in enumerate(zip(psnr, ssim)):
            idx = i if kind == "test" else len(s.get("psnr_per_image") or []) + i
            rows.append({**cols, "image": idx, "kind": kind, "psnr": p, "ssim": q,
                         "final_loss": losses[idx] if idx < len(losses) else np.nan})
    return rows


def _recon(path: Path) -> dict:
    from ..invert import load_recon

    try:
        return load_recon(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a readable recon.npz ({err}); delete it and rerun the invert rule") from None


def _tsne_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame | None:
    """Normalize a t-SNE table to columns x, y, label (names vary between writers)."""
    cols = {c.lower(): c for c in df.columns}
    pairs = [("x", "y"), ("tsne_0", "tsne_1"), ("tsne1", "tsne2"), ("dim0", "dim1"), ("z0", "z1")]
    xy = next(((cols[a], cols[b]) for a, b in pairs if a in cols and b in cols), None)
    lab = next((cols[c] for c in ("label", "class", "target") if c in cols), None)
    if xy is None or lab is None:
        log.warning("%s: no (x, y, label) columns among %s; left out of the t-SNE grid", path, list(df.columns))
        return None
    return pd.DataFrame({"x": df[xy[0]], "y": df[xy[1]], "label": df[lab]})
