"""The idempotent ingest: the MLflow experiment mirrors the results tree, one run per finished job.

Result files are the source of truth. `ingest` walks `results/` (discovery) and keeps exactly one
MLflow run per finished job, found again through its `job_key` tag. A run whose files, params,
datasets and layout are unchanged (`content_hash` tag) is skipped; a changed job's run is deleted
and logged again from scratch (mapping), so metric histories and dataset inputs never hold stale or
doubled entries, and runs from an older ingest (older `mapping.LAYOUT`) are upgraded the same way,
never duplicated.

The experiment is tagged `mlflow.experimentKind = custom_model_development`, the experiment's kind as
MLflow 3 stores it ("Machine learning"). MLflow 3.17 stores no default page: a new browser (in the UI's
*GenAI* mode) still opens the experiment on its GenAI overview, so `make ui` prints the runs table's
own address (atlib.workflow.tracking.ui).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from atlib.workflow.tracking.discovery import FoundResult, find_results, parse_key
from atlib.workflow.tracking.mapping import (
    NOTE_TAG,
    PARENT_TAG,
    RunDataset,
    TrackingError,
    config_index,
    content_hash,
    job_datasets,
    job_metrics,
    job_params,
    job_tags,
    job_times,
    parent_key,
    run_name,
)

log = logging.getLogger(__name__)

# MLflow's per-call limits for log_batch.
BATCH_METRICS, BATCH_PARAMS, BATCH_TAGS = 1000, 100, 100
# The experiment's kind: training runs, not GenAI traces (the UI's experiment kind selector shows it).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_NOTE = ("One run per job of the atlib workflow (result files under results/ are the source of truth). "
                   "Each source model's run holds its transfers, Fisher, t-SNE, inversion and task-distance runs "
                   "(expand it); the run named `report` holds the report's figures and tables. Robust vs standard "
                   "transfers: filter `tags.rule = 'transfer'` and group by the tag `robustness`.")
# The tag MLflow's UI reads a dataset input's context from (mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT).
DATASET_CONTEXT_TAG = "mlflow.data.context"


def default_uri(results_dir: str | Path) -> str:
    """The local store: `sqlite:///<abs results>/mlflow.db` (MLflow >= 3.7 defaults to sqlite)."""
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def git_commit(path: str | Path = ".") -> str | None:
    """HEAD of the git checkout holding `path` (None outside git)."""
    try:
        r = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A remote server must answer before we spend minutes in MLflow's retries."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as err:
        raise TrackingError(
            f"MLflow server {uri} is not reachable ({type(err).__name__}). Start it (README, Running on a cluster: "
            "`mlflow server --backend-store-uri ...`), or set tracking.uri: null to use the local "
            "sqlite store, then rerun the `track` rule: result files are unaffected.") from None


def experiment_id(client, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created (or restored) and tagged so the UI opens on the runs table."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        loc = artifact_root.resolve().as_uri() if artifact_root is not None else None
        return client.create_experiment(name, artifact_location=loc,
                                        tags={**EXPERIMENT_KIND, NOTE_TAG: EXPERIMENT_NOTE})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for k, v in EXPERIMENT_KIND.items():  # an experiment made by an earlier version, or by MLflow
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    if NOTE_TAG not in exp.tags:  # the user's own description stays
        client.set_experiment_tag(exp.experiment_id, NOTE_TAG, EXPERIMENT_NOTE)
    return exp.experiment_id


def artifact_root(uri: str, results_dir: str | Path | None = None) -> Path | None:
    """Where a new experiment keeps artifacts: beside a sqlite store (MLflow's default, ./mlruns,
    would be the current directory of whichever process created the experiment first)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the server decides
    return Path(results_dir) / "mlartifacts" if results_dir is not None else None


def runs_by_key(client, experiment: str) -> dict[str, list]:
    """The experiment's runs (id `experiment`) that have a job_key tag, by job_key."""
    runs: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment], "", max_results=1000, page_token=token)
        for r in page:
            key = r.data.tags.get("job_key")
            if key:
                runs.setdefault(key, []).append(r)
        token = page.token
        if not token:
            return runs


def log_datasets(client, run_id: str, datasets: list[RunDataset]) -> None:
    """The job's datasets as the run's dataset inputs: name, digest and the prepared folder (a local
    source), tagged with their context; the runs table's Dataset column shows them."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [DatasetInput(Dataset(d.name, d.digest, "local", json.dumps({"uri": str(d.path)})),
                           tags=[InputTag(DATASET_CONTEXT_TAG, d.context)]) for d in datasets]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def log_run(client, experiment: str, found: FoundResult, params: dict[str, str], tags: dict[str, str], name: str,
            datasets: list[RunDataset]) -> str:
    """One new, finished run of a job in experiment (id) `experiment`; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    start, end = job_times(found)
    run = client.create_run(experiment, start_time=start, run_name=name,
                            tags={"job_key": found.key, "rule": found.rule})
    rid = run.info.run_id
    metrics = [Metric(k, v, end, s) for k, v, s in job_metrics(found)]
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(metrics), BATCH_METRICS):
        client.log_batch(rid, metrics=metrics[i:i + BATCH_METRICS])
    for i in range(0, len(p), BATCH_PARAMS):
        client.log_batch(rid, params=p[i:i + BATCH_PARAMS])
    for i in range(0, len(t), BATCH_TAGS):
        client.log_batch(rid, tags=t[i:i + BATCH_TAGS])
    log_datasets(client, rid, datasets)
    for f in found.files:
        client.log_artifact(rid, str(f))
    with redirect_stdout(io.StringIO()):  # a server URI prints two "View run" lines per run
        client.set_terminated(rid, "FINISHED", end_time=end)
    return rid


def ingest(results_dir: str | Path, uri: str | None = None, experiment: str = "atlib", config: dict | None = None,
           commit: str | None = None, part: str = "all") -> dict[str, Any]:
    """Make the MLflow experiment mirror the results tree: one run per finished job.

    Args:
        results_dir: the results root.
        uri: tracking URI; None = `default_uri(results_dir)`.
        experiment: MLflow experiment name.
        config: the workflow config (checked, defaults filled): params and the config hash.
        commit: git commit of the code that produced the results (tag), if known (`git_commit`).
        part: "all"; or "jobs" (every job but the report) and then "report", so that the jobs'
            runs are logged while the report is still being made (the workflow's two track rules).

    Returns: {"uri", "experiment", "experiment_id", "jobs", "created", "updated", "skipped",
        "relinked" (unchanged runs given their current name or parent), "stale_kept" (job_keys of
        runs whose results are gone; kept), "seconds"}.
    Raises TrackingError (one message) for an unreachable server, a failing store or an unreadable
    result file. Replaced runs are soft-deleted: `mlflow gc --backend-store-uri <uri>` purges them.
    An interrupted ingest is simply run again: finished runs are skipped.
    """
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    uri = uri or default_uri(results_dir)
    try:
        return _ingest(Path(results_dir), uri, experiment, config, commit, part)
    except (MlflowException, SQLAlchemyError, OSError, requests.RequestException) as err:
        raise TrackingError(f"MLflow store {uri} failed ({type(err).__name__}: {str(err)[:500]}). Fix it (or set "
                            "tracking.uri) and rerun the `track` rule; result files are unaffected.") from None


def _rule_of(key: str) -> str:
    """The rule of a stored run's job_key ("" for a key no job kind matches, kept with the results)."""
    try:
        return parse_key(key).kind.rule
    except ValueError:
        return ""


def _relink(client, run, name: str, parent: str | None) -> bool:
    """Give an unchanged run its current name and parent (a parent logged again has a new id)."""
    rid, changed = run.info.run_id, False
    if run.info.run_name != name:
        client.update_run(rid, name=name)
        changed = True
    if run.data.tags.get(PARENT_TAG) != parent:
        if parent:
            client.set_tag(rid, PARENT_TAG, parent)
        else:
            client.delete_tag(rid, PARENT_TAG)
        changed = True
    return changed


def in_part(rule: str, part: str) -> bool:
    """Whether jobs of `rule` belong to an ingest `part` (see `ingest`)."""
    if part not in ("all", "jobs", "report"):
        raise ValueError(f"ingest part {part!r}: expected all, jobs or report")
    return part == "all" or (rule == "aggregate") == (part == "report")


def _common_tags(config: dict | None, commit: str | None) -> dict[str, str]:
    """Tags of every run of one ingest: the config's hash and the code's commit, where known."""
    from atlib.spec.schema import config_hash

    tags = {"config_hash": config_hash(config) if config else "", "git_commit": commit or "",
            "mlflow.source.git.commit": commit or ""}
    return {k: v for k, v in tags.items() if v}


def _ingest(results: Path, uri: str, experiment: str, config: dict | None, commit: str | None,
            part: str = "all") -> dict[str, Any]:
    from mlflow import MlflowClient

    from atlib.spec import provenance

    t0 = time.time()
    check_reachable(uri)
    # Source models first: their run ids are the parents of everything else.
    found = sorted((f for f in find_results(results) if in_part(f.rule, part)),
                   key=lambda f: (f.rule != "train_source", f.key))
    client = MlflowClient(tracking_uri=uri)
    exp_id = experiment_id(client, experiment, artifact_root(uri, results))
    existing = {k: runs for k, runs in runs_by_key(client, exp_id).items() if in_part(_rule_of(k), part)}
    common = _common_tags(config, commit)
    counts = {"created": 0, "updated": 0, "skipped": 0, "relinked": 0}
    index = config_index(config)
    qualify = len({(f.wildcards["source"], f.wildcards["arch"]) for f in found if "arch" in f.wildcards}) > 1
    run_ids: dict[str, str] = {}
    for result in found:
        params = job_params(result, config, index)
        prov = provenance.tags(provenance.job_record(result.job, results))  # input sha256s, config hash, code
        datasets = job_datasets(result, results)
        inputs = [[d.name, d.digest, d.context] for d in datasets]
        digest = content_hash(result, {**params, **prov, "datasets": inputs})
        tags = {**common, **job_tags(result, params), **prov, "content_hash": digest}
        name = run_name(result.rule, result.wildcards, qualify, tags.get("origin") == "imported")
        parent = run_ids.get(parent_key(result.rule, result.wildcards) or "")
        old = existing.pop(result.key, [])
        if len(old) == 1 and old[0].data.tags.get("content_hash") == digest:
            counts["skipped"] += 1
            counts["relinked"] += _relink(client, old[0], name, parent)
            run_ids[result.key] = old[0].info.run_id
            continue
        # Changed results, an older layout, or a live run from the job itself: log it again from scratch.
        for r in old:
            client.delete_run(r.info.run_id)
        if parent:
            tags[PARENT_TAG] = parent
        run_ids[result.key] = log_run(client, exp_id, result, params, tags, name, datasets)
        counts["updated" if old else "created"] += 1
    summary = {"uri": uri, "experiment": experiment, "experiment_id": exp_id, "jobs": len(found), **counts,
               "stale_kept": sorted(existing), "seconds": round(time.time() - t0, 2)}
    log.info("MLflow ingest: %s", summary)
    return summary
