"""One PGD-7 L2 adversarial training step of a CIFAR ResNet-18 (batch 128, 32x32x3) on this CPU.

Compares (a) atlib's step with the schedule defaults (bf16 autocast + channels_last),
(b) atlib's fp32 path, (c) the usual user loop: torchattacks.PGDL2 + a plain fp32 training
step, and the compute floor: (steps + 1) forward+backward passes of the model alone with
atlib's defaults. Writes benchmarks/results/adversarial_step.json.

Usage: python benchmarks/bench_adversarial_step.py [--batch 128] [--reps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atlib.models import build_model  # noqa: E402
from atlib.optim import make_optimizer  # noqa: E402
from atlib.runtime import autocast  # noqa: E402
from atlib.train import Objective, schedule_defaults, train_step  # noqa: E402
from record import write_record  # noqa: E402  (benchmarks/ is on sys.path when run)

CPU = torch.device("cpu")


def timed_round_robin(cases: dict, warmup: int, reps: int) -> dict[str, list[float]]:
    """Per-case step times, the cases interleaved rep by rep so that load from other jobs on a
    shared machine spreads over all of them instead of skewing whichever ran during it."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def ours(x: torch.Tensor, y: torch.Tensor, sched: dict, eps: float):
    net = build_model("resnet18", 10, 3, 1.0, "cifar10")
    cl = sched["channels_last"]
    if cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    objective, opt = Objective(net, eps, sched).train(), make_optimizer(net.parameters(), sched)

    def step():
        train_step(objective, opt, x, y, CPU, sched["bf16"], 1.0 / len(y))
        opt.step()

    return step


def torchattacks_loop(x: torch.Tensor, y: torch.Tensor, sched: dict, eps: float):
    from atlib.compat import import_torchvision

    import_torchvision()
    import torchattacks

    net = build_model("resnet18", 10, 3, 1.0, "cifar10")
    opt = make_optimizer(net.parameters(), sched)
    steps = sched["attack"]["steps"]
    attack = torchattacks.PGDL2(net, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

    def step():
        net.train()
        x_adv = attack(x, y)  # torchattacks puts the model in eval mode for the attack
        opt.zero_grad()
        F.cross_entropy(net(x_adv), y).backward()
        opt.step()

    return step


def floor(x: torch.Tensor, y: torch.Tensor, sched: dict, passes: int):
    net = build_model("resnet18", 10, 3, 1.0, "cifar10").to(memory_format=torch.channels_last).train()
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        for _ in range(passes):
            net.zero_grad(set_to_none=True)
            with autocast(CPU, True):
                loss = F.cross_entropy(net(x).float(), y)
            loss.backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--eps", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adversarial_step.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    base = {"batch_size": args.batch, "attack": {"norm": "l2", "steps": args.steps, "step_size_factor": 2.5}}
    sched = schedule_defaults(base)
    fp32 = schedule_defaults({**base, "bf16": False, "channels_last": False})
    cases = {
        "ours_default": ours(x, y, sched, args.eps),
        "ours_fp32": ours(x, y, fp32, args.eps),
        "torchattacks_fp32": torchattacks_loop(x, y, fp32, args.eps),
        "floor": floor(x, y, sched, args.steps + 1),
    }
    load_before = os.getloadavg()
    results = {}
    for name, times in timed_round_robin(cases, args.warmup, args.reps).items():
        best = min(times)  # the least-disturbed repetition (timeit's rule on a shared machine)
        results[name] = {"s_per_step": best, "img_per_s": args.batch / best, "times_s": times}
        print(f"{name:18s} {best:7.2f} s/step  {args.batch / best:7.1f} img/s  (all: "
              f"{', '.join(f'{t:.2f}' for t in times)})", flush=True)
    t = {k: v["s_per_step"] for k, v in results.items()}
    report = {
        "what": f"one PGD-{args.steps} L2 adversarial training step, CIFAR ResNet-18 width 1, 32x32x3, "
                f"batch {args.batch}, eps {args.eps}",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__,
                    # 1-minute load average: other jobs on a shared machine skew every number
                    "load_before": load_before[0], "load_after": os.getloadavg()[0]},
        "reps": args.reps, "warmup": args.warmup, "statistic": "min over interleaved repetitions",
        "results": results,
        "speedup_vs_torchattacks": t["torchattacks_fp32"] / t["ours_default"],
        "fp32_vs_torchattacks": t["torchattacks_fp32"] / t["ours_fp32"],
        "overhead_vs_floor": t["ours_default"] / t["floor"] - 1,
        "floor": f"{args.steps + 1} forward+backward passes (parameter gradients included), bf16 + channels_last",
        "goals": {"speedup_vs_torchattacks": ">= 3", "overhead_vs_floor": "<= 0.10"},
    }
    write_record(report, args.out, show={k: report[k] for k in ("speedup_vs_torchattacks",
                                                                "fp32_vs_torchattacks", "overhead_vs_floor")})


if __name__ == "__main__":
    main()
