"""Datasets: registry, acquisition, the uniform prepared format, derived datasets, image folders.

May import atlib.core only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atlib.data import offline  # noqa: F401  (registers the offline datasets)
from atlib.data.folder import FOLDER
from atlib.data.registry import REGISTRY, AcquireContext, Arrays, DatasetMissing, DatasetSpec, Index, get_spec
from atlib.data.store import DataIntegrityError, Prepared, write_prepared

try:  # the paper's datasets (CIFAR, SVHN, fine-grained, ImageNet, ...)
    from atlib.data import paper  # noqa: F401
except ImportError as err:  # pragma: no cover - only while the module is absent
    if "paper" not in str(err):
        raise

__all__ = [
    "FOLDER", "REGISTRY", "AcquireContext", "Arrays", "DataIntegrityError", "DatasetMissing", "DatasetSpec", "Index", "Prepared",
    "TensorPairs", "adapt", "iterate", "get_spec", "load_batches", "prepare", "sample_images", "split_data",
    "write_prepared",
]
# The torch side, imported on first use so that preparing data never imports torch.
_TORCH_SIDE = {"TensorPairs": "tensors", "adapt": "tensors", "iterate": "tensors", "load_batches": "loading",
               "sample_images": "loading", "split_data": "loading"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_SIDE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prepare(name: str, out: Path, ctx: AcquireContext, derived: dict[str, Any] | None = None,
            base_dir: Path | None = None) -> dict:
    """Acquire dataset `name` (registered, or derived from `base_dir`) and write it to `out`."""
    if derived is not None and derived.get("base") == FOLDER:
        from atlib.data.folder import load_folder

        raw = load_folder(derived["path"], derived["image_size"], derived["channels"], derived["test_fraction"],
                          derived["seed"])
        return write_prepared(raw, Path(out), name, len(raw.classes), derived["image_size"], derived["channels"],
                              source=f"image folder {derived['path']}")
    if derived is not None:
        from atlib.data.derived import derive, derived_num_classes

        base = Prepared(base_dir)
        raw = derive(base, derived)
        k = derived_num_classes(derived, base.num_classes)
        return write_prepared(raw, Path(out), name, k, base.image_size, base.channels,
                              source=f"derived from {base.name}: {derived}")
    spec = get_spec(name)
    raw = spec.load(ctx)
    return write_prepared(raw, Path(out), name, spec.num_classes, spec.image_size, spec.channels,
                          source=spec.how)
