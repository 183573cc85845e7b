"""AutoAttack wall time per 1,000 images on the demo backbone: atlib's evaluation vs calling pyautoattack directly.

The demo's setting: ResNet-8 width 0.25 on 28x28 grayscale images, 5 classes, L2 eps 1, version custom
(APGD-CE + APGD-T, the standard version's settings), batch 250. The model is randomly initialized and the
labels are its own predictions, so every image is attacked (and nearly all survive APGD-CE: the costly
regime, where APGD-T runs on every image). Ours (`robust_eval.autoattack_accuracy`) saves its progress after each
chunk and also runs PGD on the same images for the report; both are counted, and the same-image PGD
is also timed alone so the overhead of the AutoAttack part itself shows. Ratios only. Timed in CPU
seconds of this process (one thread by default, where that is the wall time of an idle machine): on a
shared machine wall times of the same call were seen to vary 3x, CPU times by about 5%.
Writes benchmarks/results/autoattack.json.

Usage: python benchmarks/bench_autoattack.py [--images 50] [--reps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_adversarial_step import timed_round_robin  # noqa: E402  (benchmarks/ is on sys.path when run)
from record import write_record  # noqa: E402

from atlib.models.resnet import build_model  # noqa: E402
from atlib.spec.schema import schedule_defaults  # noqa: E402
from atlib.train.attacks import evaluate  # noqa: E402
from atlib.train.robust_eval import autoattack_accuracy  # noqa: E402

CPU = torch.device("cpu")
ATTACKS = ["apgd-ce", "apgd-t"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "autoattack.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet8", 5, 1, width=0.25).eval()
    x = torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    ev = schedule_defaults({"evaluation": {"eps": [1.0], "steps": 10, "attack": "autoattack", "autoattack": {
        "version": "custom", "attacks": ATTACKS, "max_images": None}}})["evaluation"]
    from pyautoattack import AutoAttack

    def direct():
        aa = AutoAttack(model, norm="L2", eps=1.0, version="standard", seed=0, device=CPU)
        aa.attacks_to_run, aa.apgd_targeted.n_target_classes = list(ATTACKS), 4
        aa.logger.setLevel(logging.WARNING)
        aa.run_standard_evaluation(x, y, batch_size=250)

    with tempfile.TemporaryDirectory() as tmp:
        runs = itertools.count()
        cases = {  # ours gets a fresh state directory per call: nothing to resume from
            "direct": direct,
            "ours": lambda: autoattack_accuracy(model, x, y, ev, "l2", CPU, 5, seed=0,
                                                state_dir=Path(tmp) / str(next(runs))),
            "same_image_pgd": lambda: evaluate(model, x, y, [1.0], 10, 1, 256, CPU),
        }
        load_before = os.getloadavg()
        times = timed_round_robin(cases, args.warmup, args.reps, time.process_time)
    best = {k: min(v) for k, v in times.items()}
    per_1000 = {k: round(v * 1000 / args.images, 2) for k, v in best.items()}
    report = {
        "what": f"AutoAttack custom ({', '.join(ATTACKS)}), L2 eps 1, demo backbone (resnet8 width 0.25, 1x28x28, "
                f"5 classes), {args.images} images whose labels are the model's predictions, batch 250",
        "machine": {"threads": args.threads, "load_before": load_before[0], "load_after": os.getloadavg()[0]},
        "reps": args.reps, "warmup": args.warmup, "clock": "process CPU time",
        "statistic": "min over interleaved repetitions", "cpu_s": times, "cpu_s_per_1000_images": per_1000,
        "ours_over_direct": round(best["ours"] / best["direct"], 3),
        "ours_without_same_image_pgd_over_direct": round((best["ours"] - best["same_image_pgd"]) / best["direct"], 3),
        "goal": {"ours_over_direct": "<= 1.05 (AutoAttack part)"},
    }
    write_record(report, args.out, show={k: report[k] for k in ("cpu_s_per_1000_images", "ours_over_direct",
                                                                "ours_without_same_image_pgd_over_direct")})


if __name__ == "__main__":
    main()
