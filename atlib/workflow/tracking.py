"""MLflow view of the results tree: an idempotent ingest, and optional live logging from jobs.

Result files are the source of truth. `ingest` walks `results/` and keeps exactly one MLflow run
per finished job, found again through its `job_key` tag (the job's path under `results/`, e.g.
"transfer/fmnist04/resnet8/eps1/s0/mnist5k/mode0"; "report" for the report). A run whose files,
params and layout are unchanged (`content_hash` tag) is skipped; a changed job's run is deleted and
logged again from scratch, so metric histories never hold stale or doubled points, and runs from
an older ingest (older `LAYOUT`) are upgraded the same way, never duplicated. Every wildcard is its
own tag, so the UI can filter e.g. `tags.rule = 'transfer' and tags.mode = '0' and tags.eps = '1'`
(the `tag` wildcard: "eps" for standard and adversarial models, "gn" for Gaussian-noise ones).

What the UI shows (MLflow 3): the experiment is tagged as model development, so it opens on the
runs table. Each source model's run is the parent (`mlflow.parentRunId`) of its transfers, Fisher,
t-SNE, inversion and task-distance runs, all with short names ("eps1 s0 -> mnist5k m0"). A run's
start and end are the job's own (its log's first and last timestamps, else its result file's
time minus the recorded duration). Histories are metric steps (learning curves); the result
file's numbers are summary metrics under `final/`.

`LiveLogger` lets a training job stream its metrics while it runs. It never raises: if the server
is down or slow it warns once and turns itself off; the ingest later replaces the live run with
the complete one (same `job_key`, no duplicate).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import subprocess
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from atlib.spec import jobs
from atlib.spec.jobs import MODEL_PATH, pattern_regex

log = logging.getLogger(__name__)

# Files that become artifacts of a run (model weights and feature caches stay out: too big).
ARTIFACT_SUFFIXES = frozenset({".json", ".csv", ".png", ".pdf", ".md", ".txt"})
MAX_ARTIFACT_BYTES = 20 * 2**20
# MLflow's per-call limits for log_batch.
BATCH_METRICS, BATCH_PARAMS, BATCH_TAGS = 1000, 100, 100
# The run layout (names, times, nesting, metric names). Part of every content_hash: a run logged
# by an ingest of another layout no longer matches and is logged again under the same job_key.
LAYOUT = "2"
# MLflow 3 opens an experiment on its GenAI overview unless this tag says it holds training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_NOTE = ("One run per job of the atlib workflow (result files under results/ are the source of truth). "
                   "Each source model's run holds its transfers, Fisher, t-SNE, inversion and task-distance runs "
                   "(expand it); the run named `report` holds the report's figures and tables. Robust vs standard "
                   "transfers: filter `tags.rule = 'transfer'` and group by the tag `robustness`.")
PARENT_TAG, NOTE_TAG = "mlflow.parentRunId", "mlflow.note.content"
# Numbers of a result file that name the job rather than measure it (they are tags already).
ID_NUMBERS = frozenset({"eps", "seed", "mode"})

# Seconds a job's result file may be written outside its log's span (clock skew between a node and
# the file server; the last log line follows the write): measured within 0.7 s on the demo.
LOG_SLACK_S = 10.0
# asctime of atlib.workflow.logs.job_logging: local time, milliseconds after the comma.
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI); the message says what to do."""


@dataclass(frozen=True)
class JobKind:
    """One kind of finished job in the results tree.

    Args:
        rule: the Snakemake rule that writes it (the `rule` tag); its log is
            `logs/{rule}/{path under folder}.log` (`logs/{rule}/{rule}.log` for an empty pattern).
        folder: its top folder under results/.
        pattern: its path under `folder`, with wildcards; a directory, or a file for `single_file`;
            "" for the folder itself (the report).
        marker: the file whose presence means the job finished.
        single_file: the job is the marker file alone (task distance), not a directory.
        history: csv whose rows are metric histories (step column `step_col`).
        suffixes: which of its files become artifacts.
    """

    rule: str
    folder: str
    pattern: str
    marker: str
    single_file: bool = False
    history: str | None = None
    step_col: str = "epoch"
    suffixes: frozenset = ARTIFACT_SUFFIXES

    def regex(self) -> re.Pattern:
        return pattern_regex(self.pattern)

    def key(self, rel: str) -> str:
        """The job_key of the job at `rel` under the folder (a matched pattern)."""
        rel = rel[:-5] if self.single_file else rel
        return f"{self.folder}/{rel}" if rel else self.folder


def _kind(kind: jobs.Kind, marker: str, **kw: Any) -> JobKind:
    """The ingest's view of a kind of atlib.spec.jobs: its rule and paths, and which file marks it done."""
    return JobKind(kind.rule, kind.folder, kind.pattern, marker, single_file=kind.single_file, **kw)


KINDS = (
    _kind(jobs.MODEL, "metrics.json", history="history.csv"),
    _kind(jobs.TRANSFER, "metrics.json", history="history.csv"),
    _kind(jobs.FISHER, "summary.json"),
    _kind(jobs.REPRESENTATION, "summary.json"),
    _kind(jobs.INVERT, "curve.csv", history="curve.csv", step_col="step"),
    _kind(jobs.DISTANCE, ""),
    _kind(jobs.REPORT, "summary.md", suffixes=ARTIFACT_SUFFIXES | {".html"}),
)


@dataclass
class Job:
    """A finished job found in the results tree."""

    kind: JobKind
    key: str  # the job_key tag: "<folder>/<path>" (no .json for single-file jobs)
    wildcards: dict[str, str]
    files: list[Path]  # the job's small result files (artifacts, hashed)
    main: Path  # metrics.json / summary.json / the distance json; may not exist for invert
    history: Path | None
    log: Path | None = None  # the job's log file, where it exists


def default_uri(results_dir: str | Path) -> str:
    """The local store: `sqlite:///<abs results>/mlflow.db` (MLflow >= 3.7 defaults to sqlite)."""
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _rel(path: Path, top: Path) -> str:
    rel = path.relative_to(top).as_posix()
    return "" if rel == "." else rel


def job_key(results_dir: str | Path, output_file: str | Path) -> str:
    """The job_key of the job that writes `output_file` (for `LiveLogger` in a rule's script).

    Args:
        results_dir: the results root (config `results`).
        output_file: any output of the job, e.g. snakemake.output.metrics.
    """
    rel = Path(output_file).resolve().relative_to(Path(results_dir).resolve())
    for kind in KINDS:
        if rel.parts[0] != kind.folder:
            continue
        inner = Path(*rel.parts[1:])
        candidates = [inner.as_posix()] if kind.single_file else [_rel(p, Path(".")) for p in inner.parents]
        for c in candidates:
            if kind.regex().match(c):
                return kind.key(c)
    raise ValueError(f"{output_file} is not the output of a tracked job under {results_dir}")


def parse_key(key: str) -> tuple[JobKind, dict[str, str]]:
    """The kind and wildcards of a job_key (inverse of `JobKind.key`)."""
    folder, _, rel = key.partition("/")
    for kind in KINDS:
        m = kind.regex().match(rel + (".json" if kind.single_file else "")) if kind.folder == folder else None
        if m:
            return kind, {k: v for k, v in m.groupdict().items() if v is not None}
    raise ValueError(f"{key!r} is not the job_key of a tracked job")


def _job(kind: JobKind, root: Path, marker: Path) -> Job | None:
    top = root / kind.folder
    rel = _rel(marker if kind.single_file else marker.parent, top)
    m = kind.regex().match(rel)
    if not m:
        return None
    wc = {k: v for k, v in m.groupdict().items() if v is not None}
    if kind.single_file:
        files, main, hist = [marker], marker, None
        wc["probe"] = MODEL_PATH.format(**wc)
    else:
        files = sorted(p for p in marker.parent.iterdir() if p.is_file() and p.suffix in kind.suffixes
                       and p.stat().st_size <= MAX_ARTIFACT_BYTES)
        main = marker.parent / ("summary.json" if kind.marker.endswith(".csv") else kind.marker)
        hist = marker.parent / kind.history if kind.history else None
    if kind.rule == "transfer":
        wc["source_model"] = MODEL_PATH.format(**wc)
    key = kind.key(rel)
    log_file = root / "logs" / kind.rule / f"{key.partition('/')[2] or kind.rule}.log"
    return Job(kind, key, wc, files, main, hist if hist and hist.exists() else None,
               log_file if log_file.is_file() else None)


def find_jobs(results_dir: str | Path) -> list[Job]:
    """Every finished job under `results_dir`, sorted by job_key."""
    root = Path(results_dir)
    jobs = []
    for kind in KINDS:
        top = root / kind.folder
        if top.is_dir():
            markers = top.rglob("*.json") if kind.single_file else top.rglob(kind.marker)
            jobs += [j for j in (_job(kind, root, m) for m in markers) if j is not None]
    return sorted(jobs, key=lambda j: j.key)


def model_label(wc: dict[str, str], qualify: bool = False) -> str:
    """A model's short name: "eps1 s0" ("fmnist04 resnet8 eps1 s0" where sources or archs differ)."""
    label = f"{wc['tag']}{wc['eps']} s{wc['seed']}"
    return f"{wc['source']} {wc['arch']} {label}" if qualify else label


def run_name(rule: str, wc: dict[str, str], qualify: bool = False, imported: bool = False) -> str:
    """The run's short name in the UI's first column; the full job_key stays a tag.

    Args:
        rule: the job's rule; wc: its wildcards.
        qualify: name the source and arch too (the results hold more than one pair).
        imported: a source model imported from a checkpoint, not trained.
    """
    if rule == "aggregate":
        return "report"
    model = model_label(wc, qualify)
    suffix = {"train_source": " imported" if imported else "",
              "transfer": f" -> {wc.get('target')} m{wc.get('mode')}", "fisher": " fisher",
              "representation": " t-SNE", "invert": f" inversion {wc.get('method')}",
              "task_distance": f" distance {wc.get('dataset')}"}
    return model + suffix.get(rule, f" {rule}")


def parent_key(rule: str, wc: dict[str, str]) -> str | None:
    """job_key of the source model's run a job's run is nested under (None: a top-level run)."""
    if rule in ("train_source", "aggregate") or "seed" not in wc:
        return None
    return "models/" + MODEL_PATH.format(**wc)


def robustness(wc: dict[str, str]) -> str | None:
    """How the (source) model was trained: standard, adversarial (PGD/TRADES) or gaussian (noise)."""
    if "tag" not in wc:
        return None
    if wc["tag"] == "gn":
        return "gaussian"
    return "standard" if float(wc["eps"]) == 0 else "adversarial"


def _log_span(path: Path) -> tuple[float, float] | None:
    """First and last timestamps (epoch seconds) of a job log, None without any."""
    stamps = []
    with path.open(errors="replace") as fh:
        for line in fh:
            m = _LOG_TIME.match(line)
            if m:
                stamps.append(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000)
    return (stamps[0], stamps[-1]) if stamps else None


def _recorded_seconds(job: Job) -> float:
    """The job's duration as its result files record it (train_time_s, else the history's time_s)."""
    if job.main.exists() and job.main.suffix == ".json":
        sec = _number(_read_json(job.main).get("train_time_s"))
        if sec:
            return sec
    if job.history is not None:
        with job.history.open(newline="") as fh:
            return sum(_float(row.get("time_s")) or 0.0 for row in csv.DictReader(fh))
    return 0.0


def job_times(job: Job) -> tuple[int, int]:
    """(start, end) of the job in epoch milliseconds, start <= end.

    The job's log spans the job (first and last line) when its result file was written within
    that span (give or take `LOG_SLACK_S`). Otherwise (no log, a log of a rerun in progress, or a
    stale log the results no longer come from, e.g. the job now runs batched with a log of its own)
    the end is the result file's time and the start that minus the duration the results record
    (0 when they record none).
    """
    end = max(f.stat().st_mtime for f in job.files)
    if job.main.exists():
        end = job.main.stat().st_mtime
    span = _log_span(job.log) if job.log is not None else None
    if span is not None and span[0] - LOG_SLACK_S <= end <= span[1] + LOG_SLACK_S:
        start, end = span
    else:
        start = end - _recorded_seconds(job)
    return int(start * 1000), int(max(start, end) * 1000)


def flatten(d: dict, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested dicts -> one level with `a/b` keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, name, sep))
        else:
            out[name] = v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _float(raw: str | None) -> float | None:
    """A csv cell as a finite float (None: empty, text, nan or inf)."""
    try:
        return _number(float(raw)) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def config_index(config: dict | None) -> dict:
    """Which experiment defines each model, and which one asked for each transfer (its finetune
    schedule is the one used, as in workflow/rules/common.smk)."""
    if config is None:
        return {"models": {}, "transfers": {}}
    from atlib.spec.grid import model_experiments, transfer_experiments

    return {"models": model_experiments(config), "transfers": transfer_experiments(config)}


def _config_params(job: Job, cfg: dict, index: dict) -> dict[str, Any]:
    """The config values that define the job: its experiment, schedules and analysis section."""
    params: dict[str, Any] = {}
    wc, rule = job.wildcards, job.kind.rule
    model = MODEL_PATH.format(**wc) if "seed" in wc else None
    exp_name = index["models"].get(model)
    if exp_name:
        exp = cfg["experiments"][exp_name]
        params.update(experiment=exp_name, width=exp["width"], train_schedule=exp["train"])
        if rule == "train_source":  # as common.smk's pretrained_source
            params["pretrained"] = next((path for e, path in exp["pretrained"].items()
                                         if float(e) == float(wc["eps"])), None)
        params.update(flatten(cfg["train_schedules"][exp["train"]], "train", "."))
    ft_name = index["transfers"].get((model, wc["target"], int(wc["mode"]))) if rule == "transfer" else None
    if ft_name:
        finetune = cfg["experiments"][ft_name]["finetune"]
        params.update(finetune_experiment=ft_name, finetune_schedule=finetune)
        params.update(flatten(cfg["finetune_schedules"][finetune], "finetune", "."))
    section = {"fisher": "fisher", "representation": "representation", "invert": "invert",
               "task_distance": "distance"}.get(rule)
    if section:
        params.update(flatten(cfg[section], section, "."))
    params["device"] = cfg["device"]
    return params


def job_params(job: Job, config: dict | None, index: dict | None = None) -> dict[str, str]:
    """The job's wildcards plus the config values that define it (flattened, as strings).

    Args:
        job: a finished job (`find_jobs`).
        config: the workflow config (checked, defaults filled); None = wildcards only.
        index: `config_index(config)`, to compute it once for many jobs.
    """
    params: dict[str, Any] = dict(job.wildcards)
    if config is not None:
        params.update(_config_params(job, config, index if index is not None else config_index(config)))
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        out[k] = s[:6000]  # MLflow's param value limit
    return out


def content_hash(job: Job, params: dict[str, str]) -> str:
    """Hash of the run layout, the job's files and params: equal hash = nothing to re-log."""
    h = hashlib.sha256(f"layout {LAYOUT}".encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    for f in job.files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TrackingError(f"cannot read {path}: {err}; rerun the job that writes it") from None


def job_metrics(job: Job) -> list[tuple[str, float, int]]:
    """(key, value, step) for the job's history rows and its final numbers.

    History columns keep their names (step = the csv's epoch/step): the UI draws them as curves.
    The result file's numbers are summary metrics `final/<key>` (nested keys joined by "/"), at the
    last step: they sort together in the runs table and never fall into a curve of the same name.
    """
    out: list[tuple[str, float, int]] = []
    if job.history is not None:
        with job.history.open(newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                step = _float(row.get(job.kind.step_col))
                step = int(step) if step is not None else i
                out += [(col, v, step) for col, raw in row.items()
                        if col != job.kind.step_col and (v := _float(raw)) is not None]
    if job.main.exists() and job.main.suffix == ".json":
        last = max((s for _, _, s in out), default=0)
        for k, v in flatten(_read_json(job.main)).items():
            num = _number(v)
            if num is not None and k not in ID_NUMBERS:
                out.append((f"final/{k}", num, last))
    return out


def git_commit(path: str | Path = ".") -> str | None:
    """HEAD of the git checkout holding `path` (None outside git)."""
    try:
        r = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
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


def _experiment_id(client, name: str, artifact_root: Path | None) -> str:
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


def _artifact_root(uri: str, results_dir: str | Path | None = None) -> Path | None:
    """Where a new experiment keeps artifacts: beside a sqlite store (MLflow's default, ./mlruns,
    would be the current directory of whichever process created the experiment first)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the server decides
    return Path(results_dir) / "mlartifacts" if results_dir is not None else None


def _runs_by_key(client, experiment_id: str) -> dict[str, list]:
    runs: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], "", max_results=1000, page_token=token)
        for r in page:
            key = r.data.tags.get("job_key")
            if key:
                runs.setdefault(key, []).append(r)
        token = page.token
        if not token:
            return runs


def _log_job(client, experiment_id: str, job: Job, params: dict[str, str], tags: dict[str, str], name: str) -> str:
    from mlflow.entities import Metric, Param, RunTag

    start, end = job_times(job)
    run = client.create_run(experiment_id, start_time=start, run_name=name,
                            tags={"job_key": job.key, "rule": job.kind.rule})
    rid = run.info.run_id
    metrics = [Metric(k, v, end, s) for k, v, s in job_metrics(job)]
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(metrics), BATCH_METRICS):
        client.log_batch(rid, metrics=metrics[i:i + BATCH_METRICS])
    for i in range(0, len(p), BATCH_PARAMS):
        client.log_batch(rid, params=p[i:i + BATCH_PARAMS])
    for i in range(0, len(t), BATCH_TAGS):
        client.log_batch(rid, tags=t[i:i + BATCH_TAGS])
    for f in job.files:
        client.log_artifact(rid, str(f))
    with redirect_stdout(io.StringIO()):  # a server URI prints two "View run" lines per run
        client.set_terminated(rid, "FINISHED", end_time=end)
    return rid


def _is_imported(job: Job, params: dict[str, str]) -> bool:
    """A source model imported from a checkpoint (atlib.train.imported.import_source: 0 epochs, 0 s)."""
    if job.kind.rule != "train_source":
        return False
    if params.get("pretrained"):
        return True
    metrics = _read_json(job.main) if job.main.exists() else {}
    return metrics.get("epochs") == 0 and not metrics.get("train_time_s")


def job_tags(job: Job, params: dict[str, str]) -> dict[str, str]:
    """Tags of a job's run besides job_key and rule: its wildcards, how its model was trained, and
    for an imported source model the checkpoint it came from (also the run's description)."""
    tags = {k: str(v) for k, v in job.wildcards.items()}
    if robustness(job.wildcards):
        tags["robustness"] = robustness(job.wildcards)
    if job.kind.rule == "train_source":
        imported = _is_imported(job, params)
        tags["origin"] = "imported" if imported else "trained"
        if imported:
            ckpt = params.get("pretrained") or "a published checkpoint"
            tags[NOTE_TAG] = (f"Imported from {ckpt}, not trained: its metrics are the evaluation of the "
                              "imported weights and its duration that of the import job.")
    return tags


def ingest(results_dir: str | Path, uri: str | None = None, experiment: str = "atlib", config: dict | None = None,
           git_commit: str | None = None, part: str = "all") -> dict[str, Any]:
    """Make the MLflow experiment mirror the results tree: one run per finished job.

    Args:
        results_dir: the results root.
        uri: tracking URI; None = `default_uri(results_dir)`.
        experiment: MLflow experiment name.
        config: the workflow config (checked, defaults filled): params and the config hash.
        git_commit: commit of the code that produced the results (tag), if known.
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
        return _ingest(Path(results_dir), uri, experiment, config, git_commit, part)
    except (MlflowException, SQLAlchemyError, OSError, requests.RequestException) as err:
        raise TrackingError(f"MLflow store {uri} failed ({type(err).__name__}: {str(err)[:500]}). Fix it (or set "
                            "tracking.uri) and rerun the `track` rule; result files are unaffected.") from None


def _rule_of(key: str) -> str:
    """The rule of a stored run's job_key ("" for a key no job kind matches, kept with the results)."""
    try:
        return parse_key(key)[0].rule
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


def _ingest(results: Path, uri: str, experiment: str, config: dict | None, git_commit: str | None,
            part: str = "all") -> dict[str, Any]:
    from mlflow import MlflowClient

    from atlib.spec import provenance
    from atlib.spec.schema import config_hash

    t0 = time.time()
    _check_reachable(uri)
    # Source models first: their run ids are the parents of everything else.
    jobs = sorted((j for j in find_jobs(results) if in_part(j.kind.rule, part)),
                  key=lambda j: (j.kind.rule != "train_source", j.key))
    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment_id(client, experiment, _artifact_root(uri, results))
    existing = {k: runs for k, runs in _runs_by_key(client, exp_id).items() if in_part(_rule_of(k), part)}
    common = {"config_hash": config_hash(config) if config else "", "git_commit": git_commit or ""}
    common = {k: v for k, v in common.items() if v}
    if git_commit:
        common["mlflow.source.git.commit"] = git_commit
    counts = {"created": 0, "updated": 0, "skipped": 0, "relinked": 0}
    index = config_index(config)
    qualify = len({(j.wildcards["source"], j.wildcards["arch"]) for j in jobs if "arch" in j.wildcards}) > 1
    run_ids: dict[str, str] = {}
    for job in jobs:
        params = job_params(job, config, index)
        prov = provenance.tags(provenance.job_record(job))  # input sha256s, config hash, code version
        digest = content_hash(job, {**params, **prov})
        tags = {**common, **job_tags(job, params), **prov, "content_hash": digest}
        name = run_name(job.kind.rule, job.wildcards, qualify, tags.get("origin") == "imported")
        parent = run_ids.get(parent_key(job.kind.rule, job.wildcards) or "")
        old = existing.pop(job.key, [])
        if len(old) == 1 and old[0].data.tags.get("content_hash") == digest:
            counts["skipped"] += 1
            counts["relinked"] += _relink(client, old[0], name, parent)
            run_ids[job.key] = old[0].info.run_id
            continue
        # Changed results, an older layout, or a live run from the job itself: log it again from scratch.
        for r in old:
            client.delete_run(r.info.run_id)
        if parent:
            tags[PARENT_TAG] = parent
        run_ids[job.key] = _log_job(client, exp_id, job, params, tags, name)
        counts["updated" if old else "created"] += 1
    summary = {"uri": uri, "experiment": experiment, "experiment_id": exp_id, "jobs": len(jobs), **counts,
               "stale_kept": sorted(existing), "seconds": round(time.time() - t0, 2)}
    log.info("MLflow ingest: %s", summary)
    return summary


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

        from atlib.workflow.tracking import LiveLogger, default_uri, job_key
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

        _check_reachable(self.uri, timeout=self.timeout)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp_id = _experiment_id(self.client, self.experiment, _artifact_root(self.uri))
        runs = self.client.search_runs([exp_id], f"tags.job_key = '{self.job_key}'", max_results=10)
        for r in runs:
            if "content_hash" in r.data.tags:  # an ingested run of results being recomputed now
                self.client.delete_run(r.info.run_id)
            elif self.run_id is None:  # a live run from an earlier attempt: continue it
                self.run_id = r.info.run_id
        if self.run_id is None:
            kind, wc = parse_key(self.job_key)
            tags = {"job_key": self.job_key, **self.tags}
            parent = parent_key(kind.rule, wc)
            found = self.client.search_runs([exp_id], f"tags.job_key = '{parent}'", max_results=1) if parent else []
            if found:  # nested under its source model's run, as the ingest will nest it
                tags[PARENT_TAG] = found[0].info.run_id
            run = self.client.create_run(exp_id, run_name=run_name(kind.rule, wc), tags=tags)
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
        batch = [Metric(k, n, ts, int(step)) for k, v in metrics.items() if (n := _number(v)) is not None]
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
    eid = _experiment_id(client, tracking["experiment"], _artifact_root(uri, results))
    runs = _runs_by_key(client, eid)
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
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if _float(str(v)) is not None]
    client.log_batch(rid, metrics=metrics, tags=[])
    client.set_tag(rid, "basis", first["basis"])
    for name in ("ranking.csv", "summary.md", "ranking.png"):
        client.log_artifact(rid, str(out_dir / name))
    with redirect_stdout(io.StringIO()):
        client.set_terminated(rid, "FINISHED")
    return rid
