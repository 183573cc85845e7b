"""Inversion of representations: plain (Eq. 3), variational (Algorithm 1), effective (Algorithm 2).

All three solve min_r ||f_{w'}(r) - z_bar||_2 by gradient steps on the input r, from
r_0 ~ N(0.5, sigma) clamped to [0, 1], with z_bar = f_w(x) of the clean model:
    plain        w' = w                      (deterministic, Eq. 3)
    variational  w' = w + n, n ~ N(0, Sigma*) drawn ONCE before the first step
    effective    w' = w + n_k, a new n_k ~ N(0, Sigma*) at EVERY step
The paper's appendix names the algorithms the other way round in its prose; we follow the
algorithm boxes (Algorithm 1 "Variational": noise once; Algorithm 2 "Effective": noise per step).
Sigma* is the diagonal optimal posterior of the fisher rule (`atlib.info.posterior.posterior`).

The weights are perturbed through `torch.func.functional_call`; the model is never modified.

Optimizer: plain gradient descent by default, exactly the update of Algorithms 1 and 2. The
paper's claim (variational reaches plain's loss ~40x faster, Figure 2) is about this update;
Adam would rescale every pixel's step by its own gradient history and so change the very
convergence speed being compared. Adam is available (`optimizer="adam"`) for better-looking
reconstructions. Either way r is clamped to [0, 1] after each step.

The curve records, at every step k (k = 0 before any update, k = steps at the end):
    loss        mean over images of ||f_w(r_k) - z_bar||: the CLEAN model's distance, so the
                three methods are compared on the same yardstick;
    loss_noisy  the objective actually optimized, ||f_{w'}(r_k) - z_bar|| with the step's
                perturbed weights (equal to loss for plain; at k = steps, the last step's weights).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from atlib.core.io import write_json_atomic
from atlib.core.runtime import eval_mode
from atlib.info.posterior import check_sigma, draw_noise
from atlib.info.recon import load_photos, quality_summary, save_grid, save_recon

log = logging.getLogger("atlib")

METHODS = ("plain", "variational", "effective")
OPTIMIZERS = ("sgd", "adam")
# steps_to_reach thresholds, as fractions of the initial (clean) loss (summary.json's keys, see reach_summary).
REACH_FRACTIONS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)


class _Trunk(nn.Module):
    """`forward = features` (or `features_at(x, layer)`), so functional_call reaches the
    representation being inverted, not the logits."""

    def __init__(self, net: nn.Module, layer: str = "final") -> None:
        super().__init__()
        self.net = net
        self.layer = layer
        if layer != "final" and not hasattr(net, "features_at"):
            raise ValueError(f"layer {layer!r} needs a model with features_at(x, layer) (atlib's ResNet); "
                             f"{type(net).__name__} only has features(x): use layer 'final'")
        if layer != "final" and hasattr(net, "layer_names") and layer not in net.layer_names():
            raise ValueError(f"unknown layer {layer!r}: expected one of {net.layer_names()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x) if self.layer == "final" else self.net.features_at(x, self.layer)


def check_input(x: torch.Tensor, input_shape: tuple[int, int, int] | None) -> None:
    """Raise ValueError unless x is a batch (N, C, H, W) of the model's input shape."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"images have shape (C, H, W) = {tuple(x.shape[1:])} but the model expects "
                         f"{tuple(input_shape)}: resize them (atlib.data.adapt) first")


def invert(model: nn.Module, x_target: torch.Tensor, method: str = "plain", steps: int = 200, lr: float = 0.05,
           sigma: float = 0.1, sigma_star: dict[str, torch.Tensor] | None = None,
           generator: torch.Generator | None = None, optimizer: str = "sgd",
           input_shape: tuple[int, int, int] | None = None, layer: str = "final",
           progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Reconstruct images from their representations z_bar = f_w(x_target), all images at once.

    Args:
        model: a model with `.features(x)`; evaluated in eval mode, never modified.
        x_target: images (N, C, H, W) in [0, 1] whose representations are inverted.
        method: "plain", "variational" or "effective" (see the module docstring).
        steps: number of updates of r.
        lr: step size.
        sigma: std of the start r_0 ~ N(0.5, sigma) (clamped to [0, 1]).
        sigma_star: diagonal posterior variances by parameter name (needed unless plain).
        generator: CPU generator; r_0 is drawn first, then the weight noise.
        optimizer: "sgd" (the paper's plain gradient step) or "adam".
        input_shape: (C, H, W) the model expects; a mismatching x_target raises ValueError.
        layer: the representation inverted: "final" (the pooled features, Eq. 3) or an earlier
            stage's unpooled output ("layer1", ...; models with `features_at`).
        progress: show a tqdm bar.

    Returns:
        (x_hat (N, C, H, W), {"loss": [...], "loss_noisy": [...], "loss_per_image": [...],
        "loss_per_step_image": array (steps + 1, N)}) with steps + 1 curve entries (step 0 = the
        start), the final clean loss of every image, and every image's clean loss at every step.
    """
    _check_args(method, optimizer, steps, lr, sigma)
    check_input(x_target, input_shape)
    trunk = _Trunk(model, layer)
    with eval_mode(model):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {f"net.{k}": v.detach() for k, v in model.named_buffers()}
        stds = None if method == "plain" else check_sigma(sigma_star, params, method)

        def feats(p: dict[str, torch.Tensor], r: torch.Tensor) -> torch.Tensor:
            return functional_call(trunk, ({f"net.{k}": v for k, v in p.items()}, buffers), (r,))

        def dist(p: dict[str, torch.Tensor], r: torch.Tensor) -> torch.Tensor:
            return (feats(p, r) - z_bar).flatten(1).norm(dim=1)

        with torch.no_grad():
            z_bar = feats(params, x_target)
        r = (0.5 + sigma * torch.randn(x_target.shape, generator=generator)).clamp_(0, 1)
        r = r.to(x_target.device, x_target.dtype).requires_grad_(True)
        noise = draw_noise(stds, params, generator) if method == "variational" else None
        curves = _descend(dist, params, r, method, stds, noise, steps, lr, optimizer, generator, progress)
    if not np.isfinite(curves["loss"]).all() or not np.isfinite(curves["loss_noisy"]).all():
        raise ValueError("inversion loss became NaN/inf: lower lr, or check the model and Sigma*")
    return r.detach(), curves


def _check_args(method: str, optimizer: str, steps: int, lr: float, sigma: float) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if steps < 0 or lr <= 0 or sigma < 0:
        raise ValueError(f"need steps >= 0, lr > 0, sigma >= 0; got steps={steps}, lr={lr}, sigma={sigma}")


def _descend(dist: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], params: dict[str, torch.Tensor],
             r: torch.Tensor, method: str, stds: dict[str, torch.Tensor] | None,
             noise: dict[str, torch.Tensor] | None, steps: int, lr: float, optimizer: str,
             generator: torch.Generator | None, progress: bool) -> dict[str, Any]:
    """`steps` updates of r (in place) on ||f(r) - z_bar|| under the method's weights; `invert`'s curves."""
    opt = torch.optim.Adam([r], lr=lr) if optimizer == "adam" else None
    curve_clean, curve_noisy, per_step = [], [], []
    perturbed = params
    for _ in tqdm(range(steps), desc=f"invert {method}", disable=not progress, leave=False):
        if method != "plain":
            if method == "effective":
                noise = draw_noise(stds, params, generator)
            perturbed = {k: params[k] + noise[k] for k in params}
        per_image = dist(perturbed, r)
        # Sum: every image gets the gradient of its own ||.||, whatever the batch size.
        (g,) = torch.autograd.grad(per_image.sum(), r)
        curve_noisy.append(per_image.mean().item())
        if method == "plain":
            clean = per_image.detach()
        else:
            with torch.no_grad():
                clean = dist(params, r)
        curve_clean.append(clean.mean().item())
        per_step.append(clean.cpu())
        with torch.no_grad():
            if opt is None:
                r -= lr * g
            else:
                r.grad = g
                opt.step()
            r.clamp_(0, 1)
    with torch.no_grad():
        final = dist(params, r)
        curve_clean.append(final.mean().item())
        per_step.append(final.cpu())
        curve_noisy.append(dist(perturbed, r).mean().item() if method != "plain" else curve_clean[-1])
    return {"loss": curve_clean, "loss_noisy": curve_noisy, "loss_per_image": final.cpu().tolist(),
            "loss_per_step_image": torch.stack(per_step).numpy()}


def steps_to_reach(curve: list[float] | np.ndarray, level: float) -> int | None:
    """First step whose loss is <= level (None if never)."""
    hit = np.flatnonzero(np.asarray(curve, dtype=float) <= level)
    return int(hit[0]) if len(hit) else None


def speedup_vs_plain(plain: list[float] | np.ndarray, other: list[float] | np.ndarray) -> dict[str, Any]:
    """Steps `other` needs to reach the loss plain reaches after its full budget, and the ratio.

    Args:
        plain, other: loss curves (curve.csv `loss` columns), index = step.

    Returns:
        {"plain_steps", "plain_final_loss", "steps", "ratio"}; steps/ratio are None if other
        never gets there; ratio = plain_steps / max(steps, 1).
    """
    plain = np.asarray(plain, dtype=float)
    target = float(plain[-1])
    plain_steps = steps_to_reach(plain, target)  # the first step at plain's final level
    steps = steps_to_reach(other, target)
    ratio = None if steps is None else plain_steps / max(steps, 1)
    return {"plain_steps": plain_steps, "plain_final_loss": target, "steps": steps, "ratio": ratio}


def reach_summary(curve: list[float] | np.ndarray) -> dict[str, dict[str, Any]]:
    """summary.json's steps to reach each of REACH_FRACTIONS of the initial loss, and those losses.

    Keyed by the fraction (f"{f:g}": "0.5", ...), never by a loss value: the keys become MLflow
    metric names, which must be the same in every run.

    Returns:
        {"steps_to_reach": {fraction: first step at or below it, or None},
         "reach_loss": {fraction: fraction * the initial loss}}.
    """
    levels = {f"{f:g}": float(curve[0]) * f for f in REACH_FRACTIONS}
    return {"steps_to_reach": {k: steps_to_reach(curve, level) for k, level in levels.items()},
            "reach_loss": levels}


def invert_report(model_path: str | Path, fisher_path: str | Path | None, data_dir: str | Path, cfg_invert: dict,
                  method: str, seed: int, out_dir: str | Path, eps: float | None = None,
                  device: str = "auto") -> dict:
    """Invert test images and photos with one method -> images.png, curve.csv, summary.json,
    recon.npz (originals, reconstructions, per-image loss curves; see `atlib.info.recon.save_recon`).

    Args:
        model_path: a model.pt written by `checkpoint.save_model`.
        fisher_path: the model's fisher.pt (needed unless method is "plain"); its Sigma*
            (calibrated by the fisher rule's loss budget) is used as is.
        data_dir: the source dataset's prepared directory.
        cfg_invert: config["invert"] (n_images, photos, steps, lr, sigma, optimizer, layer).
        method: "plain", "variational" or "effective".
        seed: seeds the test-image choice, r_0 and the weight noise. Use the same seed for
            every method of a model: then all methods start from the same r_0.
        out_dir: where the four files go.
        eps: the model's training eps (default: the checkpoint's meta).
        device: "auto", "cpu" or "cuda".

    Returns:
        The summary dict (also written to summary.json).
    """
    import pandas as pd

    from atlib.core.runtime import pick_device
    from atlib.data import sample_images
    from atlib.info.fisher import load_fisher
    from atlib.models.checkpoint import load_model, model_eps

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    out_dir = Path(out_dir)
    dev = pick_device(device)
    model, meta = load_model(model_path)
    model.to(dev)
    eps = model_eps(meta, eps)
    sigma_star = None
    if method != "plain":
        if fisher_path is None:
            raise ValueError(f"method {method!r} needs the model's fisher.pt (run the fisher rule)")
        sigma_star = load_fisher(fisher_path)["sigma"]
    size, ch = meta["image_size"], meta["in_channels"]
    gen = torch.Generator().manual_seed(seed)
    x, _ = sample_images(data_dir, "test", cfg_invert["n_images"], size, ch, gen)
    n_test = len(x)
    photos = cfg_invert["photos"]
    if photos:
        x = torch.cat([x, load_photos(photos, size, ch)])
    layer = cfg_invert["layer"]
    log.info("%s inversion of %d images (%d photos) at layer %s, %d steps", method, len(x), len(photos), layer,
             cfg_invert["steps"])
    x_hat, curves = invert(model, x.to(dev), method, cfg_invert["steps"], cfg_invert["lr"], cfg_invert["sigma"],
                           sigma_star, gen, cfg_invert["optimizer"], input_shape=(ch, size, size),
                           layer=layer, progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": np.arange(len(curves["loss"])), "loss": curves["loss"],
                  "loss_noisy": curves["loss_noisy"]}).to_csv(out_dir / "curve.csv", index=False)
    save_grid(x, x_hat, out_dir / "images.png", f"{method} inversion, eps={eps:g}")
    save_recon(out_dir / "recon.npz", x, x_hat, np.arange(len(x)) >= n_test, curves["loss_per_step_image"])
    initial = curves["loss"][0]
    summary = {
        "method": method, "final_loss": curves["loss"][-1], "steps": int(cfg_invert["steps"]),
        **reach_summary(curves["loss"]), "initial_loss": initial, "final_loss_noisy": curves["loss_noisy"][-1],
        "final_loss_per_image": curves["loss_per_image"], "eps": eps, "n_images": len(x),
        "photos": list(photos), "optimizer": cfg_invert["optimizer"], "lr": cfg_invert["lr"],
        "layer": layer, **quality_summary(x.cpu(), x_hat.cpu(), n_test),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    log.info("final loss %.4g (initial %.4g), PSNR %.2f dB, SSIM %.3f", summary["final_loss"], initial,
             summary["psnr"], summary["ssim"])
    return summary
