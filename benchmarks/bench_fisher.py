"""Diagonal Fisher of a CIFAR ResNet-18: per-sample gradients with torch.func (vmap) vs a loop.

Writes benchmarks/results/fisher.json. The loop (one backward pass per image) is timed on a
subset and scaled linearly to the full batch when timing all of it would take too long on a
small CPU; the JSON says so. Both paths are also compared numerically on that subset.

Usage: python benchmarks/bench_fisher.py [--images 512] [--loop-images 32] [--chunk 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from atlib.fisher import diagonal_fisher, diagonal_fisher_loop
from atlib.models import build_model

OUT = Path(__file__).resolve().parent / "results" / "fisher.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--loop-images", type=int, default=32, help="images the loop is timed on (then scaled)")
    ap.add_argument("--chunk", type=int, default=32, help="vmap chunk (memory: chunk x 11M floats x ~3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, width=1.0, normalization="cifar10").eval()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.rand(args.images, 3, 32, 32)
    y = torch.randint(0, 10, (args.images,))

    diagonal_fisher(model, x[:2], y[:2], kind="empirical", chunk=2)  # warm-up (allocator, kernels)
    t = time.perf_counter()
    fast = diagonal_fisher(model, x, y, kind="empirical", chunk=args.chunk, progress=True)
    t_vmap = time.perf_counter() - t

    m = min(args.loop_images, args.images)
    diagonal_fisher_loop(model, x[:1], y[:1])
    t = time.perf_counter()
    slow = diagonal_fisher_loop(model, x[:m], y[:m])
    t_loop_subset = time.perf_counter() - t
    t_loop = t_loop_subset * args.images / m

    # Numerical agreement on the subset (vmap over the same m images).
    sub = diagonal_fisher(model, x[:m], y[:m], kind="empirical", chunk=args.chunk)
    rel = max(((sub[k] - slow[k]).abs().max() / slow[k].abs().max().clamp_min(1e-30)).item() for k in slow)
    record = {
        "model": "resnet18 (CIFAR stem, width 1, 32x32x3, 10 classes)", "parameters": n_params,
        "images": args.images, "chunk": args.chunk, "threads": args.threads,
        "vmap_s": round(t_vmap, 2), "loop_s": round(t_loop, 2), "speedup": round(t_loop / t_vmap, 2),
        "loop_timed_images": m, "loop_timed_s": round(t_loop_subset, 2),
        "loop_scaled": m < args.images,
        "note": (f"loop timed on {m} images and scaled linearly to {args.images}" if m < args.images
                 else "loop timed on every image"),
        "max_rel_diff_vmap_vs_loop": rel, "fisher_trace": float(sum(v.double().sum() for v in fast.values())),
        "goal_speedup": 5.0, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
