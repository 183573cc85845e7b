"""Datasets derived from a prepared one: a class subset and/or a fixed transform.

Declared in the config under `datasets:`. A family of transforms of real images
(inverted, rotated, blurred, on a texture background) moves a target step by step
away from its source, which gives the gap-versus-distance plot its points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from atlib.data.registry import Arrays
from atlib.data.store import Prepared

TRANSFORMS = ("none", "invert", "invert_mix", "rot90", "rotate", "blur", "texture")
# Transforms whose strength is a mixing weight in [0, 1] (checked by atlib.spec.config.check_config).
UNIT_STRENGTH = ("invert_mix",)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def apply_transform(x: np.ndarray, kind: str, strength: float, seed: int) -> np.ndarray:
    """Apply one fixed transform to uint8 images (N, H, W, C).

    `strength` is: rot90 quarter turns; rotate degrees (counter-clockwise, as np.rot90);
    invert_mix the weight a of x -> (1-a) x + a (255-x) (a=1 is `invert`); blur the Gaussian
    sigma in pixels; texture the contrast of the texture background.
    """
    if kind == "none":
        return x
    if kind == "invert":
        return 255 - x
    if kind == "invert_mix":
        if not 0 <= strength <= 1:
            raise ValueError(f"invert_mix strength must be in [0, 1], got {strength}")
        xf = x.astype(np.float32)
        return _to_uint8((1 - strength) * xf + strength * (255 - xf))
    if kind == "rot90":
        return np.ascontiguousarray(np.rot90(x, k=int(strength) or 1, axes=(1, 2)))
    if kind == "rotate":
        # Bilinear (order 1): a cubic spline rings around the sharp strokes of uint8 digits.
        out = ndimage.rotate(x.astype(np.float32), strength, axes=(1, 2), reshape=False, order=1,
                             mode="constant", cval=0.0)
        return _to_uint8(out)
    if kind == "blur":
        out = ndimage.gaussian_filter(x.astype(np.float32), sigma=(0, strength, strength, 0))
        return _to_uint8(out)
    if kind == "texture":
        from atlib.data.offline import TEXTURES, photo_crops

        tex = photo_crops(TEXTURES, n_train=len(x), n_test=1, size=x.shape[1], seed=seed).train_x
        tex = np.random.default_rng(seed).permutation(tex)[: len(x)][..., None]
        # Bright strokes stay, the dark background becomes a texture at `strength` contrast.
        return np.maximum(x, _to_uint8(tex * strength))
    raise ValueError(f"unknown transform {kind!r}; known: {', '.join(TRANSFORMS)}")


def _subset(x: np.ndarray, y: np.ndarray, classes: list[int] | None, limit: int | None,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if classes:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        y = np.searchsorted(np.asarray(sorted(classes)), y)  # relabel to 0..k-1 in class order
        order = np.argsort(np.argsort(classes))  # position of each class in the user's order
        y = order[y]
    if limit is not None and limit < len(y):
        idx = np.sort(rng.permutation(len(y))[:limit])
        x, y = x[idx], y[idx]
    return x, y.astype(np.int64)


def derive(base: Prepared, spec: dict[str, Any]) -> Arrays:
    """Build a derived dataset from `base` following its config entry `spec`."""
    classes = spec.get("classes")
    rng = np.random.default_rng(spec.get("seed", 0))
    parts = []
    for split, limit in (("train", spec.get("max_train")), ("test", spec.get("max_test"))):
        x, y = base.arrays(split)
        x, y = _subset(x, y, classes, limit, rng)
        x = apply_transform(x, spec.get("transform", "none"), spec.get("strength", 1.0), spec.get("seed", 0))
        parts += [x, y]
    names = base.meta.get("classes")
    if classes and names:
        names = [names[c] for c in classes]
    return Arrays(*parts, classes=names)


def derived_num_classes(spec: dict[str, Any], base_classes: int) -> int:
    return len(spec["classes"]) if spec.get("classes") else base_classes
