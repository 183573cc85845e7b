"""`python -m atlib.workflow.recommend` (distances only, no fine-tuning): 6 candidates on a 2,000-image folder.

Writes benchmarks/results/recommend.json. A finished run is faked in a temporary directory: the demo's
architecture (ResNet-8, width 0.25, 28x28 gray) at six eps, seeded random weights (timing only), the
source mnist5k (3,000 train images, of which distance.max_images 1,500 are used, as in the demo),
and mode-0 results of four targets from four base sets so that the relation is fitted as in a real
run. The folder: 10 letters (Pillow's default font) x 200 PNGs of 32x32.

Measured, each in this process after a warm-up: `cold` = preparing the folder + every candidate's
features of the source and the folder + distances + fit + outputs; `warm` = the same call again, with
the features cached per candidate. The physical floor is the forward passes alone: every candidate's
`features(x)` on the same images, already decoded and adapted in memory. Ratios are to that floor.

Usage: python benchmarks/bench_recommend.py [--threads 2] [--images 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from record import write_record  # benchmarks/ is on sys.path when run as a script

from atlib.data import AcquireContext, Prepared, adapt, prepare
from atlib.data.tensors import split_tensors
from atlib.distance.measures import extract_features
from atlib.models.checkpoint import save_model
from atlib.models.resnet import build_model

OUT = Path(__file__).resolve().parent / "results" / "recommend.json"
EPS = [0, 0.25, 0.5, 1, 2, 3]
TARGETS = {"near": 0.3, "digits": 0.9, "textures": 1.4, "shapes": 1.8}  # a fake standard-probe EMD each


def letters(root: Path, n: int, size: int = 32) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font, rng = ImageFont.load_default(), np.random.default_rng(0)
    for i in range(n):
        ch = "ABCDEFGHIJ"[i % 10]
        (root / ch).mkdir(parents=True, exist_ok=True)
        img = Image.new("L", (size, size), int(rng.integers(0, 60)))
        ImageDraw.Draw(img).text((int(rng.integers(2, 20)), int(rng.integers(2, 18))), ch, fill=255, font=font)
        img.save(root / ch / f"{i}.png")


def fake_run(root: Path) -> Path:
    """Config, prepared source, six models and the mode-0 results of four targets under `root`."""
    cfg = {"results": str(root / "results"), "device": "cpu", "distance": {"max_images": 1500},
           "datasets": {"near": {"base": "mnist5k", "classes": [5, 6, 7]}},
           "experiments": {"bench": {"source": "mnist5k", "arch": "resnet8", "width": 0.25, "eps": EPS,
                                     "targets": list(TARGETS)}}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = root / "results"
    prepare("mnist5k", res / "data" / "mnist5k", AcquireContext(root))
    rng = np.random.default_rng(0)
    for eps in EPS:
        key = f"mnist5k/resnet8/eps{eps}/s0"
        torch.manual_seed(0)
        model = build_model("resnet8", 10, 1, width=0.25)
        save_model(res / "models" / key / "model.pt", model, {"arch": "resnet8", "num_classes": 10, "in_channels": 1,
                                                              "width": 0.25, "normalization": None, "image_size": 28})
        for t, d in TARGETS.items():
            out = res / "transfer" / key / t / "mode0"
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps({"top1": 60 + 5 * eps * d + rng.normal(0, 1)}))
    for t, d in [("mnist5k", 0.0), *TARGETS.items()]:
        f = res / "distance" / "mnist5k/resnet8/eps0/s0" / f"{t}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"emd": d, "otdd": d, "otdd_exact": d, "logme": -d, "similarity": 1.0}))
    return path


def floor_s(res: Path, folder_data: Path, threads: int) -> float:
    """Every candidate's forward passes on the source's 1,500 and the folder's images, in memory."""
    from atlib.models.checkpoint import load_model

    src = split_tensors(Prepared(res / "data" / "mnist5k"), "train", limit=1500)[0]
    tgt = adapt(split_tensors(Prepared(folder_data), "train")[0], 28, 1)
    models = [load_model(res / "models" / f"mnist5k/resnet8/eps{e}/s0" / "model.pt")[0] for e in EPS]
    extract_features(models[0], src[:256])  # warm-up
    start = time.perf_counter()
    for m in models:
        extract_features(m, src)
        extract_features(m, tgt)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from atlib.workflow.recommend import recommend
    from atlib.workflow.recommend_inputs import setup

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = fake_run(root)
        letters(root / "letters_2000", args.images)
        times = {}
        for run in ("cold", "warm"):
            start = time.perf_counter()
            s, _ = setup([str(config)], str(root / "results"), str(root / "letters_2000"))
            df, why, _ = recommend(s)
            times[run] = time.perf_counter() - start
        floor = floor_s(root / "results", root / "results" / "data" / s.name, args.threads)
        n_train = Prepared(root / "results" / "data" / s.name).split_size("train")
    record = {"candidates": len(df), "folder_images": args.images, "folder_train_images_used": n_train,
              "source_images_used": 1500, "threads": args.threads, "cold_s": round(times["cold"], 2),
              "warm_s": round(times["warm"], 2), "floor_forward_passes_s": round(floor, 2),
              "cold_over_floor": round(times["cold"] / floor, 2), "warm_over_floor": round(times["warm"] / floor, 2),
              "basis": str(df["basis"].iloc[0]), "first_pick_eps": float(df["eps"].iloc[0]),
              "floor": "every candidate's features(x) on the same source and folder images, decoded and adapted "
                       "in memory (no data loading, distances, fit or writing)"}
    write_record(record, args.out)


if __name__ == "__main__":
    main()
