"""MLflow ingest of a synthetic results tree (idempotent, updates only what changed) and live logging."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import yaml

from atlib.config import check_config, config_hash
from atlib.tracking import LiveLogger, TrackingError, default_uri, find_jobs, ingest, job_key, job_params

ROOT = Path(__file__).resolve().parent.parent
MODEL = "src/resnet8/eps{eps}/s0"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def config() -> dict:
    return check_config(yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text()))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """One finished job of every kind (eps 0 and 0.5 models), in the documented file formats."""
    res = tmp_path / "results"
    hist = "epoch,lr,train_loss,train_acc,train_adv_acc,test_acc,test_adv_acc,weight_norm,time_s\n"
    for eps in ("0", "0.5"):
        m = res / "models" / MODEL.format(eps=eps)
        rows = [f"{e},0.05,{1.5 - e / 10},{40 + e},,{45 + e},,{10 + e},{e}.5" for e in range(1, 4)]
        _write(m / "history.csv", hist + "\n".join(rows) + "\n")
        _write(m / "metrics.json", json.dumps({
            "natural_acc": 47.0, "pgd_acc": {"0.5": 20.0}, "weight_norm": 13.0, "epochs": 3, "train_time_s": 3.5,
            "eps": float(eps), "source": "src", "arch": "resnet8", "seed": 0}))
        (m / "model.pt").write_bytes(b"not an artifact")
    t = res / "transfer" / MODEL.format(eps="0.5") / "near" / "mode0"
    _write(t / "history.csv",
           "epoch,lr,train_loss,train_acc,test_top1,time_s\n1,0.05,1.0,50,55,1\n2,0.01,0.8,60,61,2\n")
    _write(t / "metrics.json", json.dumps({
        "top1": 61.0, "pgd_acc": {"0.5": 30.0}, "mode": 0, "target": "near", "source_model": MODEL.format(eps="0.5"),
        "eps": 0.5, "seed": 0, "epochs": 2, "cached": False, "train_time_s": 2.0}))
    d = res / "distance" / MODEL.format(eps="0")
    _write(d / "near.json", json.dumps({"probe": MODEL.format(eps="0"), "source": "src", "dataset": "near",
                                        "emd": 2.5, "similarity": 0.3, "otdd": 1.2, "n_images": 100}))
    (d / "near.features.npz").write_bytes(b"cache, not a job")
    f = res / "fisher" / MODEL.format(eps="0.5")
    _write(f / "summary.json", json.dumps({
        "eps": 0.5, "kind": "empirical", "n_images": 16, "log_variance_mean": -3.0,
        "log_variance_per_layer": {"layer1.0.conv1": -2.0}, "kl_total": 5.0, "kl_per_layer": {"layer1.0.conv1": 1.0},
        "fisher_trace": 0.1, "weight_norm": 13.0,
        "input_fisher": {"lambda1": 0.2, "trace": 0.5, "trace_over_n": 0.01, "n": 4}}))
    r = res / "representation" / MODEL.format(eps="0")
    _write(r / "summary.json", json.dumps({"eps": 0.0, "knn_acc": 80.0, "silhouette": 0.2, "n_images": 40}))
    _write(r / "tsne.csv", "x,y,label\n0,1,0\n")
    i = res / "invert" / MODEL.format(eps="0.5") / "variational"
    _write(i / "curve.csv", "step,loss\n" + "".join(f"{s},{1.0 / (s + 1)}\n" for s in range(5)))
    _write(i / "summary.json", json.dumps({"method": "variational", "final_loss": 0.2, "steps": 5,
                                           "steps_to_reach": {"0.5": 2, "0.1": None}}))
    return res


def _runs(uri: str, experiment: str = "atlib"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, list(client.search_runs([exp.experiment_id], max_results=1000))


def test_finds_every_kind_and_job_keys_match(results):
    jobs = {j.key: j for j in find_jobs(results)}
    assert sorted(jobs) == [
        "distance/src/resnet8/eps0/s0/near", "fisher/src/resnet8/eps0.5/s0",
        "invert/src/resnet8/eps0.5/s0/variational", "models/src/resnet8/eps0.5/s0", "models/src/resnet8/eps0/s0",
        "representation/src/resnet8/eps0/s0", "transfer/src/resnet8/eps0.5/s0/near/mode0"]
    assert jobs["transfer/src/resnet8/eps0.5/s0/near/mode0"].wildcards == {
        "source": "src", "arch": "resnet8", "tag": "eps", "eps": "0.5", "seed": "0", "target": "near", "mode": "0",
        "source_model": "src/resnet8/eps0.5/s0"}
    assert "model.pt" not in {f.name for f in jobs["models/src/resnet8/eps0/s0"].files}
    # what a job's script computes from its own output equals what the ingest finds
    for key, out in [("models/src/resnet8/eps0/s0", "models/src/resnet8/eps0/s0/model.pt"),
                     ("distance/src/resnet8/eps0/s0/near", "distance/src/resnet8/eps0/s0/near.json"),
                     ("invert/src/resnet8/eps0.5/s0/variational",
                      "invert/src/resnet8/eps0.5/s0/variational/images.png")]:
        assert job_key(results, results / out) == key


def test_gaussian_model_jobs_have_tag_gn_and_their_experiment(results, config):
    """A Gaussian-noise model (tests/configs/tiny.yaml's tiny_gn) beside the PGD one: own job keys."""
    gn = results / "models" / "src/resnet8/gn1/s0"
    _write(gn / "metrics.json", json.dumps({"natural_acc": 50.0, "pgd_acc": {"0.5": 5.0}, "weight_norm": 12.0,
                                            "epochs": 1, "train_time_s": 1.0, "eps": 1.0, "source": "src",
                                            "arch": "resnet8", "seed": 0}))
    _write(results / "fisher" / "src/resnet8/gn1/s0" / "summary.json", json.dumps({"eps": 1.0}))
    jobs = {j.key: j for j in find_jobs(results)}
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
    assert (first["created"], first["updated"], first["skipped"], first["jobs"]) == (7, 0, 0, 7)
    second = ingest(results, uri, "atlib", config, "abc123")
    assert (second["created"], second["updated"], second["skipped"]) == (0, 0, 7)
    client, runs = _runs(uri)
    assert len(runs) == 7
    by_key = {r.data.tags["job_key"]: r for r in runs}
    tr = by_key["transfer/src/resnet8/eps0.5/s0/near/mode0"]
    tags = tr.data.tags
    assert tags["rule"] == "transfer" and tags["mode"] == "0" and tags["eps"] == "0.5" and tags["target"] == "near"
    assert tags["git_commit"] == "abc123" and tags["config_hash"] == config_hash(config)
    assert tr.data.params["finetune.epochs"] == "1" and tr.data.params["experiment"] == "tiny"
    assert tr.data.metrics["top1"] == 61.0 and tr.data.metrics["pgd_acc/0.5"] == 30.0
    assert len(client.get_metric_history(tr.info.run_id, "test_top1")) == 2
    model = by_key["models/src/resnet8/eps0/s0"]
    assert [m.step for m in client.get_metric_history(model.info.run_id, "train_loss")] == [1, 2, 3]
    assert client.get_metric_history(model.info.run_id, "test_adv_acc") == []  # empty cells are not points
    assert model.data.metrics["final/weight_norm"] == 13.0  # not drawn into the weight_norm curve
    assert model.data.params["train.epochs"] == "1"
    inv = by_key["invert/src/resnet8/eps0.5/s0/variational"]
    assert [m.step for m in client.get_metric_history(inv.info.run_id, "loss")] == list(range(5))
    assert by_key["distance/src/resnet8/eps0/s0/near"].data.tags["probe"] == "src/resnet8/eps0/s0"
    arts = {a.path for a in client.list_artifacts(model.info.run_id)}
    assert arts == {"history.csv", "metrics.json"}
    assert all(r.info.status == "FINISHED" for r in runs)


def test_changed_file_updates_exactly_that_run(results, config):
    uri = default_uri(results)
    ingest(results, uri, "atlib", config)
    _, before = _runs(uri)
    m = results / "transfer" / MODEL.format(eps="0.5") / "near" / "mode0" / "metrics.json"
    data = json.loads(m.read_text())
    data["top1"] = 70.0
    m.write_text(json.dumps(data))
    summary = ingest(results, uri, "atlib", config)
    assert (summary["created"], summary["updated"], summary["skipped"]) == (0, 1, 6)
    _, after = _runs(uri)
    assert len(after) == 7
    changed = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert [r.data.tags["job_key"] for r in changed] == ["transfer/src/resnet8/eps0.5/s0/near/mode0"]
    assert changed[0].data.metrics["top1"] == 70.0


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
    assert (summary["created"], summary["updated"]) == (6, 1)
    client, runs = _runs(uri)
    assert sorted(r.data.tags["job_key"] for r in runs).count(key) == 1
    run = next(r for r in runs if r.data.tags["job_key"] == key)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    # the experiment the live logger created keeps its artifacts beside the store, not in the cwd
    assert list((results / "mlartifacts").rglob("metrics.json")) and not (tmp_path / "mlruns").exists()


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

    from atlib.tracking import live_for_job
    from atlib.train import train_source

    results = tmp_path / "results"
    out = results / "models" / "tiny" / "resnet8" / "eps0" / "s0"
    tracking = {"uri": None, "experiment": "live", "live": True}
    sched = {"epochs": 2, "batch_size": 30, "lr": 0.05, "lr_schedule": "cosine", "bf16": False,
             "evaluation": {"eps": [0.5], "steps": 1, "restarts": 1, "max_images": 10}}
    with live_for_job(tracking, results, out / "metrics.json", "train_source", {"eps": "0"}) as live:
        train_source(tiny_prepared, out, arch="resnet8", width=0.125, eps=0.0, seed=0, schedule=sched,
                     on_epoch=lambda row: live.log_metrics(row, step=int(row["epoch"])))
    client = mlflow.MlflowClient(f"sqlite:///{results.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["job_key"] == "models/tiny/resnet8/eps0/s0"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "test_acc")] == [1, 2]
