"""The images of an inversion: the photos inverted beside test images, the quality of the
reconstructions (PSNR, SSIM), recon.npz (originals, reconstructions, per-image loss curves) and the
two-row image grid. The optimisation itself is `atlib.info.invert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlib.core.io import atomic_write

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
    with atomic_write(path) as tmp:
        np.savez_compressed(tmp, original=_to_uint8(original), recon=_to_uint8(recon),
                            photo=np.asarray(photo, bool), loss=np.asarray(loss_per_step, np.float32))


def load_recon(path: str | Path) -> dict[str, np.ndarray]:
    """A recon.npz as float images in [0, 1] (`original`, `recon`), `photo` mask and `loss` curves."""
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    for k in ("original", "recon"):
        out[k] = out[k].astype(np.float32) / 255.0
    return out


def quality_summary(x: torch.Tensor, x_hat: torch.Tensor, n_test: int) -> dict[str, Any]:
    """psnr/ssim (means) and per-image lists for the test images, photo_* the same for photos."""
    q = image_quality(x, x_hat)
    out: dict[str, Any] = {}
    for prefix, sl in (("", slice(0, n_test)), ("photo_", slice(n_test, None))):
        for m in ("psnr", "ssim"):
            vals = q[m][sl]
            out[f"{prefix}{m}"] = float(np.mean(vals)) if vals else None
            out[f"{prefix}{m}_per_image"] = vals
    return out


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
