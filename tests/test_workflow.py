"""Workflow tests: dry runs of both configs, bad configs refused before any job runs, a tiny
end-to-end run, and the same run killed twice and resumed by the demo's runner."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from atlib.workflow.verify import check_tree, format_report

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
    # eps 0 and 1 x 3 seeds, eps 8 (the sweep), Gaussian noise at eps 1 x 3 seeds
    assert counts["train_source"] == 6 + 1 + 3
    # batch_jobs: one mode-0 job per model for 14 targets + the source as reference, one distance job
    batches = [rule for rule in counts if rule.startswith("transfer_mode0_")]
    assert len(batches) == 6 and "transfer" not in counts and counts["distances_fmnist04_resnet8_eps0_s0"] == 1
    planned = [f for rule, files in planned_outputs(r.stdout).items() if rule in batches for f in files]
    assert sum(f.endswith("/mode0/metrics.json") for f in planned) == 6 * 15


def planned_outputs(output: str, field: str = "output") -> dict[str, list[str]]:
    """rule -> the files of `field` (output or input) of its planned jobs, from a dry run's job blocks."""
    out: dict[str, list[str]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith(f"{field}:"):
            out.setdefault(rule, []).extend(p.strip() for p in line.split(":", 1)[1].split(",") if p.strip())
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


def test_tiny_end_to_end_outputs(tiny_run):
    res = tiny_run / "results"
    for rel in ["models/src/resnet8/eps0.5/s0/metrics.json", "models/src/resnet8/eps0/s0/history.csv",
                "transfer/src/resnet8/eps0.5/s0/far/mode2/metrics.json", "distance/src/resnet8/eps0/s0/near.json",
                "fisher/src/resnet8/eps0.5/s0/summary.json", "representation/src/resnet8/eps0/s0/summary.json",
                "invert/src/resnet8/eps0.5/s0/variational/curve.csv", "report/summary.md", "report/claims.md",
                "report/gap_vs_distance.png", "report/paper_comparison.csv", "tracking/ingest.json",
                "models/src/resnet8/gn1/s0/history.csv", "fisher/src/resnet8/gn1/s0/summary.json"]:
        assert (res / rel).exists(), rel


def test_tiny_mlflow_view(tiny_run):
    """The track rule's store as the UI shows it: experiment kind, job times, runs nested by model, a
    transfer's prepared datasets as its dataset inputs."""
    import json

    from mlflow import MlflowClient

    res = tiny_run / "results"
    client = MlflowClient(f"sqlite:///{res.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("atlib")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == json.loads((res / "tracking/ingest.json").read_text())["jobs"]
    by_key = {r.data.tags["job_key"]: r for r in runs}
    for r in runs:
        assert 0 <= r.info.end_time - r.info.start_time < 3_600_000, r.data.tags["job_key"]
        if r.data.tags["rule"] not in ("train_source", "aggregate"):
            model = "models/{source}/{arch}/{tag}{eps}/s{seed}".format(**r.data.tags)
            assert r.data.tags["mlflow.parentRunId"] == by_key[model].info.run_id, r.data.tags["job_key"]
    trained = by_key["models/src/resnet8/eps0.5/s0"]
    assert trained.info.end_time > trained.info.start_time and trained.info.run_name == "eps0.5 s0"
    assert "claims.md" in {a.path for a in client.list_artifacts(by_key["report"].info.run_id)}
    far = by_key["transfer/src/resnet8/eps0.5/s0/far/mode2"]
    assert sorted((d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"])
                  for d in far.inputs.dataset_inputs) == [("far", "target"), ("src", "source")]


def test_tiny_run_has_a_provenance_record_for_every_result(tiny_run):
    report = check_tree(tiny_run / "results")
    assert report.clean and not report.not_judged, format_report(report)
    # 3 models, 8 transfers, 3 fisher, 2 representation, 6 inversions, 3 feature caches, 3 distances, the report
    assert len(report.ok) == 3 + 8 + 3 + 2 + 6 + 3 + 3 + 1


def test_tiny_rerun_plans_nothing(tiny_run):
    r = snakemake("-n", "-d", str(tiny_run), "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
                  "--config", "results=results")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


def test_tiny_rebuild_one_target_reruns_only_it_and_aggregates(tiny_run):
    target = "results/transfer/src/resnet8/eps0/s0/near/mode0/metrics.json"
    r = snakemake("all", "-n", "-d", str(tiny_run), "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
                  "--config", "results=results", "--forcerun", target)
    assert r.returncode == 0, r.stderr[-3000:]
    assert job_counts(r.stdout) == {"transfer": 1, "aggregate": 1, "track_results": 1, "track": 1, "all": 1}


def test_batch_jobs_give_the_same_results_in_fewer_jobs(tiny_run, tmp_path):
    """batch_jobs: true reruns the tiny run's mode-0 transfers (one job per model), distances (one
    job per probe) and analyses (one job per model); every number equals the one-job-per-target run's
    (same seeds, same code path)."""
    import json
    import shutil

    work = tmp_path / "batched"
    shutil.copytree(tiny_run, work, symlinks=True)
    res = "results"
    r = snakemake("--profile", "profiles/local", "--cores", "2", "-d", str(work), "--configfile",
                  str(ROOT / "tests/configs/tiny.yaml"), "--config", f"results={res}", "batch_jobs=True")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    ran = job_counts(r.stdout + r.stderr)
    assert ran["transfer_mode0_src_resnet8_eps0_s0"] == ran["transfer_mode0_src_resnet8_eps0p5_s0"] == 1
    assert ran["distances_src_resnet8_eps0_s0"] == 1 and "transfer" not in ran and "features" not in ran
    assert ran["analyses_src_resnet8_eps0p5_s0"] == ran["analyses_src_resnet8_gn1_s0"] == 1
    assert not {"fisher", "representation", "invert"} & set(ran)
    files = [f"transfer/src/resnet8/eps{e}/s0/{t}/mode0/metrics.json" for e in ("0", "0.5") for t in ("near", "far")]
    files += [f"distance/src/resnet8/eps0/s0/{d}.json" for d in ("src", "near", "far")]
    for rel in files:
        a, b = (json.loads((d / res / rel).read_text()) for d in (tiny_run, work))
        for key in ("top1", "pgd", "emd", "otdd"):
            assert a.get(key) == b.get(key), (rel, key)
        assert (work / res / rel).stat().st_mtime > (tiny_run / res / rel).stat().st_mtime  # really rerun
    analyses = ["fisher/src/resnet8/eps0.5/s0/summary.json", "representation/src/resnet8/eps0.5/s0/summary.json",
                "fisher/src/resnet8/gn1/s0/summary.json"]
    analyses += [f"invert/src/resnet8/eps0.5/s0/{m}/summary.json" for m in ("plain", "variational", "effective")]
    for rel in analyses:
        assert _content(tiny_run / res / rel) == _content(work / res / rel), rel
        assert (work / res / rel).stat().st_mtime > (tiny_run / res / rel).stat().st_mtime
    report = check_tree(work / res)  # the batched jobs recorded each target's and analysis' provenance
    assert report.clean and not report.not_judged, format_report(report)


# The only fields two runs of one config may differ in (seconds of wall-clock time).
WALL_CLOCK = {"train_time_s", "time_s", "seconds"}
# The killed run builds the paper's main chain (prepare -> train -> transfer) of the eps 0.5 model:
# a third of the tiny DAG's jobs, killed once in training and once in transfer.
KILLED_TARGETS = [f"results/transfer/src/resnet8/eps0.5/s0/{t}/mode{m}/metrics.json" for t in ("near", "far")
                  for m in (0, 2)]
# atlib.workflow.demo's runner in a child process (its own process group, so the test can kill it all).
DEMO_RUNNER = ("import sys; from pathlib import Path; from atlib.workflow.demo import run_workflow; "
               "sys.exit(run_workflow(sys.argv[1:2], 'results', Path(sys.argv[2]), tuple(sys.argv[3:]))[0])")


def _strip_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_clock(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [_strip_clock(v) for v in value]
    return value


def _content(path: Path) -> Any:
    """A result file's content, wall-clock fields aside."""
    if path.suffix == ".json":
        data = _strip_clock(json.loads(path.read_text()))
        if path.name.endswith("provenance.json"):  # hashes of json/csv outputs cover their wall-clock fields
            data["outputs"] = {k: v for k, v in data["outputs"].items() if not k.endswith((".json", ".csv"))}
        return data
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(f)]
    return path.read_bytes()


def _result_files(results: Path) -> dict[str, Path]:
    """Every job's files (logs, MLflow and the report aside)."""
    return {p.relative_to(results).as_posix(): p for top in ("data", "models", "transfer")
            for p in (results / top).rglob("*") if p.is_file()}


def _run_demo(work: Path, log: Path, kill_when: Callable[[], bool] | None, limit: float = 400) -> int | None:
    """Run the demo's runner on the tiny config in `work`; SIGKILL its whole process group once
    `kill_when()` holds (None: let it finish). Returns the exit code, or None if killed."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", DEMO_RUNNER, str(ROOT / "tests/configs/tiny.yaml"), str(work),
                                 *KILLED_TARGETS], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + limit
        while proc.poll() is None and time.time() < deadline:
            if kill_when is not None and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"demo runner still running after {limit} s: {log.read_text()[-3000:]}")
    assert kill_when is None, f"the run ended (exit {proc.returncode}) before the kill point: {log.read_text()[-3000:]}"
    return proc.returncode


def _started(work: Path, rule: str) -> Callable[[], bool]:
    """True once a job of `rule` has started (its log file exists)."""
    return lambda: any((work / "results" / "logs" / rule).rglob("*.log"))


@pytest.mark.slow
def test_killed_twice_then_rerun_equals_an_uninterrupted_run(tiny_run, tmp_path):
    """SIGKILL the whole demo runner mid-training, then mid-transfer; the third run unlocks by itself
    and ends with the same files as the uninterrupted run (tiny_run) for the jobs it ran."""
    from atlib.workflow.demo import live_snakemake

    work = tmp_path / "work"
    work.mkdir()
    for i, rule in enumerate(("train_source", "transfer")):
        assert _run_demo(work, tmp_path / f"run{i}.log", _started(work, rule)) is None
        deadline = time.time() + 10  # the kill reached every job of the group
        while live_snakemake(work) and time.time() < deadline:
            time.sleep(0.1)
        assert not live_snakemake(work)
        assert any((work / ".snakemake" / "locks").glob("*.lock")), "a killed run leaves its lock"
    assert _run_demo(work, tmp_path / "final.log", None) == 0, (tmp_path / "final.log").read_text()[-5000:]
    for log in ("run1.log", "final.log"):  # each run after a kill said it unlocked
        assert "lock is stale" in (tmp_path / log).read_text()
    ref, got = _result_files(tiny_run / "results"), _result_files(work / "results")
    assert len(got) == 5 * 3 + 4 + 4 * 3  # 5 datasets, 1 model, 4 transfers; each job's provenance.json
    assert set(got) <= set(ref), sorted(set(got) - set(ref))
    differ = [name for name in got if _content(ref[name]) != _content(got[name])]
    assert not differ, f"differ from the uninterrupted run: {differ}"


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
