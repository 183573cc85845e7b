"""Mode-0 transfer of a CIFAR ResNet-18: epoch time with the cached trunk outputs vs full forward passes.

Writes benchmarks/results/transfer_mode0_cache.json. Both runs go through `atlib.transfer.finetune.transfer`
with the same source model, target and seed, differing only in finetune `cache_features`
("never" vs "always"). An epoch's time is the history's `time_s`: the training pass plus the
per-epoch test top-1. The one-off cache build is reported separately (train_time_s minus the
epochs) and amortized over the run's epochs and over the paper's 120-epoch CIFAR schedule.

Data: random-but-fixed images (uint8, numpy seed 0, 10 classes), 32x32x3; only timing is measured
here, the epoch-1 test top-1 of both runs is listed to show both paths compute the same thing.

Usage: python benchmarks/bench_transfer_cache.py [--train 2000] [--test 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from record import write_record  # benchmarks/ is on sys.path when run as a script

from atlib.core.runtime import pick_device
from atlib.data import Arrays, Prepared, write_prepared
from atlib.models.adapter import tail_split
from atlib.models.checkpoint import save_model
from atlib.models.resnet import build_model
from atlib.spec.settings import FinetuneSchedule
from atlib.transfer.cache import cache_nbytes
from atlib.transfer.finetune import transfer
from atlib.transfer.inputs import Split

OUT = Path(__file__).resolve().parent / "results" / "transfer_mode0_cache.json"
KEY = "cifar10/resnet18/eps0/s0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--plain-epochs", type=int, default=3)
    ap.add_argument("--cached-epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sched = {"batch_size": 128, "lr": 0.01, "lr_schedule": "cosine", "bf16": True, "channels_last": True,
             "evaluation": {"eps": [0.5], "steps": 1, "max_images": 1}}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        n = args.train + args.test
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        data = root / "data" / "target"
        write_prepared(Arrays(x[:args.train], y[:args.train], x[args.train:], y[args.train:]), data, "target",
                       10, 32, 3, "random-but-fixed (numpy seed 0)")
        torch.manual_seed(0)
        model = build_model("resnet18", 10, 3, width=1.0, normalization="cifar10")
        path = root / "models" / KEY / "model.pt"
        save_model(path, model, {"arch": "resnet18", "num_classes": 10, "in_channels": 3, "width": 1.0,
                                 "normalization": "cifar10", "image_size": 32})

        runs = {}
        for name, policy, epochs in (("plain", "never", args.plain_epochs), ("cached", "always", args.cached_epochs)):
            out = root / name
            m = transfer(path, data, out, mode=0, seed=0, device=args.device, threads=args.threads,
                         schedule=FinetuneSchedule.from_config({**sched, "epochs": epochs, "cache_features": policy}))
            hist = pd.read_csv(out / "history.csv")
            runs[name] = {"metrics": m, "epoch_s": hist["time_s"].tolist(), "top1_epoch1": hist["test_top1"][0],
                          "outside_epochs_s": m["train_time_s"] - float(hist["time_s"].sum())}
        dev = pick_device(args.device)
        probe = Split(Prepared(data), "train", 32, 3).batch(torch.arange(2), torch.device("cpu"), False)[0]
        model = model.to(dev).to(memory_format=torch.channels_last)
        split, _ = tail_split(model, probe.to(dev))
        nbytes = cache_nbytes(model, split, probe, n, dev, True, True)

    # Median epoch: the first epoch of each run pays one-off warm-up (allocator, kernel selection).
    plain = float(np.median(runs["plain"]["epoch_s"]))
    cached = float(np.median(runs["cached"]["epoch_s"]))
    build = runs["cached"]["outside_epochs_s"]

    def amortized(epochs: int) -> dict:
        p, c = epochs * plain, build + epochs * cached
        return {"epochs": epochs, "plain_total_s": round(p, 2), "cached_total_s": round(c, 2),
                "speedup": round(p / c, 2)}

    record = {
        "model": "resnet18 (CIFAR stem, width 1, 32x32x3), mode 0 (head + last BN)",
        "data": f"random-but-fixed uint8 images (numpy seed 0), {args.train} train / {args.test} test, 10 classes",
        "device": str(dev), "threads": args.threads, "bf16": True, "channels_last": True, "batch_size": 128,
        "epoch_definition": "training pass + per-epoch test top-1 (history time_s), median over epochs",
        "plain_epoch_s": round(plain, 3), "cached_epoch_s": round(cached, 4), "speedup": round(plain / cached, 1),
        "plain_epochs_s": [round(t, 3) for t in runs["plain"]["epoch_s"]],
        "cached_epochs_s": [round(t, 4) for t in runs["cached"]["epoch_s"]],
        "cache_build_s": round(build, 2), "cache_bytes": int(nbytes),
        "amortized": amortized(args.cached_epochs), "amortized_paper_120_epochs": amortized(120),
        # Same seed, data order and lr in epoch 1: both paths should agree (random labels: ~10%).
        "epoch1_test_top1": {k: runs[k]["top1_epoch1"] for k in runs},
        "goal_speedup": 20, "meets_goal": plain / cached >= 20,
    }
    write_record(record, args.out)


if __name__ == "__main__":
    main()
