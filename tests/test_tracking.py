"""MLflow ingest of a synthetic results tree (idempotent, updates only what changed, upgrades an older
layout), what the UI shows (experiment kind, nesting, names, job times, datasets, the runs table's
address) and live logging."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import yaml
from fixtures_results import DATA_SHA256, MODEL, T0, write, write_results

from atlib.spec import jobs as job_model
from atlib.spec.config import check_config
from atlib.spec.schema import config_hash
from atlib.workflow.tracking import ui
from atlib.workflow.tracking.discovery import TRACKED, find_results, job_key
from atlib.workflow.tracking.ingest import default_uri, ingest
from atlib.workflow.tracking.live import LiveLogger
from atlib.workflow.tracking.mapping import PARENT_TAG, TrackingError, job_params, job_times, run_name
from atlib.workflow.tracking.ui import LOCAL_UI, runs_address

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config() -> dict:
    return check_config(yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text()))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_results(tmp_path)


def _runs(uri: str, experiment: str = "atlib"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, list(client.search_runs([exp.experiment_id], max_results=1000))


def test_finds_every_kind_and_job_keys_match(results):
    write(results / "models" / "src/resnet8/eps0/s00/metrics.json", "{}")  # no path the workflow writes
    assert set(TRACKED) == set(job_model.RESULT_KINDS)  # what verify checks is what the ingest logs
    jobs = {j.key: j for j in find_results(results)}
    assert sorted(jobs) == [
        "distance/src/resnet8/eps0/s0/near", "fisher/src/resnet8/eps0.5/s0",
        "invert/src/resnet8/eps0.5/s0/variational", "models/src/resnet8/eps0.5/s0", "models/src/resnet8/eps0/s0",
        "report", "representation/src/resnet8/eps0/s0", "transfer/src/resnet8/eps0.5/s0/near/mode0"]
    assert jobs["transfer/src/resnet8/eps0.5/s0/near/mode0"].wildcards == {
        "source": "src", "arch": "resnet8", "tag": "eps", "eps": "0.5", "seed": "0", "target": "near", "mode": "0",
        "source_model": "src/resnet8/eps0.5/s0"}
    assert "model.pt" not in {f.name for f in jobs["models/src/resnet8/eps0/s0"].files}
    # what a job's script computes from its own output equals what the ingest finds
    for key, out in [("models/src/resnet8/eps0/s0", "models/src/resnet8/eps0/s0/model.pt"),
                     ("distance/src/resnet8/eps0/s0/near", "distance/src/resnet8/eps0/s0/near.json"),
                     ("invert/src/resnet8/eps0.5/s0/variational",
                      "invert/src/resnet8/eps0.5/s0/variational/images.png"),
                     ("report", "report/claims.csv")]:
        assert job_key(results, results / out) == key


def test_gaussian_model_jobs_have_tag_gn_and_their_experiment(results, config):
    """A Gaussian-noise model (tests/configs/tiny.yaml's tiny_gn) beside the PGD one: own job keys."""
    gn = results / "models" / "src/resnet8/gn1/s0"
    write(gn / "metrics.json", json.dumps({"natural_acc": 50.0, "pgd_acc": {"0.5": 5.0}, "weight_norm": 12.0,
                                            "epochs": 1, "train_time_s": 1.0, "eps": 1.0, "source": "src",
                                            "arch": "resnet8", "seed": 0}))
    write(results / "fisher" / "src/resnet8/gn1/s0" / "summary.json", json.dumps({"eps": 1.0}))
    jobs = {j.key: j for j in find_results(results)}
    assert {"models/src/resnet8/gn1/s0", "fisher/src/resnet8/gn1/s0", "models/src/resnet8/eps0.5/s0"} <= set(jobs)
    model = jobs["models/src/resnet8/gn1/s0"]
    assert model.wildcards == {"source": "src", "arch": "resnet8", "tag": "gn", "eps": "1", "seed": "0"}
    assert job_key(results, gn / "model.pt") == "models/src/resnet8/gn1/s0"
    params = job_params(model, config)
    assert params["experiment"] == "tiny_gn" and params["train.objective"] == "gaussian"
    assert job_params(jobs["models/src/resnet8/eps0.5/s0"], config)["train.objective"] == "madry"


def test_ingest_twice_is_idempotent_with_tags_and_histories(results, config):
    uri = default_uri(results)
    first = ingest(results, uri, "atlib", config, "abc123")
    assert (first["created"], first["updated"], first["skipped"], first["jobs"]) == (8, 0, 0, 8)
    second = ingest(results, uri, "atlib", config, "abc123")
    assert (second["created"], second["updated"], second["skipped"], second["relinked"]) == (0, 0, 8, 0)
    client, runs = _runs(uri)
    assert len(runs) == 8
    by_key = {r.data.tags["job_key"]: r for r in runs}
    tr = by_key["transfer/src/resnet8/eps0.5/s0/near/mode0"]
    tags = tr.data.tags
    assert tags["rule"] == "transfer" and tags["mode"] == "0" and tags["eps"] == "0.5" and tags["target"] == "near"
    assert tags["git_commit"] == "abc123" and tags["config_hash"] == config_hash(config)
    assert tr.data.params["finetune.epochs"] == "1" and tr.data.params["experiment"] == "tiny"
    assert tr.data.metrics["final/top1"] == 61.0 and tr.data.metrics["final/pgd_acc/0.5"] == 30.0
    assert tr.data.metrics["final/pgd_acc_ci/0.5/hi"] == 43.9 and tr.data.metrics["final/top1_ci/n"] == 100
    assert "final/seed" not in tr.data.metrics and "final/mode" not in tr.data.metrics  # they name the job
    assert len(client.get_metric_history(tr.info.run_id, "test_top1")) == 2
    model = by_key["models/src/resnet8/eps0/s0"]
    assert [m.step for m in client.get_metric_history(model.info.run_id, "train_loss")] == [1, 2, 3]
    assert client.get_metric_history(model.info.run_id, "test_adv_acc") == []  # empty cells are not points
    assert model.data.metrics["final/weight_norm"] == 13.0  # not drawn into the weight_norm curve
    assert [m.value for m in client.get_metric_history(model.info.run_id, "weight_norm")] == [11.0, 12.0, 13.0]
    assert model.data.params["train.epochs"] == "1"
    inv = by_key["invert/src/resnet8/eps0.5/s0/variational"]
    assert [m.step for m in client.get_metric_history(inv.info.run_id, "loss")] == list(range(5))
    assert by_key["distance/src/resnet8/eps0/s0/near"].data.tags["probe"] == "src/resnet8/eps0/s0"
    arts = {a.path for a in client.list_artifacts(model.info.run_id)}
    assert arts == {"history.csv", "metrics.json"}
    assert all(r.info.status == "FINISHED" for r in runs)


def test_ingest_in_two_parts_equals_one_ingest(results, config):
    """The workflow's track_results (every job but the report) then track (the report): the same
    runs as one ingest, and neither part counts the other's runs as stale or deletes them."""
    uri = default_uri(results)
    first = ingest(results, uri, "atlib", config, part="jobs")
    assert (first["created"], first["jobs"], first["stale_kept"]) == (7, 7, [])
    second = ingest(results, uri, "atlib", config, part="report")
    assert (second["created"], second["jobs"], second["stale_kept"]) == (1, 1, [])
    again = ingest(results, uri, "atlib", config)
    assert (again["created"], again["updated"], again["skipped"]) == (0, 0, 8)
    assert {r.data.tags["job_key"] for r in _runs(uri)[1]} >= {"report", "models/src/resnet8/eps0/s0"}
    with pytest.raises(ValueError, match="ingest part"):
        ingest(results, uri, "atlib", config, part="models")


def _snapshot(runs) -> dict:
    """What the UI shows of each run: id, name, times, status, tags, metrics, params."""
    return {r.data.tags["job_key"]: (r.info.run_id, r.info.run_name, r.info.start_time, r.info.end_time, r.info.status,
                                     r.data.tags, r.data.metrics, r.data.params) for r in runs}


def test_ui_layout_kind_times_nesting_and_idempotent(results, config):
    """What a researcher sees in the MLflow UI, asserted through MLflow's client."""
    uri = default_uri(results)
    ingest(results, uri, "atlib", config)
    client, runs = _runs(uri)
    exp = client.get_experiment_by_name("atlib")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # training runs, not GenAI traces
    assert all(r.info.start_time <= r.info.end_time for r in runs)
    by_key = {r.data.tags["job_key"]: r for r in runs}
    for r in runs:
        rule, parent = r.data.tags["rule"], r.data.tags.get(PARENT_TAG)
        if rule in ("train_source", "aggregate"):
            assert parent is None, r.data.tags["job_key"]
        else:  # transfers and analyses sit under their source model's run
            model = "models/" + MODEL.format(eps=r.data.tags["eps"])
            assert parent == by_key[model].info.run_id, r.data.tags["job_key"]
    tr = by_key["transfer/src/resnet8/eps0.5/s0/near/mode0"]
    assert tr.info.run_name == "eps0.5 s0 -> near m0" and tr.data.tags["robustness"] == "adversarial"
    assert {r.info.run_name for r in runs} == {
        "eps0 s0", "eps0.5 s0", "eps0.5 s0 -> near m0", "eps0.5 s0 fisher", "eps0 s0 t-SNE",
        "eps0.5 s0 inversion variational", "eps0 s0 distance near", "report"}
    assert by_key["models/src/resnet8/eps0/s0"].data.tags["origin"] == "trained"
    report = by_key["report"]
    assert {a.path for a in client.list_artifacts(report.info.run_id)} == {
        "summary.md", "claims.csv", "report.html", "figure.png"}
    # the report's own log spans its run; a job without a log ends at its result file, minus its recorded time
    assert (report.info.end_time - report.info.start_time) == 3407
    model = by_key["models/src/resnet8/eps0/s0"]
    assert (model.info.start_time, model.info.end_time) == (int((T0 - 3.5) * 1000), int(T0 * 1000))
    again = ingest(results, uri, "atlib", config)
    assert (again["created"], again["updated"], again["relinked"], again["skipped"]) == (0, 0, 0, 8)
    assert _snapshot(_runs(uri)[1]) == _snapshot(runs)


def test_job_times_from_log_history_or_nothing(results):
    log = results / "logs" / "train_source" / (MODEL.format(eps="0") + ".log")
    write(log, "2026-11-29 14:27:00,000 INFO training\nno timestamp\n2026-11-29 14:27:50,250 INFO done\n")
    jobs = {j.key: j for j in find_results(results)}
    model = jobs["models/src/resnet8/eps0/s0"]
    assert model.log == log
    assert job_times(model) == (int((T0 - 60) * 1000), int((T0 - 9.75) * 1000))
    # a log newer than the results belongs to a rerun in progress, an older one to a run the results
    # no longer come from: the results' own time is used, less their train_time_s
    for t in (T0 - 120, T0 + 3600):
        os.utime(results / "models" / MODEL.format(eps="0") / "metrics.json", (t, t))
        assert job_times(model) == (int((t - 3.5) * 1000), int(t * 1000))
    # no train_time_s: the history's time_s column (1 + 2 s); nothing recorded: zero duration at the file
    tr = jobs["transfer/src/resnet8/eps0.5/s0/near/mode0"]
    data = json.loads(tr.main.read_text())
    del data["train_time_s"]
    tr.main.write_text(json.dumps(data))
    os.utime(tr.main, (T0, T0))
    assert job_times(tr) == (int((T0 - 3) * 1000), int(T0 * 1000))
    assert job_times(jobs["fisher/src/resnet8/eps0.5/s0"]) == (int(T0 * 1000),) * 2


def _ingest_like_v1(results: Path, uri: str) -> None:
    """What the earlier ingest left in mlflow.db: flat runs named by job_key, no experiment kind, no
    parents, summary metrics without `final/`, and an end time (the file's) before the start (now)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("atlib", artifact_location=(results / "mlartifacts").resolve().as_uri())
    for job in find_results(results):
        if job.key == "report":  # not ingested then
            continue
        h = hashlib.sha256(json.dumps(job_params(job, None), sort_keys=True).encode())
        for f in job.files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        run = client.create_run(exp_id, run_name=job.key, tags={"job_key": job.key, "rule": job.rule,
                                                                 "content_hash": h.hexdigest()[:16]})
        if job.main.exists():
            client.log_metric(run.info.run_id, "top1", 1.0)
        client.set_terminated(run.info.run_id, "FINISHED", end_time=int(T0 * 1000))


def test_older_ingest_is_upgraded_in_place_never_duplicated(results, config):
    """Bad input: an mlflow.db ingested by the earlier version; re-ingest upgrades every run."""
    uri = default_uri(results)
    _ingest_like_v1(results, uri)
    client, old = _runs(uri)
    assert len(old) == 7 and all(r.info.end_time < r.info.start_time for r in old)
    assert "mlflow.experimentKind" not in client.get_experiment_by_name("atlib").tags
    summary = ingest(results, uri, "atlib", config)
    assert (summary["created"], summary["updated"], summary["skipped"]) == (1, 7, 0)
    client, runs = _runs(uri)
    keys = [r.data.tags["job_key"] for r in runs]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 8  # same job keys, one run each
    assert client.get_experiment_by_name("atlib").tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(r.info.start_time <= r.info.end_time for r in runs)
    assert all(PARENT_TAG in r.data.tags for r in runs if r.data.tags["rule"] not in ("train_source", "aggregate"))
    assert all("top1" not in r.data.metrics for r in runs)
    again = ingest(results, uri, "atlib", config)
    assert (again["created"], again["updated"], again["relinked"], again["skipped"]) == (0, 0, 0, 8)


def test_relogged_model_keeps_its_children(results, config):
    """A source model whose results change is logged again (new run id): its unchanged transfers and
    analyses follow it, not the deleted run."""
    uri = default_uri(results)
    ingest(results, uri, "atlib", config)
    m = results / "models" / MODEL.format(eps="0.5") / "metrics.json"
    m.write_text(m.read_text().replace("47.0", "48.0"))
    summary = ingest(results, uri, "atlib", config)
    assert (summary["updated"], summary["relinked"]) == (1, 3)  # transfer, fisher, inversion
    _, runs = _runs(uri)
    model = next(r for r in runs if r.data.tags["job_key"] == "models/src/resnet8/eps0.5/s0")
    assert sorted(r.info.run_name for r in runs if r.data.tags.get(PARENT_TAG) == model.info.run_id) == [
        "eps0.5 s0 -> near m0", "eps0.5 s0 fisher", "eps0.5 s0 inversion variational"]


def test_imported_source_says_so(results):
    """A model imported from a checkpoint (atlib.train.imported.import_source: 0 epochs, 0 s) is tagged and named so."""
    d = results / "models" / MODEL.format(eps="3")
    write(d / "history.csv", "epoch,test_acc,time_s\n0,60,4.0\n")
    write(d / "metrics.json", json.dumps({"natural_acc": 60.0, "pgd_acc": {"0.5": 40.0}, "epochs": 0,
                                           "train_time_s": 0.0, "eps": 3.0, "seed": 0}))
    uri = default_uri(results)
    ingest(results, uri, "atlib", None)
    _, runs = _runs(uri)
    run = next(r for r in runs if r.data.tags["job_key"] == "models/src/resnet8/eps3/s0")
    assert run.data.tags["origin"] == "imported" and run.info.run_name == "eps3 s0 imported"
    assert "not trained" in run.data.tags["mlflow.note.content"]
    assert run.info.end_time - run.info.start_time == 4000  # the import job's evaluation time


def test_run_names_name_source_and_arch_only_where_they_differ(results):
    wc = {"source": "src", "arch": "resnet8", "tag": "gn", "eps": "1", "seed": "2", "target": "near", "mode": "0"}
    assert run_name("transfer", wc) == "gn1 s2 -> near m0"
    assert run_name("transfer", wc, qualify=True) == "src resnet8 gn1 s2 -> near m0"
    other = results / "models" / "other/resnet8/eps0/s0"
    write(other / "metrics.json", json.dumps({"natural_acc": 50.0}))
    uri = default_uri(results)
    ingest(results, uri, "atlib", None)
    _, runs = _runs(uri)
    assert {"other resnet8 eps0 s0", "src resnet8 eps0.5 s0 -> near m0"} <= {r.info.run_name for r in runs}


def test_changed_file_updates_exactly_that_run(results, config):
    uri = default_uri(results)
    ingest(results, uri, "atlib", config)
    _, before = _runs(uri)
    m = results / "transfer" / MODEL.format(eps="0.5") / "near" / "mode0" / "metrics.json"
    data = json.loads(m.read_text())
    data["top1"] = 70.0
    m.write_text(json.dumps(data))
    summary = ingest(results, uri, "atlib", config)
    assert (summary["created"], summary["updated"], summary["skipped"], summary["relinked"]) == (0, 1, 7, 0)
    _, after = _runs(uri)
    assert len(after) == 8
    changed = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert [r.data.tags["job_key"] for r in changed] == ["transfer/src/resnet8/eps0.5/s0/near/mode0"]
    assert changed[0].data.metrics["final/top1"] == 70.0


def test_live_logger_unreachable_server_never_raises():
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LiveLogger("http://127.0.0.1:9", "atlib", "models/x/resnet8/eps0/s0", {"rule": "train_source"}) as live:
            for step in range(3):
                live.log_metrics({"train_loss": 1.0}, step=step)
    assert time.time() - t0 < 10
    assert not live.enabled and len(caught) == 1 and "track" in str(caught[0].message)


def test_live_run_is_replaced_by_ingest(results, config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_uri(results)
    key = "models/src/resnet8/eps0/s0"
    with LiveLogger(uri, "atlib", key, {"rule": "train_source"}) as live:
        live.log_metrics({"train_loss": 1.4, "note": "dropped"}, step=1)
    assert live.enabled
    _, runs = _runs(uri)
    assert [r.data.tags["job_key"] for r in runs] == [key] and runs[0].data.tags["live"] == "true"
    summary = ingest(results, uri, "atlib", config)
    assert (summary["created"], summary["updated"]) == (7, 1)
    client, runs = _runs(uri)
    assert sorted(r.data.tags["job_key"] for r in runs).count(key) == 1
    run = next(r for r in runs if r.data.tags["job_key"] == key)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    # the experiment the live logger created keeps its artifacts beside the store, not in the cwd
    assert list((results / "mlartifacts").rglob("metrics.json")) and not (tmp_path / "mlruns").exists()


def test_live_transfer_run_is_nested_and_replaced_by_ingest(results, config):
    uri = default_uri(results)
    ingest(results, uri, "atlib", config)
    key = "transfer/src/resnet8/eps0.5/s0/near/mode0"
    with LiveLogger(uri, "atlib", key, {"rule": "transfer"}) as live:  # the job reruns, streaming
        live.log_metrics({"test_top1": 50.0}, step=1)
    _, runs = _runs(uri)
    model = next(r for r in runs if r.data.tags["job_key"] == "models/src/resnet8/eps0.5/s0").info.run_id
    run = next(r for r in runs if r.data.tags["job_key"] == key)
    assert run.data.tags["live"] == "true" and run.data.tags[PARENT_TAG] == model
    assert run.info.run_name == "eps0.5 s0 -> near m0"
    summary = ingest(results, uri, "atlib", config)
    assert (summary["created"], summary["updated"], summary["skipped"]) == (0, 1, 7)
    _, runs = _runs(uri)
    assert [r.data.tags.get(PARENT_TAG) for r in runs if r.data.tags["job_key"] == key] == [model]


def test_ingest_unreachable_server_is_one_clear_error(results):
    t0 = time.time()
    with pytest.raises(TrackingError, match="not reachable.*tracking.uri"):
        ingest(results, "http://127.0.0.1:9", "atlib")
    assert time.time() - t0 < 10


def test_ingest_into_a_broken_store_is_one_clear_error(results, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(TrackingError, match="MLflow store .* failed.*rerun the `track` rule"):
        ingest(results, f"sqlite:///{tmp_path}/a_file/mlflow.db", "atlib")


def test_live_logging_streams_training_epochs(tiny_prepared, tmp_path):
    """A training job with tracking.live logs each epoch's history row to its run while it runs."""
    import mlflow

    from atlib.spec.settings import TrainSchedule
    from atlib.train.source import train_source
    from atlib.workflow.tracking.live import live_for_job

    results = tmp_path / "results"
    out = results / "models" / "tiny" / "resnet8" / "eps0" / "s0"
    tracking = {"uri": None, "experiment": "live", "live": True}
    sched = TrainSchedule.from_config({"epochs": 2, "batch_size": 30, "lr": 0.05, "lr_schedule": "cosine", "bf16": False,
                                       "evaluation": {"eps": [0.5], "steps": 1, "restarts": 1, "max_images": 10}})
    with live_for_job(tracking, results, out / "metrics.json", "train_source", {"eps": "0"}) as live:
        train_source(tiny_prepared, out, arch="resnet8", width=0.125, eps=0.0, seed=0, schedule=sched,
                     on_epoch=lambda row: live.log_metrics(row, step=int(row["epoch"])))
    client = mlflow.MlflowClient(f"sqlite:///{results.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["job_key"] == "models/tiny/resnet8/eps0/s0"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "test_acc")] == [1, 2]


def _inputs(run) -> list[tuple[str, str, str]]:
    """A run's dataset inputs as (name, digest, context), sorted."""
    return sorted((d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
                  for d in run.inputs.dataset_inputs)


def _digest(files: dict[str, str]) -> str:
    """The documented digest: sha256 of the sorted `file sha256` lines of meta.json, 36 characters."""
    return hashlib.sha256("".join(f"{f} {h}\n" for f, h in sorted(files.items())).encode()).hexdigest()[:36]


def test_transfer_and_distance_runs_log_their_datasets_once(results, config):
    """The runs table's Dataset column: a transfer's source and target, a distance's source and dataset,
    as MLflow dataset inputs; a re-ingest adds none, a re-prepared dataset relogs the runs that read it."""
    uri = default_uri(results)
    ingest(results, uri, "atlib", config)
    assert ingest(results, uri, "atlib", config)["skipped"] == 8
    client, runs = _runs(uri)
    by_key = {r.data.tags["job_key"]: _inputs(r) for r in runs}
    src, near = _digest(DATA_SHA256["src"]), _digest(DATA_SHA256["near"])
    both = [("near", near, "target"), ("src", src, "source")]
    assert by_key.pop("transfer/src/resnet8/eps0.5/s0/near/mode0") == both
    assert by_key.pop("distance/src/resnet8/eps0/s0/near") == both
    assert not any(by_key.values())  # models, analyses and the report read no dataset of their own
    exp = client.get_experiment_by_name("atlib").experiment_id
    assert len(client.search_runs([exp], "datasets.name = 'near'")) == 2
    meta = results / "data" / "near" / "meta.json"
    meta.write_text(json.dumps({"name": "near", "sha256": {"index.csv": "4" * 64}}))
    summary = ingest(results, uri, "atlib", config)
    assert (summary["updated"], summary["skipped"]) == (2, 6)
    _, runs = _runs(uri)
    moved = [("near", _digest({"index.csv": "4" * 64}), "target"), ("src", src, "source")]
    assert [_inputs(r) for r in runs if r.data.tags["rule"] in ("transfer", "task_distance")] == [moved, moved]


def test_ui_address_opens_the_experiments_runs_table(results, config, tmp_path, capsys):
    assert runs_address(results, "atlib") == LOCAL_UI  # no store yet: the plain address, and none created
    assert not (results / "mlflow.db").exists()
    summary = ingest(results, default_uri(results), "atlib", config)
    assert summary["experiment_id"] != "0"  # not MLflow's Default experiment: the address must name ours
    runs = f"{LOCAL_UI}/#/experiments/{summary['experiment_id']}/runs"
    assert runs_address(results, "atlib") == runs
    assert runs_address(results, "another") == LOCAL_UI
    ui.main([str(results), "--config", str(ROOT / "tests/configs/tiny.yaml")])
    assert runs in capsys.readouterr().out
