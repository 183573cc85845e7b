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
    assert counts["train_source"] == 5  # eps 0 and 1 x 2 seeds, plus eps 0.5
    assert counts["transfer"] == 4 * 7 + 2 * 2 * 2


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
    assert r.returncode != 0
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()
