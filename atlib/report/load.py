"""Read every result file the config implies into tidy pandas tables.

The config (not a directory scan) says what should exist, so a missing file is known by
name: it is logged with `logging.warning`, listed in `Results.missing`, and its cells stay
NaN (never 0). A corrupt file stops with a message naming it.

Every per-model frame has a column `objective` ("standard" for eps 0, "madry" or "trades" for
adversarial models, "gaussian" for Gaussian-noise ones; distances: `probe_objective`). The
report groups by eps, so Gaussian-noise models (path tag gn, every eps) are kept out of the
paper's frames: their rows are only in `gaussian_sources` and `gaussian_fisher`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from atlib.report.stats import DISTANCES
from atlib.spec import jobs as job_model
from atlib.spec.grid import ModelKey, eps_str, probe_of
from atlib.spec.jobs import Job

log = logging.getLogger("atlib.report")

KEY_COLS = ["source", "arch", "eps", "seed"]
SOURCE_COLS = KEY_COLS + ["objective", "natural_acc", "weight_norm"]
FISHER_COLS = KEY_COLS + ["objective", "log_variance_mean", "lambda1", "trace_over_n"]
SWEEP_COLS = ["loss_budget", "beta", "log_variance_mean", "kl_total", "loss_increase", "noisy_acc"]
IMAGE_COLS = ["objective", "method", "image", "kind", "psnr", "ssim", "final_loss"]


@dataclass
class ExpectedJobs:
    """The report's expected job lists: every job the config asks for (atlib.spec.jobs, the same grid as the
    workflow's rules), by kind."""

    models: list[Job]
    transfers: list[Job]
    distances: list[Job]
    analyses: dict[str, list[Job]]  # fisher, representation, invert (one job per model and method)
    probe: dict  # config["distance"]
    objectives: dict[ModelKey, str] = field(default_factory=dict)

    def objective(self, key: ModelKey) -> str:
        """The model's `objective` column (a probe outside the config is a standard model)."""
        return self.objectives.get(key, "gaussian" if key.gaussian else "standard" if float(key.eps) == 0
                                   else "madry")

    def cols(self, key: ModelKey) -> dict:
        """The key columns of a model's rows, plus its objective."""
        return {**_key_cols(key), "objective": self.objective(key)}


def expected_jobs(config: dict) -> ExpectedJobs:
    """The jobs whose results the report reads (a checked config)."""
    jm = job_model
    analyses = {"fisher": jm.fisher(config), "representation": jm.representation(config), "invert": jm.invert(config)}
    return ExpectedJobs(jm.models(config), jm.transfers(config), jm.distances(config), analyses, config["distance"],
                jm.objectives(config))


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
    # Gaussian-noise models (objective gaussian), same columns as `sources` and `fisher`.
    gaussian_sources: pd.DataFrame = field(default_factory=lambda: _frame([], SOURCE_COLS))
    gaussian_fisher: pd.DataFrame = field(default_factory=lambda: _frame([], FISHER_COLS))
    # Per (model, loss budget) of the fisher rule's beta sweep.
    fisher_sweep: pd.DataFrame = field(default_factory=lambda: _frame([], KEY_COLS + SWEEP_COLS))
    # One row per inverted image: KEY_COLS + method, image (index within the job), kind ("test" or
    # "photo"), psnr, ssim, final_loss (that image's clean loss at the last step).
    invert_images: pd.DataFrame = field(default_factory=lambda: _frame([], KEY_COLS + IMAGE_COLS))
    # recon.npz contents by (source, arch, eps, seed, method), see atlib.info.recon.load_recon:
    # float images `original`, `recon`; `photo` mask; `loss` (steps + 1, N) per-image curves.
    invert_recon: dict[tuple, dict] = field(default_factory=dict)
    # Every file read or looked for, relative to the results root (atlib.spec.jobs.report_inputs).
    inputs: list[str] = field(default_factory=list)

    def experiment_groups(self) -> list[tuple[str, str]]:
        """(source, arch) of every experiment with transfers, in config order."""
        out: list[tuple[str, str]] = []
        for exp in self.config["experiments"].values():
            if exp["targets"] and (exp["source"], exp["arch"]) not in out:
                out.append((exp["source"], exp["arch"]))
        return out

    def targets_of(self, source: str, arch: str) -> list[str]:
        out: list[str] = []
        for exp in self.config["experiments"].values():
            if (exp["source"], exp["arch"]) == (source, arch):
                out += [t for t in exp["targets"] if t not in out]
        return out


class _Reader:
    """Reads result files relative to the results root, recording every file it looks for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.missing: list[str] = []
        self.inputs: list[str] = []

    def optional(self, rel: str) -> Path | None:
        """The file if it exists (optional by contract: no warning when absent)."""
        self.inputs.append(rel)
        path = self.root / rel
        return path if path.exists() else None

    def _absent(self, path: Path, what: str) -> bool:
        self.inputs.append(path.relative_to(self.root).as_posix())
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


def _pgd_cols(m: dict) -> dict:
    """PGD accuracy per eps; where the metrics have them (written since they exist), the images attacked
    (pgd_n) and the 95% Wilson interval (pgd_lo_<eps>, pgd_hi_<eps>)."""
    cols = {f"pgd_acc_{eps_str(float(e))}": float(v) for e, v in (m.get("pgd_acc") or {}).items()}
    for e, ci in (m.get("pgd_acc_ci") or {}).items():
        e = eps_str(float(e))
        cols.update({"pgd_n": ci["n"], f"pgd_lo_{e}": ci["lo"], f"pgd_hi_{e}": ci["hi"]})
    return cols


def _autoattack_cols(m: dict) -> dict:
    """AutoAttack accuracy per eps, PGD on the same images, the image count and the attacks, when it ran;
    and, where the metrics have it, the 2x2 table of both attacks' per-image outcomes (paired_<cell>_<eps>)."""
    aa = m.get("autoattack")
    if not aa:
        return {}
    cols = {f"autoattack_acc_{eps_str(float(e))}": float(v) for e, v in m.get("autoattack_acc", {}).items()}
    cols.update({f"pgd_same_images_{eps_str(float(e))}": float(v) for e, v in aa["pgd_acc_same_images"].items()})
    for e, table in (aa.get("paired") or {}).items():
        cols.update({f"paired_{cell}_{eps_str(float(e))}": int(k) for cell, k in table.items()})
    return {**cols, "autoattack_n": aa["n_images"],
            "autoattack_attacks": f"{aa['version']}: {', '.join(aa['attacks'])}"}


def _frame(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float)
    return df


def _source_row(rd: _Reader, job: Job, cols: dict) -> dict:
    """A `sources` row: the model's metrics.json (NaN cells when it is missing)."""
    m = rd.json(job.rel("metrics"), "source model metrics")
    row = dict(cols)
    if m is not None:
        row.update(natural_acc=m.get("natural_acc", np.nan), weight_norm=m.get("weight_norm", np.nan),
                   epochs=m.get("epochs", np.nan), train_time_s=m.get("train_time_s", np.nan),
                   **_pgd_cols(m), **_autoattack_cols(m))
    else:
        row.update(natural_acc=np.nan, weight_norm=np.nan)
    return row


def _fisher_row(rd: _Reader, job: Job, cols: dict) -> tuple[dict, list[dict]]:
    """A `fisher` row (weights, posterior calibration, input Fisher) and the model's beta-sweep rows,
    from its Fisher summary.json."""
    f = rd.json(job.rel("summary"), "Fisher summary")
    row = dict(cols)
    if f is None:
        return row, []
    inp, post = f.get("input_fisher") or {}, f.get("posterior") or {}
    row.update(log_variance_mean=f.get("log_variance_mean", np.nan), kl_total=f.get("kl_total", np.nan),
               fisher_trace=f.get("fisher_trace", np.nan), fisher_weight_norm=f.get("weight_norm", np.nan),
               loss_budget=post.get("loss_budget", np.nan), beta=post.get("beta", np.nan),
               loss_increase=post.get("loss_increase", np.nan), clean_acc=post.get("clean_acc", np.nan),
               noisy_acc=post.get("noisy_acc", np.nan),
               lambda1=inp.get("lambda1", np.nan), trace=inp.get("trace", np.nan),
               trace_over_n=inp.get("trace_over_n", np.nan), n_input=inp.get("n", np.nan))
    return row, [{**cols, **{k: s.get(k, np.nan) for k in SWEEP_COLS}} for s in f.get("sweep", [])]


def load_results(config: dict, results_dir: str | Path | None = None) -> Results:
    """Read all result files of `config` under `results_dir` (default: config["results"])."""
    root = Path(results_dir if results_dir is not None else config["results"])
    jobs = expected_jobs(config)
    rd = _Reader(root)
    sources, histories, gn_sources = _sources(rd, jobs)
    dist_rows = _distance_rows(rd, jobs)
    transfers, thist = _transfers(rd, jobs, dist_rows)
    fisher, gn_fisher, sweep = _fisher(rd, jobs)
    rep, tsne = _representation(rd, jobs)
    inv, curves, images, recon = _inversion(rd, jobs)
    return Results(
        config=config,
        sources=_frame(sources, SOURCE_COLS),
        histories=(pd.concat(histories, ignore_index=True) if histories
                   else _frame([], KEY_COLS + ["objective", "epoch"])),
        transfers=_frame(transfers, KEY_COLS + ["objective", "target", "mode", "top1", "distance", "similarity",
                                                "otdd"]),
        transfer_histories=(pd.concat(thist, ignore_index=True) if thist
                            else _frame([], KEY_COLS + ["objective", "target", "mode", "epoch", "test_top1"])),
        distances=_frame(dist_rows, ["probe_source", "probe_arch", "probe_eps", "probe_seed", "probe_objective",
                                     "dataset", "similarity", *DISTANCES]),
        fisher=_frame(fisher, FISHER_COLS),
        representation=_frame(rep, KEY_COLS + ["objective", "knn_acc", "silhouette"]),
        tsne=pd.concat(tsne, ignore_index=True) if tsne else _frame([], KEY_COLS + ["objective", "x", "y", "label"]),
        invert=_frame(inv, KEY_COLS + ["objective", "method", "final_loss"]),
        invert_curves=(pd.concat(curves, ignore_index=True) if curves
                       else _frame([], KEY_COLS + ["objective", "method", "step", "loss"])),
        missing=rd.missing,
        gaussian_sources=_frame(gn_sources, SOURCE_COLS),
        gaussian_fisher=_frame(gn_fisher, FISHER_COLS),
        fisher_sweep=_frame(sweep, KEY_COLS + SWEEP_COLS),
        invert_images=_frame(images, KEY_COLS + IMAGE_COLS),
        invert_recon=recon,
        inputs=rd.inputs,
    )


def _sources(rd: _Reader, jobs: ExpectedJobs) -> tuple[list[dict], list[pd.DataFrame], list[dict]]:
    """Source-model rows and training histories; Gaussian-noise models' rows apart (no history)."""
    sources, histories, gn_sources = [], [], []
    for job in jobs.models:
        key = job.model
        if key.gaussian:
            gn_sources.append(_source_row(rd, job, jobs.cols(key)))
            continue
        sources.append(_source_row(rd, job, jobs.cols(key)))
        h = rd.csv(job.rel("history"), "source training history", ("epoch",))
        if h is not None:
            histories.append(h.assign(**jobs.cols(key)))
    return sources, histories, gn_sources


def _distance_rows(rd: _Reader, jobs: ExpectedJobs) -> list[dict]:
    """One row per (probe, dataset) task distance."""
    rows = []
    for job in jobs.distances:
        d = rd.json(job.rel("json"), "task distance")
        row = {**{f"probe_{k}": v for k, v in jobs.cols(job.model).items()}, "dataset": job.dataset}
        # Records written before a distance existed lack its key: NaN, never 0.
        row.update({k: (d or {}).get(k, np.nan) for k in ("similarity", *DISTANCES, "n_images")})
        rows.append(row)
    return rows


def _transfers(rd: _Reader, jobs: ExpectedJobs, dist_rows: list[dict]) -> tuple[list[dict], list[pd.DataFrame]]:
    """Transfer rows (with the task distance of their probe to the target) and fine-tuning histories."""
    dist_index = {(r["probe_source"], r["probe_arch"], r["probe_eps"], r["probe_seed"], r["dataset"]): r
                  for r in dist_rows}
    transfers, thist = [], []
    for job in jobs.transfers:
        key, target, mode = job.model, job.target, job.mode
        m = rd.json(job.rel("metrics"), "transfer metrics")
        row = {**jobs.cols(key), "target": target, "mode": int(mode), "top1": np.nan}
        if m is not None:
            row.update(top1=m.get("top1", np.nan), epochs=m.get("epochs", np.nan), cached=m.get("cached"),
                       train_time_s=m.get("train_time_s", np.nan), **_pgd_cols(m))
        p = probe_of(key, jobs.probe)
        d = dist_index.get((p.source, p.arch, float(p.eps), int(p.seed), target), {})
        row.update(distance=d.get("emd", np.nan), similarity=d.get("similarity", np.nan),
                   otdd=d.get("otdd", np.nan))
        transfers.append(row)
        h = rd.csv(job.rel("history"), "transfer history", ("epoch", "test_top1"))
        if h is not None:
            thist.append(h.assign(**jobs.cols(key), target=target, mode=int(mode)))
    return transfers, thist


def _fisher(rd: _Reader, jobs: ExpectedJobs) -> tuple[list[dict], list[dict], list[dict]]:
    """Fisher rows, those of Gaussian-noise models apart, and the beta-sweep rows (not Gaussian)."""
    fisher, gn_fisher, sweep = [], [], []
    for job in jobs.analyses["fisher"]:
        row, rows = _fisher_row(rd, job, jobs.cols(job.model))
        (gn_fisher if job.model.gaussian else fisher).append(row)
        sweep += [] if job.model.gaussian else rows
    return fisher, gn_fisher, sweep


def _representation(rd: _Reader, jobs: ExpectedJobs) -> tuple[list[dict], list[pd.DataFrame]]:
    """Representation rows and t-SNE tables of the non-Gaussian models."""
    rep, tsne = [], []
    for job in jobs.analyses["representation"]:
        key = job.model
        if key.gaussian:
            continue
        r = rd.json(job.rel("summary"), "representation summary")
        row = jobs.cols(key)
        if r is not None:
            row.update(knn_acc=r.get("knn_acc", np.nan), silhouette=r.get("silhouette", np.nan))
        rep.append(row)
        path = rd.optional(job.rel("tsne"))
        if path is not None:
            t = _tsne_frame(pd.read_csv(path), path)
            if t is not None:
                tsne.append(t.assign(**jobs.cols(key)))
    return rep, tsne


def _inversion(rd: _Reader, jobs: ExpectedJobs) -> tuple[list[dict], list[pd.DataFrame], list[dict], dict]:
    """Inversion summaries, loss curves, per-image quality and reconstructions of the non-Gaussian models."""
    inv, curves, images, recon = [], [], [], {}
    for job in jobs.analyses["invert"]:
        key, method = job.model, job.method
        if key.gaussian:
            continue
        c = rd.csv(job.rel("curve"), "inversion curve", ("step", "loss"))
        if c is not None:
            curves.append(c[["step", "loss"]].assign(**jobs.cols(key), method=method))
        s_path = rd.optional(job.rel("summary"))
        s = json.loads(s_path.read_text()) if s_path is not None else {}
        inv.append({**jobs.cols(key), "method": method,
                    **{k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        images += _invert_image_rows(s, {**jobs.cols(key), "method": method})
        r_path = rd.optional(job.rel("recon"))  # optional by contract (older runs lack it)
        if r_path is not None:
            recon[(key.source, key.arch, float(key.eps), int(key.seed), method)] = _recon(r_path)
    return inv, curves, images, recon


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
    from atlib.info.recon import load_recon

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
