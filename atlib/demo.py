"""`make demo`: run the offline demo DAG, build the HTML report, say where everything is.

With `--measure FILE` it also records wall time and the peak memory of the whole process
tree (all concurrent jobs together) as JSON, for `make bench`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str]) -> tuple[int, float, float]:
    """Run `cmd`; return (exit code, wall seconds, peak RSS of its process tree in MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
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
    code = proc.wait()
    stop.set()
    t.join()
    return code, time.perf_counter() - start, peak / 2**20


def snakemake_cmd(configs: list[str], results: str, *extra: str) -> list[str]:
    """Snakemake merges several config files in order (nested keys of later files win)."""
    return [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--configfile", *configs,
            "--config", f"results={results}", *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", nargs="+", default=["config/demo.yaml"],
                    help="config file(s); later ones are overlays, e.g. config/demo.yaml config/demo_power.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--measure", type=Path, help="write wall_s and peak_rss_mb here")
    args = ap.parse_args()
    code, wall, rss = run_measured(snakemake_cmd(args.config, args.results))
    if code != 0:
        raise SystemExit(f"demo: snakemake failed (exit {code}); see the log named above")
    report = Path(args.results) / "report" / "report.html"
    subprocess.run(snakemake_cmd(args.config, args.results, "--report", str(report)), cwd=ROOT, check=True)
    if args.measure:
        args.measure.parent.mkdir(parents=True, exist_ok=True)
        args.measure.write_text(json.dumps({"wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1),
                                            "config": " ".join(args.config)}, indent=1) + "\n")
    res = (ROOT / args.results).resolve()
    print(f"""
demo finished in {wall / 60:.1f} min (peak memory {rss:.0f} MB).
  results:      {res}
  report:       {res / 'report' / 'summary.md'}  (claims: {res / 'report' / 'claims.md'})
  HTML report:  {res / 'report' / 'report.html'}
  MLflow UI:    make ui   -> http://127.0.0.1:5000  (store: sqlite:///{res / 'mlflow.db'})
""")


if __name__ == "__main__":
    main()
