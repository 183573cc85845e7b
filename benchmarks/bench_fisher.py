"""Diagonal Fisher of a CIFAR ResNet-18 over 512 images: torch.func vmap vs a per-sample loop.

Writes benchmarks/results/fisher.json. Both compute exact per-sample gradients; both are timed
on the same subset of images in interleaved rounds and scaled linearly to the full batch (the
JSON says so), and compared numerically. The demo's backbone (resnet8 width 0.25, 28x28x1) is
timed the same way, for contrast: there vmap wins.

Usage: python benchmarks/bench_fisher.py [--images 512] [--timed-images 64] [--rounds 3]
       [--chunk 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from record import write_record  # benchmarks/ is on sys.path when run as a script

from atlib.info.fisher import diagonal_fisher, diagonal_fisher_loop
from atlib.models.resnet import build_model

OUT = Path(__file__).resolve().parent / "results" / "fisher.json"


def timed(fns: dict, rounds: int) -> dict:
    """Per-method seconds over `rounds` interleaved rounds (the machine's load varies: the
    minimum of each method is its least-disturbed time, and every method sees the same load)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def max_rel(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)).item() for k in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--timed-images", type=int, default=64, help="images each method is timed on (then scaled)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (minimum kept)")
    ap.add_argument("--chunk", type=int, default=32, help="batch per vmap call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, width=1.0, normalization="cifar10").eval()
    n, m = args.images, min(args.timed_images, args.images)
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    xs, ys = x[:m], y[:m]
    fns = {
        "vmap": lambda: diagonal_fisher(model, xs, ys, kind="empirical", chunk=args.chunk, method="vmap"),
        "loop": lambda: diagonal_fisher_loop(model, xs, ys),
    }
    diagonal_fisher(model, x[:2], y[:2], kind="empirical", chunk=2)  # warm-up (allocator, kernels)
    diagonal_fisher_loop(model, x[:1], y[:1])
    times = timed(fns, args.rounds)
    full = {k: round(min(v) * n / m, 2) for k, v in times.items()}

    ref = fns["loop"]()
    check = {"images": m, "vmap_vs_loop": max_rel(fns["vmap"](), ref)}
    # float32 differences come from batched vs single-image convolution kernels (amplified by
    # depth); in float64 both agree to rounding, which shows vmap is exact.
    m64, x64 = build_model("resnet18", 10, 3, normalization="cifar10").double().eval(), x[:2].double()
    m64.load_state_dict(model.state_dict())
    ref64 = diagonal_fisher_loop(m64, x64, y[:2])
    check["float64_2_images_vmap_vs_loop"] = max_rel(diagonal_fisher(m64, x64, y[:2], kind="empirical"), ref64)
    demo = build_model("resnet8", 5, 1, width=0.25).eval()
    xd, yd = torch.rand(256, 1, 28, 28), torch.randint(0, 5, (256,))
    demo_times = timed({"vmap": lambda: diagonal_fisher(demo, xd, yd, kind="empirical", chunk=64),
                        "loop": lambda: diagonal_fisher_loop(demo, xd, yd)}, args.rounds)
    demo_record = {"model": "resnet8 width 0.25, 28x28x1, 5 classes (the demo's backbone)", "images": 256,
                   **{f"{k}_s": round(min(v), 3) for k, v in demo_times.items()},
                   "speedup": round(min(demo_times["loop"]) / min(demo_times["vmap"]), 2)}
    record = {
        "model": "resnet18 (CIFAR stem, width 1, 32x32x3, 10 classes)",
        "parameters": sum(p.numel() for p in model.parameters()), "images": n, "chunk": args.chunk,
        "threads": args.threads,
        "vmap_s": full["vmap"], "loop_s": full["loop"], "speedup": round(full["loop"] / full["vmap"], 2),
        "goal_speedup": 5.0,
        "timed_images": m, "scaled": m < n, "rounds_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "note": (f"each method timed on the same {m} images in {args.rounds} interleaved rounds; the minimum is "
                 f"scaled linearly to {n} images" if m < n else "each method timed on every image; minimum of rounds")
                + ". speedup = loop/vmap. Shared 2-core CPU: load from other jobs varies, see rounds_s.",
        "max_rel_diff": check,
        "demo_model": demo_record,
    }
    write_record(record, args.out)


if __name__ == "__main__":
    main()
