"""Cost of each task distance per (probe, target), and our diagonal Fisher against its peers.

Writes benchmarks/results/distances.json. Two probes: the demo's backbone (resnet8 width 0.25,
28x28x1) and a CIFAR-shaped ResNet-18 (32x32x3), on random images (the cost does not depend on
the content). Per measure: seconds for one (source, target) pair, Task2Vec counted for both
datasets' embeddings (head fit + Fisher). Then the Monte Carlo diagonal Fisher (one sampled label
per image, BN in eval mode) of the same model and images by ours (torch.func vmap and the
per-sample loop), BackPACK's DiagGGNMC and nngeometry's FIM_MonteCarlo: ratios to the fastest,
minimum of interleaved rounds. BackPACK needs its fx converter for the residual additions.

Usage: python benchmarks/bench_distances.py [--threads 1] [--rounds 2] [--fisher-images 32]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from bench_fisher import timed  # benchmarks/ is on sys.path when run as a script
from record import write_record
from torch import nn

from atlib.distance.measures import emd_distance, extract_features, logme, otdd_distance, otdd_exact
from atlib.info.fisher import diagonal_fisher
from atlib.info.task2vec import distance as task2vec_distance
from atlib.info.task2vec import embedding, fit_head
from atlib.models.resnet import build_model

OUT = Path(__file__).resolve().parent / "results" / "distances.json"
PROBES = {  # name: (arch, width, channels, size, classes, images with features, Task2Vec images)
    "demo resnet8 w0.25 28x28x1": ("resnet8", 0.25, 1, 28, 5, 1500, 200),
    "cifar resnet18 32x32x3": ("resnet18", 1.0, 3, 32, 10, 500, 64),
}


def _clock(fn) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def distance_costs(model: nn.Module, channels: int, size: int, k: int, n: int, n_t2v: int) -> dict:
    """Seconds per (source, target) pair of each measure, on features of n random images each."""
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.rand(n, channels, size, size, generator=g), torch.rand(n, channels, size, size, generator=g)
    ys, yt = np.arange(n) % k, np.arange(n) % k
    (fs, ft), t_feat = _clock(lambda: (extract_features(model, xs), extract_features(model, xt)))
    cost = {"features_both_s": t_feat}

    def class_means(f, y):
        return np.stack([f[y == c].mean(0) for c in range(k)]), np.bincount(y)

    _, cost["emd_s"] = _clock(lambda: emd_distance(*class_means(fs, ys), *class_means(ft, yt)))
    _, cost["otdd_s"] = _clock(lambda: otdd_distance(fs, ys, ft, yt))
    _, cost["otdd_exact_s"] = _clock(lambda: otdd_exact(fs, ys, ft, yt))
    _, cost["logme_s"] = _clock(lambda: logme(ft, yt))

    embedding(model, fit_head(fs, ys), xs[:2])  # warm-up: the first vmap call pays for its set-up

    def t2v():
        e = [embedding(model, fit_head(f, y), x[:n_t2v]) for f, y, x in ((fs, ys, xs), (ft, yt, xt))]
        return task2vec_distance(*e)

    _, cost["task2vec_s"] = _clock(t2v)
    return {"images": n, "task2vec_images": n_t2v, **{k: round(v, 3) for k, v in cost.items()}}


def fisher_peers(model: nn.Module, x: torch.Tensor, rounds: int) -> dict:
    """Seconds of the Monte Carlo diagonal Fisher by each library on the same model and images."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNMC
    from nngeometry.metrics import FIM_MonteCarlo
    from nngeometry.object import PMatDiag

    bp_model = extend(copy.deepcopy(model), use_converter=True).eval()  # the converter rewrites in place
    loss = extend(nn.CrossEntropyLoss(reduction="sum"))

    def bp():
        bp_model.zero_grad()
        with backpack(DiagGGNMC(mc_samples=1)):
            out = bp_model(x)
            loss(out, out.argmax(1).detach()).backward()  # DiagGGNMC samples its own labels
        return [p.diag_ggn_mc for p in bp_model.parameters()]

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                         batch_size=len(x))
    fns = {
        "ours_vmap": lambda: diagonal_fisher(model, x, kind="true", chunk=32, method="vmap"),
        "ours_loop": lambda: diagonal_fisher(model, x, kind="true", method="loop"),
        "backpack_diaggngmc": bp,
        "nngeometry_fim_mc": lambda: FIM_MonteCarlo(model, loader, PMatDiag, trials=1).get_diag(),
    }
    for fn in fns.values():  # warm-up (allocator, kernels, fx conversion)
        fn()
    best = {k: min(v) for k, v in timed(fns, rounds).items()}
    fastest = min(best.values())
    return {"images": len(x), "ratio_to_fastest": {k: round(v / fastest, 2) for k, v in best.items()},
            "fastest": min(best, key=best.get)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="1: the demo's jobs run single-threaded")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved Fisher timing rounds (minimum kept)")
    ap.add_argument("--fisher-images", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    record = {"threads": args.threads, "probes": {}}
    for name, (arch, width, ch, size, k, n, n_t2v) in PROBES.items():
        torch.manual_seed(0)
        model = build_model(arch, k, ch, width=width).eval()
        x = torch.rand(args.fisher_images, ch, size, size, generator=torch.Generator().manual_seed(1))
        record["probes"][name] = {"per_pair": distance_costs(model, ch, size, k, n, n_t2v),
                                  "fisher_peers": fisher_peers(model, x, args.rounds)}
    record["note"] = ("per_pair: seconds for one (source, target) pair on random images; Task2Vec counts both "
                      "embeddings (in a job the source's is computed once). fisher_peers: Monte Carlo diagonal "
                      "Fisher, one label sample per image, minimum of interleaved rounds, ratio to the fastest. "
                      "Shared 2-core CPU: absolute seconds vary with load, ratios less. No GPU was available.")
    write_record(record, args.out)


if __name__ == "__main__":
    main()
