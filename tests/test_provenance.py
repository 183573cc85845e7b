"""Integrity and provenance: prepared data checked on read, provenance records, `atlib.workflow.verify`,
the MLflow tags, and the demo's stale-lock handling."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import save_tiny_model

from atlib.data import DataIntegrityError, Index, Prepared, write_prepared
from atlib.spec import provenance
from atlib.spec.config import check_config
from atlib.spec.schema import config_hash
from atlib.spec.settings import FinetuneSchedule
from atlib.transfer.finetune import transfer
from atlib.transfer.inputs import TransferError
from atlib.workflow import demo, verify

ROOT = Path(__file__).resolve().parent.parent
MODEL = "src/resnet8/eps0/s0"


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip(path: Path, at: int = 200, n: int = 100) -> None:
    """Invert `n` bytes in place (what a bad disk or a stray write does)."""
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(255 - b for b in data[at:at + n])
    path.write_bytes(bytes(data))


@pytest.fixture
def config(tmp_path: Path) -> dict:
    cfg = check_config(yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text()))
    cfg["results"] = str(tmp_path / "results")
    return cfg


def test_flipped_byte_in_array_file_is_refused_with_both_hashes_and_the_fix(tiny_prepared):
    images = tiny_prepared / "images.npy"
    recorded = json.loads((tiny_prepared / "meta.json").read_text())["sha256"]["images.npy"]
    flip(images)
    with pytest.raises(DataIntegrityError) as err:
        Prepared(tiny_prepared)
    msg = str(err.value)
    assert str(images) in msg and recorded in msg and file_sha(images) in msg
    assert f"snakemake {tiny_prepared / 'meta.json'} --forcerun prepare_dataset" in msg
    # verify_data: false skips the hash (the row counts still match here, so it opens)
    assert Prepared(tiny_prepared, verify=False).split_size("train") == 60


def test_environment_switch_skips_the_hash(tiny_prepared, monkeypatch):
    flip(tiny_prepared / "labels.npy", at=140, n=8)
    monkeypatch.setenv("ATLIB_VERIFY_DATA", "0")
    Prepared(tiny_prepared)
    monkeypatch.setenv("ATLIB_VERIFY_DATA", "1")
    with pytest.raises(DataIntegrityError, match="labels.npy"):
        Prepared(tiny_prepared)


def test_truncated_array_file_is_refused_even_without_hashing(tiny_prepared):
    images = tiny_prepared / "images.npy"
    images.write_bytes(images.read_bytes()[:-64 * 5])  # five 8x8 images short
    with pytest.raises(DataIntegrityError, match="images.npy.*unreadable.*truncated or changed"):
        Prepared(tiny_prepared, verify=False)


@pytest.fixture
def index_prepared(tmp_path: Path) -> Path:
    """A file-backed prepared dataset of six 8x8 PNGs (4 train, 2 test)."""
    from PIL import Image

    paths = []
    for i in range(6):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "files"
    write_prepared(Index(paths, [0, 1, 0, 1, 0, 1], ["train"] * 4 + ["test"] * 2, ["a", "b"]), out, "files",
                   2, 8, 1, "test")
    return out


def test_truncated_index_csv_is_refused(index_prepared):
    index = index_prepared / "index.csv"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:-1]))  # the last test row lost
    with pytest.raises(DataIntegrityError, match="index.csv has sha256") as err:
        Prepared(index_prepared)
    assert "--forcerun prepare_dataset" in str(err.value)
    with pytest.raises(DataIntegrityError, match=r"index.csv: rows per split \{'train': 4, 'test': 1\}.*truncated"):
        Prepared(index_prepared, verify=False)


def test_transfer_refuses_a_corrupt_target_before_training(tmp_path, tiny_prepared):
    model = tmp_path / "models" / MODEL / "model.pt"
    save_tiny_model(model)
    flip(tiny_prepared / "images.npy")
    with pytest.raises(TransferError, match="images.npy has sha256 .* but .*meta.json records"):
        transfer(model, tiny_prepared, tmp_path / "out", mode=0, schedule=FinetuneSchedule.from_config({"epochs": 1}),
                 seed=0)
    assert not (tmp_path / "out" / "metrics.json").exists()


def make_tree(tmp_path: Path, tiny_prepared: Path, config: dict) -> Path:
    """A results tree with one dataset, a model, a transfer and a features -> distance chain, each
    with the provenance record its rule's script writes."""
    res = Path(config["results"])
    data = res / "data" / "src"
    data.parent.mkdir(parents=True)
    tiny_prepared.rename(data)
    mdir = res / "models" / MODEL
    save_tiny_model(mdir / "model.pt")
    for name, text in (("metrics.json", '{"natural_acc": 50.0}'), ("history.csv", "epoch,test_acc\n1,50\n")):
        (mdir / name).write_text(text)
    provenance.record([data / "meta.json"], [mdir / "model.pt", mdir / "history.csv", mdir / "metrics.json"], config)
    tdir = res / "transfer" / MODEL / "src" / "mode0"
    tdir.mkdir(parents=True)
    (tdir / "metrics.json").write_text('{"top1": 61.0}')
    (tdir / "history.csv").write_text("epoch,test_top1\n1,61\n")
    provenance.record([mdir / "model.pt", data / "meta.json"], [tdir / "metrics.json", tdir / "history.csv"], config)
    ddir = res / "distance" / MODEL
    ddir.mkdir(parents=True)
    (ddir / "src.features.npz").write_bytes(b"features")
    provenance.record([mdir / "model.pt", data / "meta.json"], [ddir / "src.features.npz"], config)
    (ddir / "src.json").write_text('{"emd": 1.0}')
    provenance.record([ddir / "src.features.npz"] * 2, [ddir / "src.json"], config)
    return res


def test_record_holds_every_file_read_the_config_hash_and_the_code(tmp_path, tiny_prepared, config):
    res = make_tree(tmp_path, tiny_prepared, config)
    rec = json.loads((res / "transfer" / MODEL / "src" / "mode0" / "provenance.json").read_text())
    data, model = res / "data" / "src", res / "models" / MODEL / "model.pt"
    assert rec["inputs"] == {f"models/{MODEL}/model.pt": file_sha(model),
                             "data/src/meta.json": file_sha(data / "meta.json"),
                             "data/src/images.npy": file_sha(data / "images.npy"),
                             "data/src/labels.npy": file_sha(data / "labels.npy")}
    assert rec["outputs"][f"transfer/{MODEL}/src/mode0/metrics.json"] == file_sha(
        res / "transfer" / MODEL / "src" / "mode0" / "metrics.json")
    assert rec["config_hash"] == config_hash(config)
    assert rec["code"]["atlib"] == "0.1.0" and len(rec["code"].get("git_commit", "0" * 40)) == 40
    # the machine and its numerics (atlib.core.numerics): results differ in the last bits across them
    num = rec["numerics"]
    assert {"model", "isa"} <= set(num["cpu"]) and num["torch"]["version"] == torch.__version__
    assert num["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # torch is loaded here
    assert "ONEDNN_MAX_CPU_ISA" in num["env"] and num["config"] == config["numerics"]
    assert num["bf16"]["train_schedules"] == {k: v["bf16"] for k, v in config["train_schedules"].items()}
    # one output in a shared folder: a sidecar record, not the folder's provenance.json
    assert (res / "distance" / MODEL / "src.provenance.json").exists()
    assert not (res / "distance" / MODEL / "provenance.json").exists()


def test_verify_clean_tree(tmp_path, tiny_prepared, config, capsys):
    res = make_tree(tmp_path, tiny_prepared, config)
    report = verify.check_tree(res)
    assert report.clean and len(report.ok) == 4 and not report.not_judged
    assert verify.main([str(res)]) == 0
    assert "4 match" in capsys.readouterr().out


def test_verify_reports_a_replaced_model_and_everything_built_from_it(tmp_path, tiny_prepared, config, capsys):
    res = make_tree(tmp_path, tiny_prepared, config)
    model = res / "models" / MODEL / "model.pt"
    torch.manual_seed(1)
    save_tiny_model(model, seed_note=1)  # a different model at the same path
    report = verify.check_tree(res)
    stale = dict(report.stale)
    assert set(stale) == {str(model), str(res / "transfer" / MODEL / "src" / "mode0" / "metrics.json"),
                          str(res / "distance" / MODEL / "src.features.npz"), str(res / "distance" / MODEL / "src.json")}
    assert "changed since it was written" in stale[str(model)]
    assert f"input models/{MODEL}/model.pt changed" in stale[str(res / "transfer" / MODEL / "src" / "mode0" / "metrics.json")]
    assert "built from distance/" in stale[str(res / "distance" / MODEL / "src.json")]
    assert verify.main([str(res)]) == 1
    assert "--force" in capsys.readouterr().out


def test_verify_reports_a_flipped_data_byte(tmp_path, tiny_prepared, config):
    res = make_tree(tmp_path, tiny_prepared, config)
    flip(res / "data" / "src" / "images.npy")
    report = verify.check_tree(res)
    assert [p for p, _ in report.datasets] == [str(res / "data" / "src" / "images.npy")]
    assert "--forcerun prepare_dataset" in report.datasets[0][1]
    assert len(report.stale) == 4 and not report.clean  # model, transfer, features; the distance via features


def test_verify_older_tree_without_provenance_says_what_it_cannot_judge(tmp_path, tiny_prepared, config, capsys):
    res = make_tree(tmp_path, tiny_prepared, config)
    for rec in res.rglob("*provenance.json"):
        rec.unlink()
    (res / "transfer" / MODEL / "src" / "mode0" / "provenance.json").write_text('{"half a rec')
    report = verify.check_tree(res)
    assert report.clean and not report.ok
    judged = dict(report.not_judged)
    assert "unreadable" in judged[str(res / "transfer" / MODEL / "src" / "mode0" / "provenance.json")]
    assert "no provenance record" in judged[str(res / "models" / MODEL / "metrics.json")]
    assert "no provenance record" in judged[str(res / "distance" / MODEL / "src.json")]
    assert verify.main([str(res)]) == 0
    assert "not judged (3)" in capsys.readouterr().out


def test_ingest_tags_runs_with_their_inputs(tmp_path, tiny_prepared, config):
    from mlflow import MlflowClient

    from atlib.workflow.tracking.ingest import ingest

    res = make_tree(tmp_path, tiny_prepared, config)
    summary = ingest(res, config=config)
    client = MlflowClient(tracking_uri=summary["uri"])
    runs = {r.data.tags["job_key"]: r.data.tags for r in client.search_runs([summary["experiment_id"]])}
    tags = runs[f"transfer/{MODEL}/src/mode0"]
    assert tags[f"provenance.input/models/{MODEL}/model.pt"] == file_sha(res / "models" / MODEL / "model.pt")
    assert tags["provenance.input/data/src/images.npy"] == file_sha(res / "data" / "src" / "images.npy")
    assert tags["provenance.config_hash"] == config_hash(config)
    assert runs[f"distance/{MODEL}/src"][f"provenance.input/distance/{MODEL}/src.features.npz"]


def test_stale_lock_left_alone_while_a_snakemake_process_lives_there(tmp_path):
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("x")
    # a stand-in for a running Snakemake job: "snakemake" in its command line, cwd the workdir
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "snakemake"], cwd=tmp_path)
    try:
        deadline = time.time() + 10
        while proc.pid not in demo.live_snakemake(tmp_path) and time.time() < deadline:
            time.sleep(0.05)
        assert proc.pid in demo.live_snakemake(tmp_path)
        assert demo.clear_stale_lock(["unused.yaml"], "results", tmp_path) is False
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / ".snakemake" / "locks" / "0.input.lock").exists()
