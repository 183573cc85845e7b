"""Live logging from a running job, and the MLflow runs of `make recommend`.

`LiveLogger` lets a training job stream its metrics while it runs. It never raises: if the server
is down or slow it warns once and turns itself off; the ingest (atlib.workflow.tracking.ingest)
later replaces the live run with the complete one (same `job_key`, no duplicate).
"""

from __future__ import annotations

import csv
import io
import os
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

from atlib.workflow.tracking.discovery import job_key, parse_key
from atlib.workflow.tracking.ingest import (
    BATCH_METRICS,
    artifact_root,
    check_reachable,
    default_uri,
    experiment_id,
    runs_by_key,
)
from atlib.workflow.tracking.mapping import PARENT_TAG, csv_float, finite, parent_key, run_name


@contextmanager
def _short_http_timeouts(timeout: float) -> Iterator[None]:
    """Live logging must not stall a job: no retries, a short timeout (read per request by MLflow)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout)))}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LiveLogger:
    """Stream a job's metrics to MLflow while it runs; never raises, never stalls the job for long.

    The run is tagged with `job_key` (see `job_key()`), so a retried job continues the same run and
    the `track` ingest later replaces it with the complete run from the result files.

    Args:
        uri: tracking URI (config tracking.uri, or `default_uri(results)`).
        experiment: experiment name (config tracking.experiment).
        job_key: `job_key(results, snakemake.output[0])`.
        tags: extra tags (rule, wildcards, ...).
        enabled: config tracking.live; False makes every call a no-op.
        timeout: seconds per HTTP request to a remote server.

    Example (in a rule's script)::

        from atlib.workflow.tracking.discovery import job_key
        from atlib.workflow.tracking.ingest import default_uri
        from atlib.workflow.tracking.live import LiveLogger

        uri = cfg["tracking"]["uri"] or default_uri(cfg["results"])
        with LiveLogger(uri, cfg["tracking"]["experiment"], job_key(cfg["results"], out_metrics),
                        {"rule": "train_source"}, enabled=cfg["tracking"]["live"]) as live:
            for epoch in range(epochs):
                ...
                live.log_metrics({"train_loss": loss, "test_acc": acc}, step=epoch)
    """

    def __init__(self, uri: str, experiment: str, job_key: str, tags: dict[str, Any] | None = None,
                 enabled: bool = True, timeout: float = 5.0):
        self.uri, self.experiment, self.job_key = uri, experiment, job_key
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.enabled, self.timeout = enabled, timeout
        self.client = None
        self.run_id: str | None = None

    def _disable(self, err: BaseException) -> None:
        self.enabled = False
        warnings.warn(f"MLflow live logging to {self.uri} is off for this job ({type(err).__name__}: "
                      f"{str(err)[:200]}); the `track` rule will ingest the results instead.", stacklevel=3)

    def _call(self, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            with _short_http_timeouts(self.timeout):
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - live logging must never fail a job
            self._disable(err)
            return None

    def _start(self) -> None:
        from mlflow import MlflowClient

        check_reachable(self.uri, timeout=self.timeout)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp_id = experiment_id(self.client, self.experiment, artifact_root(self.uri))
        runs = self.client.search_runs([exp_id], f"tags.job_key = '{self.job_key}'", max_results=10)
        for r in runs:
            if "content_hash" in r.data.tags:  # an ingested run of results being recomputed now
                self.client.delete_run(r.info.run_id)
            elif self.run_id is None:  # a live run from an earlier attempt: continue it
                self.run_id = r.info.run_id
        if self.run_id is None:
            job = parse_key(self.job_key)
            rule, wc = job.kind.rule, job.wildcards
            tags = {"job_key": self.job_key, **self.tags}
            parent = parent_key(rule, wc)
            found = self.client.search_runs([exp_id], f"tags.job_key = '{parent}'", max_results=1) if parent else []
            if found:  # nested under its source model's run, as the ingest will nest it
                tags[PARENT_TAG] = found[0].info.run_id
            run = self.client.create_run(exp_id, run_name=run_name(rule, wc), tags=tags)
            self.run_id = run.info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, "live", "true")

    def __enter__(self) -> "LiveLogger":
        self._call(self._start)
        return self

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Log finite numbers at `step`; anything else is dropped."""
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, n, ts, int(step)) for k, v in metrics.items() if (n := finite(v)) is not None]
        if batch:
            self._call(self.client.log_batch, self.run_id, metrics=batch[:BATCH_METRICS])

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.enabled and self.run_id is not None:
            self._call(self.client.set_terminated, self.run_id, "FINISHED" if exc_type is None else "FAILED")
        return False


def live_for_job(tracking: dict[str, Any], results: str | Path, output_file: str | Path, rule: str,
                 wildcards: dict[str, str]) -> LiveLogger:
    """The `LiveLogger` of one rule job, from the config's `tracking` section (off unless `live`)."""
    uri = tracking["uri"] or default_uri(results)
    tags = {"rule": rule, **{k: str(v) for k, v in wildcards.items()}}
    return LiveLogger(uri, tracking["experiment"], job_key(results, output_file), tags, enabled=bool(tracking["live"]))


def log_recommendation(results: str | Path, tracking: dict[str, Any], target: str, out_dir: Path,
                       score: dict[str, float]) -> str:
    """One MLflow run per recommendation (atlib.workflow.recommend; job_key recommend/<target>), nested under a
    run of its target (job_key target/<target>), with the ranking, summary and figure as artifacts.
    A rerun replaces the recommendation's run (soft delete, as the ingest does). Returns its run id."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = tracking["uri"] or default_uri(results)
    client = MlflowClient(uri)
    eid = experiment_id(client, tracking["experiment"], artifact_root(uri, results))
    runs = runs_by_key(client, eid)
    tags = {"rule": "recommend", "target": target}
    parent = runs.get(f"target/{target}", [None])[0]
    if parent is None:
        parent = client.create_run(eid, run_name=f"target {target}", tags={**tags, "rule": "target",
                                                                              "job_key": f"target/{target}"})
        client.set_terminated(parent.info.run_id, "FINISHED")
    for old in runs.get(f"recommend/{target}", []):
        client.delete_run(old.info.run_id)
    run = client.create_run(eid, run_name=f"recommend {target}",
                            tags={**tags, "job_key": f"recommend/{target}", "mlflow.parentRunId": parent.info.run_id})
    rid, now = run.info.run_id, int(time.time() * 1000)
    first = next(csv.DictReader((out_dir / "ranking.csv").open()))
    values = {"first/predicted_gap": first["predicted_gap"], "first/predicted_top1": first["predicted_top1"],
              "first/eps": first["eps"], **{f"confirm/{k}": v for k, v in score.items()}}
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if csv_float(str(v)) is not None]
    client.log_batch(rid, metrics=metrics, tags=[])
    client.set_tag(rid, "basis", first["basis"])
    for name in ("ranking.csv", "summary.md", "ranking.png"):
        client.log_artifact(rid, str(out_dir / name))
    with redirect_stdout(io.StringIO()):
        client.set_terminated(rid, "FINISHED")
    return rid
