"""`make demo`: run the offline demo DAG, build the HTML report, say where everything is.

The terminal shows one line per finished job (rule, wildcards, seconds) with the overall progress,
and for a failed job its log's last lines (atlib.workflow.progress); each job writes everything else to its
rule's `log:` file (atlib.workflow.logs), Snakemake's full output goes to `<results>/logs/snakemake.log`.

With `--measure FILE` it also records wall time and the peak memory of the whole process
tree (all concurrent jobs together) as JSON, for `make bench`.

A demo killed mid-run (SIGKILL, power loss, the OOM killer) leaves Snakemake's lock behind:
the next run unlocks it when no Snakemake process of this directory is alive, and reruns the
jobs the kill interrupted (profiles/local sets rerun-incomplete).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

import psutil

from atlib.workflow.progress import Digest, tail
from atlib.workflow.tracking.ui import experiment_name, runs_address

ROOT = Path(__file__).resolve().parents[2]


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _drain(stream: TextIO, on_line: Callable[[str], None]) -> None:
    """Pass every line of `stream` to `on_line` until it closes."""
    while True:
        try:
            for line in stream:
                on_line(line)
            return
        except KeyboardInterrupt:
            continue  # Snakemake got the same Ctrl-C: keep reading while it stops its jobs


def run_measured(cmd: list[str], on_line: Callable[[str], None] | None = None) -> tuple[int, float, float]:
    """Run `cmd`; return (exit code, wall seconds, peak RSS of its process tree in MB).

    With `on_line`, its stdout and stderr go (merged, line by line) there instead of the terminal.
    """
    start = time.perf_counter()
    piped = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                 env={**os.environ, "PYTHONUNBUFFERED": "1"}) if on_line else {}
    proc = subprocess.Popen(cmd, cwd=ROOT, **piped)
    peak = 0
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, _tree_rss(ps))
            except psutil.Error:
                pass
            stop.wait(0.2)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    if on_line is not None:
        _drain(proc.stdout, on_line)
    code = proc.wait()
    stop.set()
    t.join()
    return code, time.perf_counter() - start, peak / 2**20


def snakemake_cmd(configs: list[str], results: str, *extra: str, workdir: Path = ROOT,
                  targets: tuple[str, ...] = (), profile: str = "profiles/local") -> list[str]:
    """Snakemake merges several config files in order (nested keys of later files win).

    Targets come first: --configfile and --config take several values and would swallow them.
    """
    where = [] if Path(workdir).resolve() == ROOT else ["--directory", str(workdir)]
    return [sys.executable, "-m", "snakemake", *targets, "--profile", profile, *where,
            "--configfile", *configs, "--config", f"results={results}", *extra]


def live_snakemake(workdir: Path) -> list[int]:
    """Pids of the processes of a Snakemake run in `workdir`: Snakemake itself or one of its jobs."""
    target, me = Path(workdir).resolve(), os.getpid()
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd, cwd = proc.info["cmdline"] or [], proc.info["cwd"]
        if proc.info["pid"] != me and cwd and Path(cwd) == target and any("snakemake" in a for a in cmd):
            pids.append(proc.info["pid"])
    return pids


def clear_stale_lock(configs: list[str], results: str, workdir: Path = ROOT) -> bool:
    """Unlock `workdir` if a killed run left its lock behind; True if it did.

    A lock held by a live run is left alone (Snakemake then says that the directory is locked).
    """
    if not any((Path(workdir) / ".snakemake" / "locks").glob("*.lock")) or live_snakemake(workdir):
        return False
    print(f"demo: the last run in {workdir} was killed (its Snakemake lock is stale: no Snakemake process "
          "is alive there); unlocking and rerunning the jobs it interrupted", flush=True)
    r = subprocess.run(snakemake_cmd(configs, results, "--unlock", workdir=workdir), cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"demo: `snakemake --unlock` failed in {workdir}:\n{(r.stdout + r.stderr)[-2000:]}")
    return True


def run_workflow(configs: list[str], results: str, workdir: Path = ROOT, targets: tuple[str, ...] = (),
                 profile: str = "profiles/local") -> tuple[int, float, float]:
    """The DAG (all, or `targets`) after a stale lock is cleared: (exit code, wall seconds, peak RSS in MB).

    Prints one line per finished job and each failure's log (atlib.workflow.progress); Snakemake's whole output
    goes to `<results>/logs/snakemake.log`, whose last lines are printed when it failed outside any job.
    """
    clear_stale_lock(configs, results, workdir)
    full = Path(workdir) / results / "logs" / "snakemake.log"
    full.parent.mkdir(parents=True, exist_ok=True)
    digest = Digest(Path(workdir))
    print(f"demo: Snakemake's full output goes to {full}", flush=True)
    with full.open("w") as copy:
        def on_line(line: str) -> None:
            copy.write(line)
            copy.flush()
            for out in digest.feed(line):
                print(out, flush=True)

        result = run_measured(snakemake_cmd(configs, results, workdir=workdir, targets=targets, profile=profile),
                              on_line)
    for out in digest.close_block():
        print(out, flush=True)
    if result[0] != 0 and not digest.failures:
        print(f"demo: Snakemake stopped (exit {result[0]}); the end of {full}:", *tail(full, 30), sep="\n  ")
    return result


def machine() -> str:
    """One line naming this machine and its numerics (CPU, ISA, torch build, pinned settings)."""
    from atlib.core.numerics import describe, summary

    return summary(describe())


def pin_numerics(configs: list[str]) -> None:
    """The config's numerics variables in this process too (the Snakefile sets them for the jobs; a
    user's own value wins), so that `machine()` names what the jobs ran with."""
    from atlib.core.numerics import apply_env
    from atlib.spec.schema import merge_files

    apply_env(merge_files(configs).get("numerics"))


def check_against_reference(claims_csv: Path, reference: Path, configs: list[str], wall: float, rss: float) -> None:
    """Print, per claim, whether this run's verdict agrees with the committed reference, and keep the
    comparison beside the claims (reference_check.csv, what `make demo-crosscheck` records)."""
    import pandas as pd

    from atlib.report.reference import check_frame, check_lines, comparable

    if not reference.exists() or not claims_csv.exists():
        print(f"demo: no reference to compare with ({reference} or {claims_csv} is missing)")
        return
    ref = pd.read_csv(reference)
    why = comparable(ref, configs)
    lines, warnings = [], [why]
    if why is None:
        check = check_frame(pd.read_csv(claims_csv), ref, machine(), round(wall, 1), round(rss, 1))
        check.to_csv(claims_csv.with_name("reference_check.csv"), index=False)
        lines, warnings = check_lines(check)
    print(f"\nverdicts against the reference ({reference}):", *lines, sep="\n  ")
    for w in warnings:
        print(f"  WARNING: {w}")


def write_measurement(measure: Path, wall: float, rss: float, configs: list[str], results: Path) -> None:
    """demo.json (time, memory, machine) and demo_claims.csv beside it, from the same run; then the
    README's generated block from both."""
    import pandas as pd

    from atlib.report.reference import reference_frame, sync_readme
    from atlib.report.robustness import robustness_finding

    measure.parent.mkdir(parents=True, exist_ok=True)
    here = machine()
    robust = results / "report" / "robustness.csv"
    measure.write_text(json.dumps({
        "wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1), "config": " ".join(configs), "machine": here,
        "robustness": robustness_finding(pd.read_csv(robust)) if robust.exists() else None}, indent=1) + "\n")
    claims = pd.read_csv(results / "report" / "claims.csv")
    reference_frame(claims, here, configs).to_csv(measure.with_name("demo_claims.csv"), index=False)
    if measure.resolve().parent == (ROOT / "benchmarks" / "results").resolve():
        sync_readme(ROOT / "README.md", measure.with_name("demo_claims.csv"), measure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", nargs="+", default=["config/demo.yaml"],
                    help="config file(s); later ones are overlays, e.g. config/demo.yaml config/demo_power.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--measure", type=Path, help="write wall_s, peak_rss_mb and the machine here, the claims "
                    "beside it (demo_claims.csv): the reference later runs are compared with")
    ap.add_argument("--reference", type=Path, default=ROOT / "benchmarks" / "results" / "demo_claims.csv",
                    help="the verdicts of record this run is compared with")
    args = ap.parse_args()
    pin_numerics(args.config)
    code, wall, rss = run_workflow(args.config, args.results)
    if code != 0:
        raise SystemExit(f"demo: snakemake failed (exit {code}); see the log named above")
    report = Path(args.results) / "report" / "report.html"
    r = subprocess.run(snakemake_cmd(args.config, args.results, "--report", str(report)), cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"demo: the HTML report failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    res = (ROOT / args.results).resolve()
    if args.measure:
        write_measurement(args.measure, wall, rss, args.config, res)
    else:
        check_against_reference(res / "report" / "claims.csv", args.reference, args.config, wall, rss)
    ui = runs_address(res, experiment_name(args.config))
    print(f"""
demo finished in {wall / 60:.1f} min (peak memory {rss:.0f} MB).
  results:      {res}
  report:       {res / 'report' / 'summary.md'}  (claims: {res / 'report' / 'claims.md'})
  HTML report:  {res / 'report' / 'report.html'}
  MLflow UI:    make ui   -> {ui}  (store: sqlite:///{res / 'mlflow.db'})
""")


if __name__ == "__main__":
    main()
