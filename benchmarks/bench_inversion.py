"""Convergence of inversion: steps variational (and effective) inversion needs to reach the loss
plain inversion reaches after its full budget, and the ratio (the paper: ~8000 vs ~200, ~40x).

Writes benchmarks/results/inversion.json. Sources of curves, in order:
  1. --model PATH ... (with --data, the models' prepared source dataset): Fisher, then all three
     inversions of 4 test images + 3 photos, same start r_0 for every method;
  2. else the curve.csv files of a finished run under --results (results/invert/**/{method}/);
  3. else a resnet8 (width 0.25) trained here for a few seconds on sklearn digits (standard
     training only), then as in 1.
Losses are the clean model's ||f_w(r_k) - z_bar|| (curve.csv `loss`); the ratio on the
optimized objective (`loss_noisy`) is reported too.

Usage: python benchmarks/bench_inversion.py [--model m.pt ... --data results/data/src] [--results results]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from record import write_record  # benchmarks/ is on sys.path when run as a script

from atlib.info.invert import METHODS, invert, speedup_vs_plain
from atlib.info.recon import load_photos

OUT = Path(__file__).resolve().parent / "results" / "inversion.json"
PAPER_RATIO = 40.0


def compare(curves: dict[str, dict[str, list[float]]]) -> dict:
    """Speed of each non-plain method relative to plain, on the clean and the optimized loss."""
    out = {"plain_final_loss": curves["plain"]["loss"][-1], "plain_budget": len(curves["plain"]["loss"]) - 1}
    for m, c in curves.items():
        if m == "plain":
            continue
        clean = speedup_vs_plain(curves["plain"]["loss"], c["loss"])
        noisy = speedup_vs_plain(curves["plain"]["loss"], c.get("loss_noisy", c["loss"]))
        out["plain_steps"] = clean["plain_steps"]
        out[m] = {"steps": clean["steps"], "ratio": clean["ratio"], "final_loss": c["loss"][-1],
                  "steps_noisy": noisy["steps"], "ratio_noisy": noisy["ratio"]}
    return out


def from_results(results: Path) -> list[dict]:
    runs = []
    for plain in sorted(results.glob("invert/**/plain/curve.csv")):
        curves = {}
        for m in METHODS:
            f = plain.parent.parent / m / "curve.csv"
            if f.exists():
                df = pd.read_csv(f)
                curves[m] = {"loss": df["loss"].tolist(),
                             "loss_noisy": df["loss_noisy"].tolist() if "loss_noisy" in df else df["loss"].tolist()}
        if len(curves) > 1:
            runs.append({"model": str(plain.parent.parent.relative_to(results / "invert")), **compare(curves)})
    return runs


def train_digits(tmp: Path, seconds_budget: float = 30.0) -> tuple[Path, Path]:
    """A standard resnet8 (width 0.25) on sklearn digits: a stand-in when no model is given."""
    import torch.nn.functional as F

    from atlib.data import AcquireContext, Prepared, prepare
    from atlib.data.tensors import split_tensors
    from atlib.models.checkpoint import save_model
    from atlib.models.resnet import build_model

    data = tmp / "digits"
    prepare("digits", data, AcquireContext(tmp / "raw"))
    x, y = split_tensors(Prepared(data), "train")
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 1, width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    start = time.time()
    for _ in range(15):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if time.time() - start > seconds_budget:
            break
    path = tmp / "model.pt"
    save_model(path, model.eval(), {"arch": "resnet8", "num_classes": 10, "in_channels": 1, "width": 0.25,
                                    "normalization": None, "image_size": 8, "eps": 0.0})
    return path, data


def from_models(models: list[Path], data: Path, args) -> list[dict]:
    from atlib.data import sample_images
    from atlib.info.fisher import diagonal_fisher
    from atlib.info.posterior import beta_from_budget, posterior, prior_variances
    from atlib.models.checkpoint import load_model

    runs = []
    for path in models:
        model, meta = load_model(path)
        size, ch = meta["image_size"], meta["in_channels"]
        gen = torch.Generator().manual_seed(0)
        xf, _ = sample_images(data, "train", 128, size, ch, gen)
        fisher = diagonal_fisher(model, xf, kind="true", chunk=64, generator=gen)
        # Sigma* as the fisher rule sets it (atlib.info.posterior.POSTERIOR_RULE): prior lambda_l^2 = layer
        # mean w^2, beta = 4 B / k for the loss budget B.
        weights = {k: v.detach() for k, v in model.named_parameters()}
        beta = beta_from_budget(args.loss_budget, sum(w.numel() for w in weights.values()))
        sigma = posterior(fisher, beta, prior_variances(weights))
        scale = {"fisher_median": torch.cat([v.flatten() for v in fisher.values()]).median().item(),
                 "sigma_star_median": torch.cat([v.flatten() for v in sigma.values()]).median().item()}
        x, _ = sample_images(data, "test", 4, size, ch, gen)
        x = torch.cat([x, load_photos(["astronaut", "coffee", "chelsea"], size, ch)])
        curves, t0 = {}, time.time()
        for m in METHODS:
            _, c = invert(model, x, m, args.steps, args.lr, 0.1, sigma, torch.Generator().manual_seed(1),
                          args.optimizer)
            curves[m] = c
        runs.append({"model": str(path), "eps": meta.get("eps"), "inversion_s": round(time.time() - t0, 1),
                     **scale, **compare(curves)})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", default=[], help="model.pt (repeatable)")
    ap.add_argument("--data", type=Path, help="prepared source dataset of the --model files")
    ap.add_argument("--results", type=Path, default=Path("results"), help="a finished run's results directory")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--loss-budget", type=float, default=0.1, help="fisher.loss_budget (nats) that sets Sigma*")
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = {"steps": args.steps, "lr": args.lr, "loss_budget": args.loss_budget, "optimizer": args.optimizer}
    if args.model:
        if args.data is None:
            raise SystemExit("--model needs --data: the models' prepared source dataset (results/data/<source>)")
        source, runs = "models", from_models(args.model, args.data, args)
    else:
        runs = from_results(args.results)
        source, settings = f"curves under {args.results}/invert", "as in the run's config"
        if not runs:
            with tempfile.TemporaryDirectory() as tmp:
                model, data = train_digits(Path(tmp))
                source, runs = "resnet8 trained here on sklearn digits (standard training)", \
                    from_models([model], data, args)
                runs[0]["model"] = "digits resnet8 w0.25 (trained by the benchmark)"
                settings = {"steps": args.steps, "lr": args.lr, "loss_budget": args.loss_budget,
                            "optimizer": args.optimizer}
    ratios = [r["variational"]["ratio"] for r in runs if r.get("variational", {}).get("ratio") is not None]
    record = {"source": source, "settings": settings, "paper_ratio": PAPER_RATIO, "runs": runs,
              "variational_reached_plain": f"{len(ratios)}/{len(runs)}",
              "variational_ratio_median": float(pd.Series(ratios).median()) if ratios else None}
    write_record(record, args.out)


if __name__ == "__main__":
    main()
