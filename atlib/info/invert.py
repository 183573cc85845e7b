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

log = logging.getLogger("atlib")

METHODS = ("plain", "variational", "effective")
OPTIMIZERS = ("sgd", "adam")
# steps_to_reach thresholds, as fractions of the initial (clean) loss.
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


# Identical images have MSE 0 and PSNR +inf; report this finite ceiling instead (an MSE of 1e-10
# on [0, 1] images), so means over images and JSON stay finite.
PSNR_CAP = 100.0


def image_quality(original: torch.Tensor, recon: torch.Tensor) -> dict[str, list[float]]:
    """PSNR [dB] and SSIM of every reconstruction against its original (pixels in [0, 1]).

    Args:
        original, recon: (N, C, H, W) images in [0, 1].

    Returns:
        {"psnr": [N floats, capped at PSNR_CAP], "ssim": [N floats]}. SSIM uses scikit-image's
        uniform window of 7 pixels (fits 28x28 and 32x32 images; shrunk to the largest odd size
        that fits smaller ones), channels averaged.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if original.shape != recon.shape or original.dim() != 4:
        raise ValueError(f"need two (N, C, H, W) batches of one shape, got {tuple(original.shape)} and "
                         f"{tuple(recon.shape)}")
    a = original.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    b = recon.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    side = min(a.shape[1:3])
    if side < 3:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[2]} pixels are too small for SSIM (need >= 3)")
    win = min(7, side if side % 2 else side - 1)
    psnr, ssim = [], []
    for x, y in zip(a, b):
        with np.errstate(divide="ignore"):
            p = peak_signal_noise_ratio(x, y, data_range=1.0)
        psnr.append(float(min(p, PSNR_CAP)))
        ssim.append(float(structural_similarity(x, y, data_range=1.0, win_size=win, channel_axis=2)))
    return {"psnr": psnr, "ssim": ssim}


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_recon(path: str | Path, original: torch.Tensor, recon: torch.Tensor, photo: np.ndarray,
               loss_per_step: np.ndarray) -> None:
    """recon.npz: `original`, `recon` (N, C, H, W) uint8; `photo` (N,) bool (True = a photo, else a
    test image); `loss` (steps + 1, N) float32, every image's clean loss per step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, original=_to_uint8(original), recon=_to_uint8(recon), photo=np.asarray(photo, bool),
                            loss=np.asarray(loss_per_step, np.float32))


def load_recon(path: str | Path) -> dict[str, np.ndarray]:
    """A recon.npz as float images in [0, 1] (`original`, `recon`), `photo` mask and `loss` curves."""
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    for k in ("original", "recon"):
        out[k] = out[k].astype(np.float32) / 255.0
    return out


def _quality_summary(x: torch.Tensor, x_hat: torch.Tensor, n_test: int) -> dict[str, Any]:
    """psnr/ssim (means) and per-image lists for the test images, photo_* the same for photos."""
    q = image_quality(x, x_hat)
    out: dict[str, Any] = {}
    for prefix, sl in (("", slice(0, n_test)), ("photo_", slice(n_test, None))):
        for m in ("psnr", "ssim"):
            vals = q[m][sl]
            out[f"{prefix}{m}"] = float(np.mean(vals)) if vals else None
            out[f"{prefix}{m}_per_image"] = vals
    return out


# ---------------------------------------------------------------------------------------------
# Photos and the invert rule
# ---------------------------------------------------------------------------------------------

def load_photos(names: list[str], image_size: int, channels: int) -> torch.Tensor:
    """scikit-image photos, center-cropped square, resized and converted to the model's input.

    Args:
        names: functions of `skimage.data` (e.g. astronaut, coffee, chelsea).
        image_size, channels: the model's input (1 channel: luminance, 3: RGB).

    Returns:
        (len(names), channels, image_size, image_size) float in [0, 1].
    """
    import skimage.color
    import skimage.data

    from atlib.data import adapt

    out = []
    for name in names:
        fn = getattr(skimage.data, name, None)
        if not callable(fn) or name.startswith("_"):
            raise ValueError(f"unknown scikit-image photo {name!r}; e.g. astronaut, coffee, chelsea, camera")
        img = np.asarray(fn())
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        if channels == 1:
            img = skimage.color.rgb2gray(img) if img.ndim == 3 else img / (255.0 if img.max() > 1 else 1.0)
            img = img[..., None]
        elif img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2) / (255.0 if img.max() > 1 else 1.0)
        elif img.dtype == np.uint8:
            img = img / 255.0
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
        out.append(adapt(t, image_size, channels).clamp(0, 1))
    return torch.cat(out)


def save_grid(original: torch.Tensor, recon: torch.Tensor, path: str | Path, title: str) -> None:
    """Two rows: originals on top, reconstructions below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(original)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.9), squeeze=False)
    for row, (imgs, label) in enumerate([(original, "original"), (recon, "reconstruction")]):
        for i in range(n):
            ax = axes[row][i]
            img = imgs[i].detach().cpu().permute(1, 2, 0).numpy().clip(0, 1)
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                      vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def invert_report(model_path: str | Path, fisher_path: str | Path | None, data_dir: str | Path, cfg_invert: dict,
                  method: str, seed: int, out_dir: str | Path, eps: float | None = None,
                  device: str = "auto") -> dict:
    """Invert test images and photos with one method -> images.png, curve.csv, summary.json,
    recon.npz (originals, reconstructions, per-image loss curves; see `save_recon`).

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
        "steps_to_reach": {f"{initial * f:.6g}": steps_to_reach(curves["loss"], initial * f)
                           for f in REACH_FRACTIONS},
        "initial_loss": initial, "final_loss_noisy": curves["loss_noisy"][-1],
        "final_loss_per_image": curves["loss_per_image"], "eps": eps, "n_images": len(x),
        "photos": list(photos), "optimizer": cfg_invert["optimizer"], "lr": cfg_invert["lr"],
        "layer": layer, **_quality_summary(x.cpu(), x_hat.cpu(), n_test),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    log.info("final loss %.4g (initial %.4g), PSNR %.2f dB, SSIM %.3f", summary["final_loss"], initial,
             summary["psnr"], summary["ssim"])
    return summary
