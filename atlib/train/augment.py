"""Batched training augmentation on tensors: random crop with zero padding and horizontal flip.

Works on a whole batch at once on any device (one gather, no per-image Python loop), and
draws its randomness from an explicit generator so data order and augmentation resume
bit-identically from a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _draw(fn, n: int, span: tuple[int, int] | None):
    """Draw per-example randomness for the whole global batch, keep this shard's part.

    Under DDP every rank draws the same numbers for the global batch (shared generator) and
    uses its slice, so a sharded run augments exactly like the single-process run.
    """
    if span is None:
        return fn(n)
    offset, total = span
    return fn(total)[offset:offset + n]


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                span: tuple[int, int] | None = None) -> torch.Tensor:
    """Pad (N, C, H, W) by `pad` zeros per side and crop a random H x W window per image.

    Args:
        span: (offset, global batch size) when `x` is one shard of a global batch.
    """
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    # Offsets drawn on the generator's device (CPU), then moved: same numbers on any device.
    offsets = _draw(lambda k: torch.randint(0, 2 * pad + 1, (2, k), generator=generator).T, n, span)
    oy, ox = offsets[:, 0].to(x.device), offsets[:, 1].to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    idx = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 puts the channel dim last: (N, H, W, C); the result keeps
    # the batch's memory layout (a channels_last batch stays channels_last).
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous(memory_format=fmt)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                span: tuple[int, int] | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (`span` as in `random_crop`)."""
    flip = _draw(lambda k: torch.rand(k, generator=generator) < 0.5, x.shape[0], span).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment_batch(x: torch.Tensor, spec: dict[str, Any] | None, generator: torch.Generator | None = None,
                  span: tuple[int, int] | None = None) -> torch.Tensor:
    """Apply the schedule's `augment` block ({crop_pad, flip}) to a batch in [0, 1].

    Args:
        x: images (N, C, H, W).
        spec: {"crop_pad": int, "flip": bool}; None or empty = identity.
        generator: source of randomness (the data-order generator, saved for resume).
        span: (offset, global batch size) when `x` is one DDP shard of a global batch.
    """
    spec = spec or {}
    if spec.get("crop_pad", 0):
        x = random_crop(x, int(spec["crop_pad"]), generator, span)
    if spec.get("flip", False):
        x = random_flip(x, generator, span)
    return x


def is_random(spec: dict[str, Any] | None) -> bool:
    """True when the augment block changes images (used to decide feature caching)."""
    return bool(spec) and (spec.get("crop_pad", 0) > 0 or bool(spec.get("flip", False)))
