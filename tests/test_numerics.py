"""Numerics of a run (atlib.core.numerics): the config's ISA cap becomes environment variables that a user's
own values override, every provenance record describes the machine, and recording stays torch-free
in a process that has not imported torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atlib.core import numerics
from atlib.spec.config import check_config
from atlib.spec.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def test_isa_null_sets_nothing():
    env: dict[str, str] = {}
    assert numerics.apply_env({"isa": None}, env) == [] and env == {}
    assert numerics.apply_env(None, env) == [] and env == {}


def test_isa_avx2_sets_all_three_caps():
    env: dict[str, str] = {"PATH": "/bin"}
    assert sorted(numerics.apply_env({"isa": "avx2"}, env)) == sorted(AVX2)
    assert env == {"PATH": "/bin", **AVX2}


def test_a_variable_the_user_set_wins_over_the_config():
    env = {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
    names = numerics.apply_env({"isa": "avx2"}, env)
    assert sorted(names) == sorted(AVX2)  # declared to executors either way
    assert env == {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2"}


def test_schema_default_is_no_pinning_and_unknown_isa_is_refused():
    paper = check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    assert paper["numerics"] == {"isa": None}
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    assert "isa" in demo["numerics"]  # the demo names its choice (README: Numerics across machines)
    bad = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    bad["numerics"] = {"isa": "avx512"}
    with pytest.raises(ConfigError, match="numerics.isa"):
        check_config(bad)


def test_cpu_flags_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_1 avx avx2 fma avx512f "
                    "avx512_bf16 amx_bf16 other\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    monkeypatch.setattr(numerics, "CPUINFO", info)
    numerics.cpu.cache_clear()
    try:
        c = numerics.cpu()
    finally:
        numerics.cpu.cache_clear()
    assert c["model"] == "Test CPU 9000"
    assert c["isa"] == ["sse4_1", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]


def test_description_has_the_fields_and_names_the_setup(monkeypatch):
    import torch  # noqa: F401 - the fields torch adds

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cfg = {"numerics": {"isa": "avx2"}, "train_schedules": {"a": {"bf16": True}, "b": {"bf16": False}}}
    rec = numerics.describe(cfg)
    assert {"model", "machine", "isa"} <= set(rec["cpu"])
    assert {"version", "cpu_capability", "onednn_bf16", "threads", "build"} <= set(rec["torch"])
    assert rec["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and rec["env"]["MKL_CBWR"] is None
    assert rec["config"] == {"isa": "avx2"} and rec["bf16"]["train_schedules"] == {"a": True, "b": False}
    line = numerics.summary(rec)
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in line and "numerics.isa: avx2" in line and "bf16 autocast: train a" in line
    other = json.loads(json.dumps(rec))
    other["cpu"]["isa"] = other["cpu"]["isa"] + ["avx512_bf16"]
    assert numerics.setup_key(other) != numerics.setup_key(rec)
    other = json.loads(json.dumps(rec))
    other["env"]["OMP_NUM_THREADS"] = "7"  # threads are the config's: not a different machine
    assert numerics.setup_key(other) == numerics.setup_key(rec)


def test_recording_in_a_torch_free_process_does_not_import_torch(tmp_path):
    """Dataset preparation never imports torch; a provenance record there must not either."""
    code = f"""
import json, sys
from pathlib import Path
from atlib.spec import provenance
out = Path({str(tmp_path)!r}) / "out.txt"
out.write_text("x")
path = provenance.record([], [out], {{"results": {str(tmp_path)!r}, "numerics": {{"isa": "avx2"}}}})
print(json.dumps({{"torch": "torch" in sys.modules, "numerics": json.loads(path.read_text())["numerics"]}}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ATEN_CPU_CAPABILITY": "avx2"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["torch"] is False
    rec = got["numerics"]
    assert rec["torch"]["loaded"] is False and rec["torch"]["version"]
    assert "cpu_capability" not in rec["torch"]  # a torch-only field
    assert rec["env"]["ATEN_CPU_CAPABILITY"] == "avx2" and rec["config"] == {"isa": "avx2"}


@pytest.mark.slow
def test_the_snakefile_pins_before_jobs_start_and_the_users_variable_wins(tmp_path):
    """One tiny training job with numerics.isa avx2 and MKL_CBWR set by the user (~30 s)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in numerics.ENV_VARS}
    env["MKL_CBWR"] = "COMPATIBLE"
    target = f"{tmp_path}/results/models/src/resnet8/eps0/s0/metrics.json"
    r = subprocess.run([sys.executable, "-m", "snakemake", target, "--profile", "profiles/local", "--cores", "1",
                        "--configfile", "tests/configs/tiny.yaml", "--config", f"results={tmp_path}/results",
                        'numerics={"isa": "avx2"}'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rec = json.loads(Path(target).with_name("provenance.json").read_text())["numerics"]
    assert rec["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and rec["env"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert rec["env"]["MKL_CBWR"] == "COMPATIBLE" and rec["config"] == {"isa": "avx2"}
    assert rec["torch"]["cpu_capability"] in ("AVX2", "DEFAULT")  # capped: never AVX512
