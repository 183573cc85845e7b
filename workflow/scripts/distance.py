"""Rules features, task_distance and distances_*: a probe's feature caches, then task distances.

params.features: datasets whose features to extract (rule features, or all of a probe's);
params.distances: (source cache, target cache) pairs to compare (rule task_distance, or all);
each pair also names both datasets' data, whose images give the Task2Vec Fisher of the probe.
"""

import logging
from pathlib import Path

from atlib.core.io import write_json_atomic
from atlib.core.runtime import pick_device, set_threads
from atlib.data import Prepared
from atlib.distance.measures import FeatureSet, dataset_features, task_distance
from atlib.info.task2vec import task_embedding
from atlib.models.checkpoint import CheckpointError, load_model
from atlib.spec import provenance
from atlib.workflow.logs import job_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
p = sm.params


def extract(model, meta, job: dict) -> None:
    data = Prepared(Path(job["data"]).parent)
    feats, labels = dataset_features(model, meta, data, p.max_images, job["seed"], p.batch_size,
                                     pick_device(p.device), name=p.probe)
    fs = FeatureSet(feats, labels, p.probe, job["dataset"], data.num_classes)
    fs.save(job["out"])
    provenance.record([sm.input.model, job["data"]], [job["out"]], sm.config)
    logging.info("%s on %s: %d images, %d classes, feature dim %d", p.probe, data.name, len(labels),
                 len(fs.classes), feats.shape[1])


def embed(model, meta, cache: str, fs: FeatureSet, data: str, seed: int, memo: dict):
    """The Task2Vec embedding of one feature cache's dataset, once per job (the source is shared)."""
    if cache not in memo:
        memo[cache] = task_embedding(model, meta, fs.features, fs.labels, Path(data).parent, p.task2vec_images,
                                     seed, f"Task2Vec of {fs.dataset} under probe {p.probe}", pick_device(p.device))
    return memo[cache]


def distance(model, meta, job: dict, memo: dict) -> None:
    source, target = FeatureSet.load(job["source"]), FeatureSet.load(job["target"])
    emb = (embed(model, meta, job["source"], source, job["source_data"], job["seed"], memo),
           embed(model, meta, job["target"], target, job["target_data"], job["seed"], memo))
    record = task_distance(source, target, gamma=p.gamma, pca_dim=p.pca_dim, max_points=p.otdd_points,
                           seed=job["seed"], embeddings=emb)
    write_json_atomic(job["out"], record)
    # Task2Vec also read the probe and both datasets' images.
    provenance.record([job["source"], job["target"], sm.input.model, job["source_data"], job["target_data"]],
                      [job["out"]], sm.config)
    logging.info("%s -> %s under %s: EMD %.4f, similarity %.4f, OTDD %.4f, exact OTDD %.4f, Task2Vec %.4f, "
                 "LogME %.4f", record["source"], record["dataset"], record["probe"], record["emd"],
                 record["similarity"], record["otdd"], record["otdd_exact"], record["task2vec"], record["logme"])


with job_logging(sm.log[0]):
    set_threads(sm.threads)
    try:
        model, meta = load_model(sm.input.model)
        for job in p.features:
            extract(model, meta, job)
        memo = {}
        for job in p.distances:
            distance(model, meta, job, memo)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
