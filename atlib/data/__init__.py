"""Datasets: registry, acquisition, the uniform prepared format, derived datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import offline  # noqa: F401  (registers the offline datasets)
from .registry import REGISTRY, AcquireContext, Arrays, DatasetMissing, DatasetSpec, Index, get_spec
from .store import DataIntegrityError, Prepared, write_prepared

try:  # the paper's datasets (CIFAR, SVHN, fine-grained, ImageNet, ...)
    from . import paper  # noqa: F401
except ImportError as err:  # pragma: no cover - only while the module is absent
    if "paper" not in str(err):
        raise

__all__ = [
    "REGISTRY", "AcquireContext", "Arrays", "DataIntegrityError", "DatasetMissing", "DatasetSpec", "Index", "Prepared",
    "TensorPairs", "adapt", "iterate", "get_spec", "prepare", "write_prepared",
]
_TORCH_SIDE = {"TensorPairs", "adapt", "iterate"}


def __getattr__(name: str) -> Any:
    """The torch side (`atlib.data.tensors`) on first use, so preparing data never imports torch."""
    if name in _TORCH_SIDE:
        from . import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prepare(name: str, out: Path, ctx: AcquireContext, derived: dict[str, Any] | None = None,
            base_dir: Path | None = None) -> dict:
    """Acquire dataset `name` (registered, or derived from `base_dir`) and write it to `out`."""
    if derived is not None:
        from .derived import derive, derived_num_classes

        base = Prepared(base_dir)
        raw = derive(base, derived)
        k = derived_num_classes(derived, base.num_classes)
        return write_prepared(raw, Path(out), name, k, base.image_size, base.channels,
                              source=f"derived from {base.name}: {derived}")
    spec = get_spec(name)
    raw = spec.load(ctx)
    return write_prepared(raw, Path(out), name, spec.num_classes, spec.image_size, spec.channels,
                          source=spec.how)
