"""A finished results tree of every tracked kind, in the documented file formats (no real training):
the MLflow ingest's tests (test_tracking.py) and the browser test (test_browser.py) read it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MODEL = "src/resnet8/eps{eps}/s0"
T0 = time.mktime((2026, 11, 29, 14, 28, 0, 0, 0, -1))  # local time, as job logs write it: results end here
# The prepared datasets' data files (results/data/<name>/meta.json records their sha256).
DATA_SHA256 = {"src": {"images.npy": "1" * 64, "labels.npy": "2" * 64}, "near": {"index.csv": "3" * 64}}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_results(tmp_path: Path) -> Path:
    """One finished job of every kind (eps 0 and 0.5 models), in the documented file formats."""
    res = tmp_path / "results"
    hist = "epoch,lr,train_loss,train_acc,train_adv_acc,test_acc,test_adv_acc,weight_norm,time_s\n"
    for eps in ("0", "0.5"):
        m = res / "models" / MODEL.format(eps=eps)
        rows = [f"{e},0.05,{1.5 - e / 10},{40 + e},,{45 + e},,{10 + e},{e}.5" for e in range(1, 4)]
        write(m / "history.csv", hist + "\n".join(rows) + "\n")
        write(m / "metrics.json", json.dumps({
            "natural_acc": 47.0, "pgd_acc": {"0.5": 20.0}, "weight_norm": 13.0, "epochs": 3, "train_time_s": 3.5,
            "eps": float(eps), "source": "src", "arch": "resnet8", "seed": 0}))
        (m / "model.pt").write_bytes(b"not an artifact")
    t = res / "transfer" / MODEL.format(eps="0.5") / "near" / "mode0"
    write(t / "history.csv",
           "epoch,lr,train_loss,train_acc,test_top1,time_s\n1,0.05,1.0,50,55,1\n2,0.01,0.8,60,61,2\n")
    write(t / "metrics.json", json.dumps({
        "top1": 61.0, "pgd_acc": {"0.5": 30.0}, "mode": 0, "target": "near", "source_model": MODEL.format(eps="0.5"),
        "eps": 0.5, "seed": 0, "epochs": 2, "cached": False, "train_time_s": 2.0,
        # the samples and intervals beside the accuracies (atlib.core.intervals.accuracy_interval)
        "top1_ci": {"n": 100, "correct": 61, "lo": 51.2, "hi": 70.0},
        "pgd_acc_ci": {"0.5": {"n": 50, "correct": 15, "lo": 19.1, "hi": 43.9}}}))
    d = res / "distance" / MODEL.format(eps="0")
    write(d / "near.json", json.dumps({"probe": MODEL.format(eps="0"), "source": "src", "dataset": "near",
                                        "emd": 2.5, "similarity": 0.3, "otdd": 1.2, "n_images": 100}))
    (d / "near.features.npz").write_bytes(b"cache, not a job")
    f = res / "fisher" / MODEL.format(eps="0.5")
    write(f / "summary.json", json.dumps({
        "eps": 0.5, "kind": "empirical", "n_images": 16, "log_variance_mean": -3.0,
        "log_variance_per_layer": {"layer1.0.conv1": -2.0}, "kl_total": 5.0, "kl_per_layer": {"layer1.0.conv1": 1.0},
        "fisher_trace": 0.1, "weight_norm": 13.0,
        "input_fisher": {"lambda1": 0.2, "trace": 0.5, "trace_over_n": 0.01, "n": 4}}))
    r = res / "representation" / MODEL.format(eps="0")
    write(r / "summary.json", json.dumps({"eps": 0.0, "knn_acc": 80.0, "silhouette": 0.2, "n_images": 40}))
    write(r / "tsne.csv", "x,y,label\n0,1,0\n")
    i = res / "invert" / MODEL.format(eps="0.5") / "variational"
    write(i / "curve.csv", "step,loss\n" + "".join(f"{s},{1.0 / (s + 1)}\n" for s in range(5)))
    write(i / "summary.json", json.dumps({"method": "variational", "final_loss": 0.2, "steps": 5,
                                           "steps_to_reach": {"0.5": 2, "0.1": None}}))
    for name, files in DATA_SHA256.items():  # the meta.json of prepare_dataset, without the data files
        write(res / "data" / name / "meta.json", json.dumps({"name": name, "sha256": files}))
    rep = res / "report"
    write(rep / "summary.md", "# atlib report\n")
    write(rep / "claims.csv", "claim,verdict\n1,holds\n")
    write(rep / "report.html", "<html></html>")
    (rep / "figure.png").write_bytes(b"png")
    write(res / "logs" / "aggregate" / "aggregate.log", "2026-11-29 14:27:55,093 INFO report\n"
           "2026-11-29 14:27:58,500 INFO done\n")
    for f in res.rglob("*"):  # every job ended at T0 (logs aside): the clock of the runs below
        if f.is_file() and "logs" not in f.parts:
            os.utime(f, (T0, T0))
    return res
