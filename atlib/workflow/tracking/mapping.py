"""One finished job -> its MLflow run: params, metrics, tags, dataset inputs, name, parent, start and end.

What the UI shows (MLflow 3): each source model's run is the parent (`mlflow.parentRunId`) of its
transfers, Fisher, t-SNE, inversion and task-distance runs, all with short names ("eps1 s0 -> mnist5k
m0"). A run's start and end are the job's own (its log's first and last timestamps, else its result
file's time minus the recorded duration). Histories are metric steps (learning curves); the result
file's numbers are summary metrics under `final/`. Every wildcard is its own tag, so the UI can
filter e.g. `tags.rule = 'transfer' and tags.mode = '0' and tags.eps = '1'` (the `tag` wildcard: "eps"
for standard and adversarial models, "gn" for Gaussian-noise ones). A transfer's and a distance's
datasets are the run's dataset inputs (the runs table's Dataset column).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

from atlib.spec.jobs import MODEL_PATH
from atlib.workflow.tracking.discovery import FoundResult

# The run layout (names, times, nesting, metric names, dataset inputs). Part of every content_hash: a run
# logged by an ingest of another layout no longer matches and is logged again under the same job_key.
LAYOUT = "3"
PARENT_TAG, NOTE_TAG = "mlflow.parentRunId", "mlflow.note.content"
# Numbers of a result file that name the job rather than measure it (they are tags already).
ID_NUMBERS = frozenset({"eps", "seed", "mode"})
# MLflow's limit on a dataset digest's length (mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE).
DIGEST_CHARS = 36

# Seconds a job's result file may be written outside its log's span (clock skew between a node and
# the file server; the last log line follows the write): measured within 0.7 s on the demo.
LOG_SLACK_S = 10.0
# asctime of atlib.workflow.logs.job_logging: local time, milliseconds after the comma.
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI, unreadable result file); the
    message says what to do."""


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


def training_type(wc: dict[str, str]) -> str | None:
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


def _recorded_seconds(found: FoundResult) -> float:
    """The job's duration as its result files record it (train_time_s, else the history's time_s)."""
    if found.main.exists() and found.main.suffix == ".json":
        sec = finite(read_json(found.main).get("train_time_s"))
        if sec:
            return sec
    if found.history is not None:
        with found.history.open(newline="") as fh:
            return sum(csv_float(row.get("time_s")) or 0.0 for row in csv.DictReader(fh))
    return 0.0


def job_times(found: FoundResult) -> tuple[int, int]:
    """(start, end) of the job in epoch milliseconds, start <= end.

    The job's log spans the job (first and last line) when its result file was written within
    that span (give or take `LOG_SLACK_S`). Otherwise (no log, a log of a rerun in progress, or a
    stale log the results no longer come from, e.g. the job now runs batched with a log of its own)
    the end is the result file's time and the start that minus the duration the results record
    (0 when they record none).
    """
    end = max(f.stat().st_mtime for f in found.files)
    if found.main.exists():
        end = found.main.stat().st_mtime
    span = _log_span(found.log) if found.log is not None else None
    if span is not None and span[0] - LOG_SLACK_S <= end <= span[1] + LOG_SLACK_S:
        start, end = span
    else:
        start = end - _recorded_seconds(found)
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


def finite(v: Any) -> float | None:
    """A finite number (a bool as 0 / 1) as a float; None for anything else."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def csv_float(raw: str | None) -> float | None:
    """A csv cell as a finite float (None: empty, text, nan or inf)."""
    try:
        return finite(float(raw)) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def config_index(config: dict | None) -> dict:
    """Which experiment defines each model, and which one asked for each transfer (its finetune
    schedule is the one used, as in workflow/rules/common.smk)."""
    if config is None:
        return {"models": {}, "transfers": {}}
    from atlib.spec.grid import model_experiments, transfer_experiments

    return {"models": model_experiments(config), "transfers": transfer_experiments(config)}


def _config_params(found: FoundResult, cfg: dict, index: dict) -> dict[str, Any]:
    """The config values that define the job: its experiment, schedules and analysis section."""
    params: dict[str, Any] = {}
    wc, rule = found.wildcards, found.rule
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


def job_params(found: FoundResult, config: dict | None, index: dict | None = None) -> dict[str, str]:
    """The job's wildcards plus the config values that define it (flattened, as strings).

    Args:
        found: a finished job (`atlib.workflow.tracking.discovery.find_results`).
        config: the workflow config (checked, defaults filled); None = wildcards only.
        index: `config_index(config)`, to compute it once for many jobs.
    """
    params: dict[str, Any] = dict(found.wildcards)
    if config is not None:
        params.update(_config_params(found, config, index if index is not None else config_index(config)))
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        out[k] = s[:6000]  # MLflow's param value limit
    return out


def content_hash(found: FoundResult, params: dict[str, Any]) -> str:
    """Hash of the run layout, the job's files and params: equal hash = nothing to re-log."""
    h = hashlib.sha256(f"layout {LAYOUT}".encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    for f in found.files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TrackingError(f"cannot read {path}: {err}; rerun the job that writes it") from None


def job_metrics(found: FoundResult) -> list[tuple[str, float, int]]:
    """(key, value, step) for the job's history rows and its final numbers.

    History columns keep their names (step = the csv's epoch/step): the UI draws them as curves.
    The result file's numbers are summary metrics `final/<key>` (nested keys joined by "/"), at the
    last step: they sort together in the runs table and never fall into a curve of the same name.
    """
    out: list[tuple[str, float, int]] = []
    if found.history is not None:
        with found.history.open(newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                step = csv_float(row.get(found.tracked.step_col))
                step = int(step) if step is not None else i
                out += [(col, v, step) for col, raw in row.items()
                        if col != found.tracked.step_col and (v := csv_float(raw)) is not None]
    if found.main.exists() and found.main.suffix == ".json":
        last = max((s for _, _, s in out), default=0)
        for k, v in flatten(read_json(found.main)).items():
            num = finite(v)
            if num is not None and k not in ID_NUMBERS:
                out.append((f"final/{k}", num, last))
    return out


def _is_imported(found: FoundResult, params: dict[str, str]) -> bool:
    """A source model imported from a checkpoint (atlib.train.imported.import_source: 0 epochs, 0 s)."""
    if found.rule != "train_source":
        return False
    if params.get("pretrained"):
        return True
    metrics = read_json(found.main) if found.main.exists() else {}
    return metrics.get("epochs") == 0 and not metrics.get("train_time_s")


def job_tags(found: FoundResult, params: dict[str, str]) -> dict[str, str]:
    """Tags of a job's run besides job_key and rule: its wildcards, how its model was trained, and
    for an imported source model the checkpoint it came from (also the run's description)."""
    tags = {k: str(v) for k, v in found.wildcards.items()}
    if training_type(found.wildcards):
        tags["robustness"] = training_type(found.wildcards)
    if found.rule == "train_source":
        imported = _is_imported(found, params)
        tags["origin"] = "imported" if imported else "trained"
        if imported:
            ckpt = params.get("pretrained") or "a published checkpoint"
            tags[NOTE_TAG] = (f"Imported from {ckpt}, not trained: its metrics are the evaluation of the "
                              "imported weights and its duration that of the import job.")
    return tags




# The datasets of a run, by rule: (MLflow input context, the wildcard naming the dataset).
DATASET_WILDCARDS = {"transfer": (("source", "source"), ("target", "target")),
                     "task_distance": (("source", "source"), ("target", "dataset"))}


class RunDataset(NamedTuple):
    """A dataset a job read, as its run's dataset input."""

    name: str
    digest: str  # `dataset_digest`
    context: str  # "source" or "target"
    path: Path  # the prepared dataset's folder


def dataset_digest(results: Path, name: str) -> str | None:
    """The prepared dataset's digest: the sha256 of its data files' sha256 (results/data/<name>/meta.json,
    one "file sha256" line each, sorted), cut to MLflow's 36 characters; None where it is not prepared."""
    meta = results / "data" / name / "meta.json"
    files = read_json(meta).get("sha256") if meta.is_file() else None
    if not files:
        return None
    lines = "".join(f"{file} {digest}\n" for file, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:DIGEST_CHARS]


def job_datasets(found: FoundResult, results: Path) -> list[RunDataset]:
    """The datasets the job read: a transfer's source and target, a task distance's source and the
    dataset measured. A dataset not prepared under `results` is left out; a distance of the source
    to itself lists it once, as its source."""
    out: dict[str, RunDataset] = {}
    for context, wildcard in DATASET_WILDCARDS.get(found.rule, ()):
        name = found.wildcards[wildcard]
        digest = dataset_digest(results, name)
        if digest is not None and name not in out:
            out[name] = RunDataset(name, digest, context, (results / "data" / name).resolve())
    return list(out.values())
