"""The job model (atlib.spec.jobs) is the workflow's DAG: a dry run of the demo and of the paper's grid
makes exactly the files of the model's jobs, and the report reads exactly the files `aggregate`
declares, all of them made by the DAG."""

import logging
from pathlib import Path

import pytest
import yaml
from test_workflow import planned_outputs, snakemake

from atlib.report.load import load_results
from atlib.spec import jobs
from atlib.spec.config import check_config

ROOT = Path(__file__).resolve().parent.parent
NOT_PER_MODEL = {"prepare_dataset", "aggregate", "track_results", "track", "all"}


def planned(output: str, field: str) -> dict[str, set[str]]:
    """rule -> the set of files of `field` (input or output) of its planned jobs."""
    return {rule: set(files) for rule, files in planned_outputs(output, field).items()}


@pytest.mark.parametrize("config_file", ["config/demo.yaml", "config/config.yaml"])
def test_report_reads_what_the_dag_makes(config_file, tmp_path, caplog):
    results = str(tmp_path / "results")
    r = snakemake("-n", "--configfile", config_file, "--config", f"results={results}")
    assert r.returncode == 0, r.stderr[-3000:]
    made, used = planned(r.stdout, "output"), planned(r.stdout, "input")
    per_model = {f for rule, files in made.items() if rule not in NOT_PER_MODEL for f in files}
    cfg = check_config(yaml.safe_load((ROOT / config_file).read_text()))
    cfg["results"] = results
    assert per_model == set(jobs.outputs(jobs.all_jobs(cfg), results))

    caplog.set_level(logging.ERROR, "atlib.report")  # nothing exists yet: every file is looked for
    read = {f"{results}/{rel}" for rel in load_results(cfg).inputs}
    assert read == set(jobs.report_inputs(cfg, results)) == used["aggregate"]
    assert read <= per_model
    assert set(jobs.track_inputs(cfg, results)) <= per_model | made["aggregate"]
