"""What a recommendation measures before it predicts: the config with the user's folder as a target
(`Setup`), the folder in the prepared format, and every candidate model's task distances to it.
The prediction, ranking and outputs are `atlib.workflow.recommend`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from atlib.core.io import write_json_atomic
from atlib.data.folder import FOLDER
from atlib.report.stats import DISTANCES
from atlib.spec import jobs
from atlib.spec.config import check_config
from atlib.spec.grid import ModelKey, experiment_keys, probe_of
from atlib.spec.schema import ConfigError, merge_files


@dataclass
class Setup:
    """One recommendation: the checked config (with the folder as a target), the run's own config
    (the fit's data), the experiment, the target's name and the results root."""

    config: dict
    run_config: dict
    experiment: str
    name: str
    results: Path

    @property
    def exp(self) -> dict:
        return self.config["experiments"][self.experiment]

    @property
    def out_dir(self) -> Path:
        return Path(jobs.Job(jobs.RECOMMEND, target=self.name).dir(str(self.results)))

    def candidates(self) -> list[ModelKey]:
        return list(experiment_keys(self.config, self.exp))


def target_name(folder: str | Path) -> str:
    """A dataset name from a folder's name (the wildcard's characters only)."""
    name = re.sub(r"[^A-Za-z0-9_\-]+", "_", Path(folder).resolve().name).strip("_") or "target"
    return name if name != "features" else "features_target"


def overlay(raw: dict, experiment: str, name: str, folder: Path) -> dict:
    """The config added to the user's for one folder: the dataset, a target of the experiment, one job
    per transfer (so --confirm fine-tunes only what it asks for)."""
    targets = [t for t in raw["experiments"][experiment].get("targets", []) if t != name]
    return {"datasets": {name: {"base": FOLDER, "path": str(Path(folder).resolve())}},
            "experiments": {experiment: {"targets": targets + [name]}}, "batch_jobs": False}


def setup(configs: list[str], results: str, folder: str, name: str | None = None) -> tuple[Setup, dict]:
    """The checked configs of one recommendation (ConfigError names every bad file of the folder)."""
    from snakemake.utils import update_config

    raw = merge_files(configs)
    raw["results"] = results
    run = check_config(json.loads(json.dumps(raw)))
    experiment = run["recommend"]["experiment"] or next((n for n, e in run["experiments"].items() if e["targets"]),
                                                        None)
    if experiment not in run["experiments"]:
        raise ConfigError(f"config error at recommend.experiment: no experiment {experiment!r} with targets")
    from atlib.data import REGISTRY

    taken = set(REGISTRY) | {n for n, d in run["datasets"].items() if d.get("base") != FOLDER}
    if name is None:
        name = target_name(folder)
        name = f"{name}_folder" if name in taken else name  # a folder called `letters` is not the registry's
    if name in taken:
        raise ConfigError(f"recommend: {name!r} is a dataset of the registry or the config already; pass another "
                          "--name")
    extra = overlay(raw, experiment, name, Path(folder))
    full = json.loads(json.dumps(raw))
    update_config(full, extra)
    return Setup(check_config(full, decode_images=True), run, experiment, name, Path(results)), extra



def prepared_target(s: Setup) -> Path:
    """The folder in the prepared format (results/data/<name>), rebuilt only when an image or the spec
    changed since (a rewrite would make every transfer to it stale in Snakemake's eyes)."""
    from atlib.data import AcquireContext, prepare
    from atlib.data.folder import folder_files

    spec = s.config["datasets"][s.name]
    out = s.results / "data" / s.name
    meta = out / "meta.json"
    files = folder_files(spec["path"])
    if meta.is_file():
        m = json.loads(meta.read_text())
        fresh = meta.stat().st_mtime >= max(Path(f).stat().st_mtime for f in files)
        if fresh and m.get("spec") == spec:
            return out
    prepare(s.name, out, AcquireContext(Path(s.config["data_root"])), derived=spec)
    write_json_atomic(meta, {**json.loads(meta.read_text()), "spec": spec})
    return out


def _features(model, meta: dict, key: ModelKey, data_dir: Path, cache: Path, newer_than: list[Path], cfg: dict):
    """A candidate's features of one prepared dataset, from `cache` when it is newer than its inputs."""
    from atlib.core.runtime import pick_device
    from atlib.data import Prepared
    from atlib.distance.measures import FeatureSet, dataset_features

    if cache.is_file() and all(cache.stat().st_mtime >= p.stat().st_mtime for p in newer_than):
        return FeatureSet.load(cache)
    data = Prepared(data_dir)
    d = cfg["distance"]
    feats, labels = dataset_features(model, meta, data, d["max_images"], jobs.job_seed("features", data.name),
                                     d["batch_size"], pick_device(cfg["device"]), name=key.path)
    fs = FeatureSet(feats, labels, key.path, data.name, data.num_classes)
    fs.save(cache)
    return fs


def candidate_distances(s: Setup, target_dir: Path) -> pd.DataFrame:
    """Every candidate's task distances (no Task2Vec: it needs a Fisher per candidate) from the source
    to the folder, in its own feature space. Source features come from the run's cache where the
    candidate is a probe, else from the candidate cache; the folder's are cached per candidate."""
    from atlib.distance.measures import task_distance
    from atlib.models.checkpoint import load_model

    cfg, d, res = s.config, s.config["distance"], str(s.results)
    keys = list(dict.fromkeys(s.candidates() + [probe_of(k, d) for k in s.candidates()]))
    rows = []
    for key in keys:
        model_file = Path(jobs.Job(jobs.MODEL, key).path(res, "model"))
        model, meta = load_model(model_file)
        src_dir = s.results / "data" / key.source
        feats = {}
        for ds, ddir in ((key.source, src_dir), (s.name, target_dir)):
            run_cache = Path(jobs.Job(jobs.FEATURES, key, dataset=ds).path(res, "features"))
            cache = run_cache if ds == key.source and run_cache.is_file() else \
                Path(jobs.Job(jobs.CANDIDATE_FEATURES, key, dataset=ds).path(res, "features"))
            feats[ds] = _features(model, meta, key, ddir, cache, [model_file, ddir / "meta.json"], cfg)
        rec = task_distance(feats[key.source], feats[s.name], gamma=d["gamma"], pca_dim=d["pca_dim"],
                            max_points=d["otdd_points"], seed=jobs.job_seed("otdd", key.path))
        rows.append({"model": key.path, "eps": float(key.eps), "seed": key.seed,
                     **{c: rec[c] for c in DISTANCES if c in rec}})
    return pd.DataFrame(rows)
