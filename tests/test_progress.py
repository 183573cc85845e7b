"""The demo's quiet terminal: Snakemake's output condensed to one line per job (atlib.workflow.progress), and
every job's own output in its log file (atlib.workflow.logs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from atlib.workflow.demo import run_measured
from atlib.workflow.progress import LOG_LINES, Digest

ROOT = Path(__file__).resolve().parent.parent

# Two jobs that print (to the terminal, as a job that does not use atlib.workflow.logs would) and a third that
# fails after writing 30 lines and a tqdm-style redrawn line to its log.
SNAKEFILE = r'''
rule all:
    input: expand("out/{x}.txt", x=["a", "b"]), "out/c.txt"

rule make:
    output: "out/{x}.txt"
    log: "logs/{x}.log"
    shell: "echo chatter from {wildcards.x}; sleep 1; echo done > {output}"

rule fail:
    input: "out/a.txt"
    output: "out/c.txt"
    log: "logs/c.log"
    shell: "(seq 1 30; printf 'bar 10%%\rbar 90%%\n'; echo broken >&2; exit 3) > {log} 2>&1"
'''


def _digest_of_a_run(tmp_path: Path) -> tuple[int, list[str]]:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    digest, printed = Digest(tmp_path), []
    cmd = [sys.executable, "-m", "snakemake", "-c2", "-d", str(tmp_path), "-s", str(tmp_path / "Snakefile"),
           "--show-failed-logs", "--printshellcmds"]
    code = run_measured(cmd, lambda line: printed.extend(digest.feed(line)))[0]
    return code, printed + digest.close_block()


def test_a_run_prints_one_line_per_job_and_the_failed_jobs_log(tmp_path):
    code, lines = _digest_of_a_run(tmp_path)
    assert code != 0
    assert lines[0] == "4 jobs to run"
    done = [ln for ln in lines if re.match(r"^\d/4 jobs", ln)]
    assert sorted(re.sub(r"\d+ s$", "N s", ln.split("  ", 1)[1]) for ln in done) == ["make  x=a  N s", "make  x=b  N s"]
    assert all(re.search(r"  \d+ s$", ln) for ln in done)
    failed = lines.index(next(ln for ln in lines if ln.startswith("FAILED")))
    assert re.fullmatch(r"FAILED  fail  after \d+ s", lines[failed])
    assert lines[failed + 1] == f"  log: {tmp_path / 'logs' / 'c.log'}"
    log = lines[failed + 2:failed + 2 + LOG_LINES]
    assert log[-2:] == ["  | bar 90%", "  | broken"]  # the redrawn line as it ended
    assert log[0] == f"  | {30 - LOG_LINES + 3}" and len(log) == LOG_LINES
    # Nothing else: not the jobs' chatter, not Snakemake's job blocks.
    assert len(lines) == 1 + len(done) + 2 + LOG_LINES and not any("chatter" in ln for ln in lines)


def test_lines_from_captured_output_with_a_fake_clock():
    """Snakemake 9's own words, two jobs overlapping: each line names its job and its duration."""
    stream = """Job stats:
job      count
-----  -------
train        2
total        2

[Sun Nov 29 18:45:30 2026]
rule train:
    output: m/s0.pt
    log: logs/s0.log
    jobid: 1
    reason: Missing output files: m/s0.pt
    wildcards: seed=0
    resources: tmpdir=/tmp

[Sun Nov 29 18:45:31 2026]
rule train:
    output: m/s1.pt
    log: logs/s1.log
    jobid: 2
    wildcards: seed=1
    resources: tmpdir=/tmp
[Sun Nov 29 18:45:40 2026]
Finished jobid: 2 (Rule: train)
1 of 2 steps (50%) done
[Sun Nov 29 18:45:41 2026]
Finished jobid: 1 (Rule: train)
2 of 2 steps (100%) done
"""
    now = iter(range(1000))
    digest = Digest(clock=lambda: next(now))
    lines = [out for line in stream.splitlines() for out in digest.feed(line)]
    # The clock ticks once per job start and once per progress line: jobs start at 0 and 1.
    assert lines == ["2 jobs to run", "1/2 jobs  train  seed=1  1 s", "2/2 jobs  train  seed=0  3 s"]


def test_job_output_goes_to_the_log_file_and_the_terminal_is_restored(tmp_path):
    """print, tqdm, logging, a child process and a traceback land in the log; the terminal gets none."""
    log = tmp_path / "job.log"
    code = f"""
import os, sys
from tqdm import tqdm
from atlib.workflow.logs import job_logging
try:
    with job_logging({str(log)!r}) as log:
        print("printed")
        log.info("logged")
        for _ in tqdm(range(3), desc="bar"):
            pass
        os.system("echo from-a-child")
        raise ValueError("boom")
except ValueError:
    print("after the job")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "after the job\n" and r.stderr == ""
    text = log.read_text()
    for expect in ("printed", "INFO logged", "bar: 100%", "from-a-child", "ERROR job failed", "ValueError: boom"):
        assert expect in text, expect


def test_every_job_script_logs_to_its_rule_log():
    """Every rule has a log: (snakemake --lint checks it, tests/test_lint.py); every script writes to it."""
    scripts = sorted((ROOT / "workflow" / "scripts").glob("*.py"))
    assert scripts
    missing = [s.name for s in scripts if "job_logging(sm.log[0])" not in s.read_text()]
    assert not missing, missing
