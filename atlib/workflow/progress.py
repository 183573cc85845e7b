"""Snakemake's terminal output condensed for `make demo`: one line per finished job and a failure's log.

Snakemake prints a block per job start (rule, jobid, wildcards, log, ...), `Finished jobid: N` and
`k of n steps (p%) done` when one ends, and an `Error in rule` block when one fails. `Digest` reads
those lines as they come and returns what the user needs: `12/65 jobs  rule  wildcards  41 s`, and
for a failure the job's log path and last lines. Everything else stays in the full copy of the stream
(atlib.workflow.demo writes it to a file).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

START = re.compile(r"^(?:local)?(?:rule|checkpoint) (?P<rule>\w+):$")
ERROR = re.compile(r"^Error in rule (?P<rule>\w+):$")
FIELD = re.compile(r"^\s+(?P<key>jobid|wildcards|log): (?P<value>.*)$")
FINISHED = re.compile(r"^Finished jobid: (?P<jobid>\d+)")
STEPS = re.compile(r"^(?P<done>\d+) of (?P<total>\d+) steps \(.*\) done$")
TOTAL = re.compile(r"^total\s+(?P<total>\d+)$")
# Snakemake appends this to a failed job's log paths.
LOG_HINT = " (check log file(s) for error details)"
LOG_LINES = 20


@dataclass
class Step:
    """One step of Snakemake's progress: a job as Snakemake announced it (rule, jobid, wildcards, log)."""

    rule: str
    started: float
    jobid: str = ""
    wildcards: str = ""
    log: str = ""


def tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    """The last `lines` lines of a text file; a carriage-return redrawn line (tqdm) as its last state."""
    try:
        text = path.read_bytes().decode(errors="replace")  # bytes: read_text would split lines at "\r"
    except OSError as err:
        return [f"(cannot read it: {err.strerror})"]
    return [ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in text.rstrip("\n").split("\n")[-lines:]]


class Digest:
    """Feed Snakemake's output line by line (`feed`); print what it returns."""

    def __init__(self, workdir: Path = Path("."), clock: Callable[[], float] = time.monotonic) -> None:
        self.workdir, self.clock = Path(workdir), clock
        self.jobs: dict[str, Step] = {}  # started and not finished, by jobid
        self.finished: list[Step] = []  # finished, waiting for their `k of n steps` line
        self.block: Step | None = None  # the start or error block being read
        self.failing = False  # whether `block` is an error block
        self.failures = 0

    def feed(self, line: str) -> list[str]:
        """The lines to print for one line of Snakemake's output (most often none)."""
        line = line.rstrip("\n")
        if self.block is not None and line[:1].isspace():  # a field of the block (or a continued one)
            if field := FIELD.match(line):
                self._field(field["key"], field["value"])
            return []
        out = self.close_block()
        if m := START.match(line):
            self.block, self.failing = Step(m["rule"], self.clock()), False
        elif m := ERROR.match(line):
            self.block, self.failing = Step(m["rule"], self.clock()), True
        elif m := FINISHED.match(line):
            job = self.jobs.pop(m["jobid"], None)
            if job is not None:
                self.finished.append(job)
        elif m := STEPS.match(line):
            out.append(self._done(int(m["done"]), int(m["total"])))
        elif m := TOTAL.match(line):
            out.append(f"{m['total']} jobs to run")
        elif line.startswith("Nothing to be done"):
            out.append("nothing to run: every result is up to date")
        return out

    def close_block(self) -> list[str]:
        """End the block being read (its fields are complete); the failure report if it was an error."""
        block, self.block = self.block, None
        if block is None:
            return []
        if not self.failing:
            self.jobs[block.jobid] = block
            return []
        return self._failure(block)

    def _field(self, key: str, value: str) -> None:
        assert self.block is not None
        if key == "log":
            value = value.removesuffix(LOG_HINT)
        setattr(self.block, key, value)

    def _done(self, done: int, total: int) -> str:
        """`12/65 jobs  rule  wildcards  41 s` for the job that just finished."""
        progress = f"{done:>{len(str(total))}}/{total} jobs"
        if not self.finished:
            return progress
        job = self.finished.pop(0)
        return "  ".join(filter(None, [progress, job.rule, job.wildcards, f"{self.clock() - job.started:.0f} s"]))

    def _failure(self, error: Step) -> list[str]:
        """What failed (rule, wildcards), after how long, its log's path and last lines."""
        self.failures += 1
        job = self.jobs.pop(error.jobid, error)
        head = "  ".join(filter(None, ["FAILED", error.rule, job.wildcards, f"after {self.clock() - job.started:.0f} s"]))
        logs = [p for p in error.log.split(", ") if p] or [p for p in job.log.split(", ") if p]
        if not logs:
            return [head, "  (the rule has no log file)"]
        out = [head]
        for log in logs:
            path = self.workdir / log
            out += [f"  log: {path}", *(f"  | {ln}" for ln in tail(path))]
        return out
