"""Checkpoints: plain state_dicts plus a metadata dict, written atomically, loaded safely.

A finished model is `{"state_dict": ..., "meta": {...}}` saved with `torch.save` and read
with `torch.load(weights_only=True)`. `meta` has what is needed to rebuild the model
(arch, num_classes, in_channels, width, normalization, image_size) and its provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from atlib.core.io import atomic_write
from atlib.models.resnet import ResNet, build_model

MODEL_META_KEYS = ("arch", "num_classes", "in_channels", "width", "normalization", "image_size")


class CheckpointError(RuntimeError):
    """A corrupt or mismatched checkpoint; the message names the file and the reason."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `atomic_write`: a killed job never leaves a partial file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def safe_load(path: str | Path) -> dict:
    """`torch.load(weights_only=True)`, with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbage files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def save_model(path: str | Path, model: ResNet, meta: dict[str, Any]) -> None:
    missing = [k for k in MODEL_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"model meta lacks {missing}")
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    atomic_save({"state_dict": state, "meta": dict(meta)}, path)


def load_model(path: str | Path, expect_arch: str | None = None) -> tuple[ResNet, dict[str, Any]]:
    """Rebuild a model saved by `save_model` (an atlib ResNet, or an imported network wrapped by
    `adapter.Adapted` when meta has "adapter"); refuse another arch or mismatched weights."""
    obj = safe_load(path)
    if "state_dict" not in obj or "meta" not in obj:
        raise CheckpointError(f"{path}: not an atlib model checkpoint (keys: {sorted(obj)[:5]})")
    meta = obj["meta"]
    if expect_arch is not None and meta.get("arch") != expect_arch:
        raise CheckpointError(f"{path}: checkpoint is arch {meta.get('arch')!r}, expected {expect_arch!r}")
    if "adapter" in meta:  # an imported foreign network (atlib.models.adapter), rebuilt by its library
        from atlib.models.adapter import rebuild

        model = rebuild(meta, obj["state_dict"])
    else:
        model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["width"],
                            meta["normalization"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {meta['arch']} ({str(err).splitlines()[0]})") from None
    return model.eval(), meta


def model_eps(meta: dict[str, Any], eps: float | None) -> float:
    """The training eps: given explicitly (the rule's wildcard) or from the checkpoint's meta."""
    if eps is None:
        eps = meta.get("eps")
    if eps is None:
        raise ValueError("the model's training eps is unknown: pass eps= (the checkpoint meta has none)")
    return float(eps)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP / compiled wrappers
