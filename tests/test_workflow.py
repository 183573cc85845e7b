"""Workflow tests: dry runs of both configs, bad configs refused before any job runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_paper_grid_dry_run_without_data(tmp_path):
    r = snakemake("-n", "--configfile", "config/config.yaml", "--config", f"results={tmp_path}/results")
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    assert counts["train_source"] == 13  # 2 + 2 + 2 + 2 + the 5-eps sweep
    assert counts["transfer"] == (5 + 4 + 4 + 11) * 2 * 3
    assert counts["fisher"] == 5 and counts["invert"] == 15 and counts["representation"] == 5
    # the 3 sources (cifar10, cifar100, imagenet) and the other 10 targets of the paper's tables
    assert counts["prepare_dataset"] == 13
    assert "demo" not in r.stdout  # the demo config is not merged in


def test_demo_dry_run(tmp_path):
    r = snakemake("-n", "--configfile", "config/demo.yaml", "--config", f"results={tmp_path}/results")
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    # eps 0 and 1 x 3 seeds, eps 2 and 4 (the sweep), Gaussian noise at eps 1 x 3 seeds
    assert counts["train_source"] == 6 + 2 + 3
    assert counts["transfer"] == 6 * 11  # 10 targets + the source as reference, mode 0


def planned_outputs(output: str) -> dict[str, list[str]]:
    """rule -> the output files of its planned jobs, from a dry run's job blocks."""
    out: dict[str, list[str]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("output:"):
            out.setdefault(rule, []).extend(p.strip() for p in line.split(":", 1)[1].split(","))
    return out


def test_tiny_dry_run_plans_gaussian_models_beside_pgd_ones(tmp_path):
    """tests/configs/tiny.yaml's tiny_gn: a Gaussian-noise model at src/resnet8/gn1/s0, with its Fisher."""
    r = snakemake("-n", "-d", str(tmp_path), "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
                  "--config", "results=results")
    assert r.returncode == 0, r.stderr[-3000:]
    planned = planned_outputs(r.stdout)
    assert "results/models/src/resnet8/gn1/s0/model.pt" in planned["train_source"]
    assert "results/models/src/resnet8/eps0.5/s0/model.pt" in planned["train_source"]
    assert "results/fisher/src/resnet8/gn1/s0/summary.json" in planned["fisher"]
    assert job_counts(r.stdout)["train_source"] == 3
    assert not any("gn1" in f for rule in ("transfer", "representation", "invert", "task_distance")
                   for f in planned.get(rule, []))
    assert "tag=gn, eps=1" in r.stdout


@pytest.mark.parametrize("edit,expect", [
    (lambda c: c["experiments"]["demo"].__setitem__("modes", [3]), "experiments.demo.modes[0]"),
    (lambda c: c["experiments"]["demo"].__setitem__("source", "nope"), "experiments.demo.source"),
    (lambda c: c["train_schedules"]["demo"].__setitem__("epochs", -1), "train_schedules.demo.epochs"),
])
def test_bad_config_refused_before_any_job(tmp_path, edit, expect):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    edit(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = snakemake("-n", "--configfile", str(bad), "--config", f"results={tmp_path}/results")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"config error at {expect}" in out and "Traceback" not in out
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny config through every rule, in its own working directory (own .snakemake/)."""
    work = tmp_path_factory.mktemp("tiny")
    r = snakemake("--profile", "profiles/local", "--cores", "2", "-d", str(work),
                  "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--config", "results=results")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return work


def test_tiny_end_to_end_outputs(tiny_run):
    res = tiny_run / "results"
    for rel in ["models/src/resnet8/eps0.5/s0/metrics.json", "models/src/resnet8/eps0/s0/history.csv",
                "transfer/src/resnet8/eps0.5/s0/far/mode2/metrics.json", "distance/src/resnet8/eps0/s0/near.json",
                "fisher/src/resnet8/eps0.5/s0/summary.json", "representation/src/resnet8/eps0/s0/summary.json",
                "invert/src/resnet8/eps0.5/s0/variational/curve.csv", "report/summary.md", "report/claims.md",
                "report/gap_vs_distance.png", "report/paper_comparison.csv", "tracking/ingest.json",
                "models/src/resnet8/gn1/s0/history.csv", "fisher/src/resnet8/gn1/s0/summary.json"]:
        assert (res / rel).exists(), rel


def test_tiny_rerun_plans_nothing(tiny_run):
    r = snakemake("-n", "-d", str(tiny_run), "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
                  "--config", "results=results")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


def test_tiny_rebuild_one_target_reruns_only_it_and_aggregates(tiny_run):
    target = "results/transfer/src/resnet8/eps0/s0/near/mode0/metrics.json"
    r = snakemake("all", "-n", "-d", str(tiny_run), "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
                  "--config", "results=results", "--forcerun", target)
    assert r.returncode == 0, r.stderr[-3000:]
    assert job_counts(r.stdout) == {"transfer": 1, "aggregate": 1, "track": 1, "all": 1}


def test_imported_zoo_model_plans_with_its_file_or_names_the_missing_one(tmp_path):
    """An experiment importing a RobustBench model at every eps: its own arch name in the paths, the file at
    RobustBench's layout declared as input; without the file, one message before any job."""
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["source_models"] = {"rb": {"kind": "robustbench", "name": "Standard", "model_dir": "zoo"}}
    cfg["experiments"] = {"zoo": {"source": "src", "arch": "wrn28_10", "eps": [0, 1], "train": "tiny",
                                  "pretrained": {"0": "rb", "1": "rb"}, "targets": ["near"], "finetune": "tiny"}}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(cfg))
    args = ("-n", "-d", str(tmp_path), "--configfile", str(tmp_path / "zoo.yaml"))
    r = snakemake(*args)
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    assert "zoo/cifar10/Linf/Standard.pt: weights of source_models.rb" in r.stdout + r.stderr
    (tmp_path / "zoo" / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "zoo" / "cifar10" / "Linf" / "Standard.pt").write_bytes(b"staged")
    r = snakemake(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(planned_outputs(r.stdout)["train_source"]) == {
        f"results/models/src/wrn28_10/eps{e}/s0/{f}" for e in (0, 1)
        for f in ("model.pt", "history.csv", "metrics.json")}
    assert "zoo/cifar10/Linf/Standard.pt" in r.stdout
