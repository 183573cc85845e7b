"""The SLURM profile: resources per rule (dry run), and real runs on a single-node test cluster.

The cluster tests start SLURM with scripts/slurm_cluster.sh (root, slurm-wlm + munge installed:
`.ci/prepare-slurm.sh`) and skip with the reason where it cannot start. Every Snakemake run is
bounded by `timeout -s INT` (Snakemake under SLURM ignores SIGTERM).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "slurm"
CI_PROFILES = ["--profile", str(PROFILE), "--profile", str(PROFILE / "ci.yaml")]
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
GPU_RULES = {"train_source", "transfer", "fisher", "invert"}
CPU_RULES = {"prepare_dataset", "features", "task_distance", "representation"}
TINY = ROOT / "tests" / "configs" / "slurm_tiny.yaml"


def snakemake_cmd(*args: str, limit: int) -> list[str]:
    return ["timeout", "-s", "INT", "-k", "30", str(limit), sys.executable, "-m", "snakemake", *args]


def run(*args: str, limit: int = 170, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(snakemake_cmd(*args, limit=limit), cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode != 124, f"snakemake ran past {limit} s:\n{(r.stdout + r.stderr)[-4000:]}"
    return r


def job_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the `resources:` of each of its jobs, from Snakemake's job listing."""
    out: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(local)?rule (\w+):$", line)
        if m:
            rule = ("local:" if m.group(1) else "") + m.group(2)
        elif rule and line.startswith("    resources: "):
            items = (kv.split("=", 1) for kv in line.split(": ", 1)[1].split(", "))
            out.setdefault(rule, []).append({k: v for k, v in items})
    return out


# ---------------------------------------------------------------- profile (no cluster needed)


def test_profile_dry_run_gives_gpu_rules_a_gpu(tmp_path):
    r = run("-n", "--profile", str(PROFILE), "--configfile", "config/config.yaml",
            "--config", f"results={tmp_path}/results")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = job_resources(r.stdout)
    for rule in GPU_RULES:
        assert res[rule] and all(j.get("gpu") == "1" for j in res[rule]), rule
    for rule in CPU_RULES:
        assert res[rule] and not any("gpu" in j for j in res[rule]), rule
    # training loops are told ahead of their time limit (they checkpoint on it)
    assert all(j["slurm_extra"] == "--signal=TERM@120" for j in res["train_source"] + res["transfer"])
    assert {j["runtime"] for j in res["train_source"]} == {"720"}


def test_profile_runtimes_grow_with_the_attempt():
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    entries = [prof["default-resources"]] + list(prof["set-resources"].values())
    for entry in entries:
        first, second = (eval(str(entry["runtime"]), {"attempt": a}) for a in (1, 2))  # noqa: S307
        assert second > first > 0, entry


def test_ci_override_keeps_gpu_requests_and_sets_partition(tmp_path):
    r = run("-n", *CI_PROFILES, "--configfile", str(TINY), "--config", f"results={tmp_path}/results")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = job_resources(r.stdout)
    assert all(j["slurm_partition"] == "debug" for rule in ("prepare_dataset", "train_source") for j in res[rule])
    assert all(j.get("gpu") == "1" for j in res["train_source"] + res["transfer"])
    assert {j["runtime"] for j in res["prepare_dataset"]} == {"120"}  # set-resources survive the override


# ---------------------------------------------------------------- a real (single-node) cluster


@pytest.fixture(scope="module")
def cluster():
    """Start the test cluster (or reuse a running one); skip where SLURM cannot run here."""
    if not (shutil.which("slurmctld") and shutil.which("sbatch")):
        pytest.skip("SLURM is not installed (as root: bash .ci/prepare-slurm.sh)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root (slurmd starts jobs as their user)")
    was_running = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0
    r = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"the test SLURM cluster did not start: {r.stderr.strip()[-500:]}")
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    conf = subprocess.run(["bash", str(CLUSTER), "env"], capture_output=True, text=True).stdout
    env["SLURM_CONF"] = conf.strip().split("=", 1)[1]
    yield env
    if not was_running:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=60)


def slurm_logs(workdir: Path, rule: str) -> list[Path]:
    return sorted((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log"))


@pytest.fixture(scope="module")
def tiny_run(cluster, tmp_path_factory) -> Path:
    """Data preparation (CPU), source training and transfer (GPU rules) of the tiny config on SLURM."""
    work = tmp_path_factory.mktemp("slurm_tiny")
    target = "results/transfer/digits/resnet8/eps0.5/s0/digits_inv/mode0/metrics.json"
    r = run(target, "-s", str(ROOT / "Snakefile"), "-d", str(work), *CI_PROFILES, "--configfile", str(TINY),
            limit=240, env=cluster)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return work


def test_tiny_dag_runs_through_slurm(tiny_run, cluster):
    res = tiny_run / "results"
    for rel in ["data/digits/meta.json", "data/digits_inv/meta.json", "models/digits/resnet8/eps0.5/s0/metrics.json",
                "transfer/digits/resnet8/eps0.5/s0/digits_inv/mode0/metrics.json"]:
        assert (res / rel).exists(), rel
    # every job was a SLURM job (the ci profile keeps the logs of successful ones)
    for rule, n in [("prepare_dataset", 2), ("train_source", 1), ("transfer", 1)]:
        logs = slurm_logs(tiny_run, rule)
        assert len(logs) == n and all(p.stem.isdigit() for p in logs), (rule, logs)
    # SLURM scheduled the GPU rule with a GPU (the node's fake one), data preparation without
    def gres(log: Path) -> str:
        job = subprocess.run(["scontrol", "-o", "show", "job", log.stem], env=cluster, capture_output=True, text=True)
        return re.search(r"TresPerJob=(\S*)|$", job.stdout).group(0)

    assert gres(slurm_logs(tiny_run, "train_source")[0]) == "TresPerJob=gres:gpu:1"
    assert "gpu" not in gres(slurm_logs(tiny_run, "prepare_dataset")[0])


def test_failed_job_is_reported_and_retried(cluster, tmp_path):
    r = run("-s", str(ROOT / "tests/workflows/slurm_fail/Snakefile"), "-d", str(tmp_path), *CI_PROFILES,
            limit=150, env=cluster)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", out)
    assert "Trying to restart job" in out
    lines = (tmp_path / "attempts.txt").read_text().split("\n")
    jobs = [re.fullmatch(r"attempt (\d) slurm_job (\d+)", ln) for ln in lines if ln]
    assert [m.group(1) for m in jobs] == ["1", "2"] and jobs[0].group(2) != jobs[1].group(2)
    assert (tmp_path / "done.txt").read_text() == "ok\n"


def test_killed_training_resumes_from_its_checkpoint(cluster, tiny_run):
    """scancel (SIGTERM, then SIGKILL after KillWait) mid-training: the retry continues the run."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["experiments"] = {"resume": {"source": "digits", "arch": "resnet8", "width": 0.125, "eps": [0.5],
                                     "seeds": [1], "train": "long", "targets": []}}
    epochs = 80  # ~20 s on one core: time to cancel it mid-run
    cfg["train_schedules"]["long"] = {**cfg["train_schedules"]["tiny"], "epochs": epochs}
    config = tiny_run / "resume.yaml"
    config.write_text(yaml.safe_dump(cfg))
    model = tiny_run / "results/models/digits/resnet8/eps0.5/s1"
    log = tiny_run / "results/logs/train_source/digits/resnet8/eps0.5/s1.log"
    output = tiny_run / "resume.out"  # a file, not a pipe: nobody reads a pipe while we wait
    with output.open("w") as sink:
        proc = subprocess.Popen(snakemake_cmd(str(model.relative_to(tiny_run) / "metrics.json"), "-s",
                                              str(ROOT / "Snakefile"), "-d", str(tiny_run), *CI_PROFILES,
                                              "--configfile", str(config), limit=200),
                                cwd=ROOT, env=cluster, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (log.exists() and re.search(rf"epoch [3-9]/{epochs}", log.read_text())):
            assert proc.poll() is None and time.time() < deadline, "training did not start on SLURM"
            time.sleep(0.5)
        jobs = subprocess.run(["squeue", "-h", "-o", "%i|%k"], env=cluster, capture_output=True, text=True).stdout
        job_id = next(ln.split("|")[0] for ln in jobs.splitlines() if "rule_train_source" in ln)
        subprocess.run(["scancel", job_id], env=cluster, check=True)
        proc.wait(timeout=200)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    out = output.read_text()
    assert proc.returncode == 0, out[-6000:]
    assert re.search(rf"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'", out)
    resumed = re.search(r"resuming .* from epoch (\d+)", log.read_text())
    assert resumed and int(resumed.group(1)) > 1, log.read_text()[-2000:]
    assert len((model / "history.csv").read_text().strip().splitlines()) == 1 + epochs
    assert not (model / "resume").exists()
