"""`make bench`: run every benchmark in turn; each writes its JSON to benchmarks/results/.

Usage: python benchmarks/run_all.py [name ...]   (names: adversarial_step, autoattack, transfer_cache,
fisher, distances, recommend, numerics, demo, inversion; default all, in that order: inversion reads the demo's curves).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHES = {
    "adversarial_step": [sys.executable, str(HERE / "bench_adversarial_step.py")],
    "autoattack": [sys.executable, str(HERE / "bench_autoattack.py")],
    "transfer_cache": [sys.executable, str(HERE / "bench_transfer_cache.py")],
    "fisher": [sys.executable, str(HERE / "bench_fisher.py")],
    "distances": [sys.executable, str(HERE / "bench_distances.py")],
    # atlib.workflow.recommend's ranking (distances only): 6 candidates on a 2,000-image folder.
    "recommend": [sys.executable, str(HERE / "bench_recommend.py")],
    # Which CPU numerics settings change a small training run's bits, and at what cost.
    "numerics": [sys.executable, str(HERE / "bench_numerics.py")],
    # The whole offline demo, timed from scratch in a fresh results directory.
    "demo": [sys.executable, "-m", "atlib.workflow.demo", "--results", "results/bench_demo",
             "--measure", str(HERE / "results" / "demo.json")],
    "inversion": [sys.executable, str(HERE / "bench_inversion.py"), "--results", "results/bench_demo"],
}


def main(names: list[str]) -> None:
    failed = []
    for name in names or list(BENCHES):
        if name == "demo":
            subprocess.run(["rm", "-rf", str(ROOT / "results" / "bench_demo")], check=True)
        print(f"== bench {name}", flush=True)
        if subprocess.run(BENCHES[name], cwd=ROOT).returncode != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])
