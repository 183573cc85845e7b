"""The repository's own consistency: the conda environment pins the venv's torch, the Snakemake
files pass `snakefmt --check` and `snakemake --lint`, no function in atlib is over 80 lines."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# Snakemake runs the jobs from outside the conda environment: the environment needs what jobs import.
NOT_IN_JOBS = {"snakemake", "snakemake-executor-plugin-slurm"}
# The longest function the library may have: one idea per function, readable in one screen.
MAX_FUNCTION_LINES = 80


def _name(req: str) -> str:
    """A requirement's normalized project name (`Jinja2` -> `jinja2`, `a_b` -> `a-b`)."""
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """{name: version} of the `name==version` requirements among `lines`."""
    pins = {}
    for line in lines:
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[_name(line)] = exact[0]
    return pins


def conda_env() -> tuple[list[str], list[str]]:
    """(conda packages, pip requirements) of envs/atlib.yaml."""
    deps = yaml.safe_load((ROOT / "envs" / "atlib.yaml").read_text())["dependencies"]
    pip = [r for d in deps if isinstance(d, dict) for r in d.get("pip", [])]
    return [d for d in deps if isinstance(d, str)], pip


def test_conda_env_pins_the_torch_the_venv_pins():
    conda, pip = conda_env()
    constraints = [ln.split("#")[0].strip() for ln in (ROOT / "envs" / "constraints.txt").read_text().splitlines()]
    pinned = _pins([c for c in constraints if c])
    assert {"torch", "torchvision"} <= set(pinned)
    env = _pins(pip)
    assert {k: env.get(k) for k in ("torch", "torchvision")} == {k: pinned[k] for k in ("torch", "torchvision")}
    make = re.findall(r"\btorch==([\w.+]+)", (ROOT / "Makefile").read_text())
    assert make and set(make) == {pinned["torch"]}
    # One torch only: a conda pytorch (or a conda package built on it) would sit beside pip's.
    assert not {"pytorch", "pytorch-cuda", "torchvision", "timm"} & {re.split(r"[<>=! ]", c)[0] for c in conda}


def test_conda_env_has_every_dependency_of_the_jobs():
    conda, pip = conda_env()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    have = {re.sub(r"[-_.]+", "-", re.split(r"[<>=! ]", c)[0]).lower() for c in conda} | {_name(p) for p in pip}
    missing = {_name(d) for d in deps} - NOT_IN_JOBS - have
    assert not missing, f"in pyproject.toml's dependencies but not in envs/atlib.yaml: {sorted(missing)}"


def _tool(name: str) -> str:
    """The console script `name` of this environment (else on PATH); the test is skipped without it."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


# What a training or transfer job imports and builds: its modules, those of the analyses it may run and
# what the scripts use around them (logs, live tracking, provenance), its typed schedules, the defaults
# of the config sections it reads.
JOB_CODE = """
import importlib, json, pkgutil, sys
import atlib.distance, atlib.info
names = ["atlib.train.source", "atlib.transfer.finetune", "atlib.train.imported", "atlib.workflow.logs",
         "atlib.workflow.tracking.live", "atlib.spec.provenance"]
for pkg in (atlib.info, atlib.distance):
    names += [m.name for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
from atlib.spec.schema import section_defaults
from atlib.spec.settings import FinetuneSchedule, TrainSchedule
TrainSchedule.from_config({"epochs": 1})
FinetuneSchedule.from_config({"epochs": 1})
section_defaults({"kind": "robustness", "file": "m.pt"}, "source_model")
for section in ("fisher", "representation", "invert", "distance"):
    section_defaults({}, section)
print(json.dumps({"jobs": names, "loaded": sorted(sys.modules)}))
"""


def test_jobs_do_not_import_snakemake():
    """Jobs run in envs/atlib.yaml, which has no Snakemake (NOT_IN_JOBS): nothing a job imports or
    builds may load it."""
    r = subprocess.run([sys.executable, "-c", JOB_CODE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert {"atlib.info.fisher", "atlib.distance.measures"} <= set(out["jobs"])
    assert {"atlib.train.source", "atlib.transfer.finetune", "jsonschema"} <= set(out["loaded"])
    banned = [m for m in out["loaded"] if m.split(".")[0].replace("_", "-") in NOT_IN_JOBS]
    assert not banned, banned


def test_snakemake_files_are_formatted():
    """snakefmt (settings in pyproject.toml) would change no rule file; `snakefmt FILE` fixes one."""
    r = subprocess.run([_tool("snakefmt"), "--check", "--compact-diff", "Snakefile", "workflow", "tests/workflows"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]


@pytest.mark.parametrize("config", ["config/demo.yaml", "config/config.yaml"])
def test_snakemake_lint_is_clean(config, tmp_path):
    """`snakemake --lint` finds nothing in the workflow as either config expands it."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", config,
                        "--config", f"results={tmp_path}/results"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    titles = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("Lints for", "    * "))]
    assert r.returncode == 0 and not titles, "\n".join(titles) or (r.stdout + r.stderr)[-3000:]


def test_no_library_function_is_longer_than_a_screen():
    long = []
    for path in sorted((ROOT / "atlib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these:\n" + "\n".join(long)
