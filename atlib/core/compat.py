"""Import shims for the CPU-only environment."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_torchvision() -> ModuleType:
    """Import torchvision, declaring its C++ op schemas first if the wheel lacks them.

    The torchvision 0.28.0 wheel on PyPI is a CUDA build; on a CPU-only torch its
    `_meta_registrations` fail with "operator torchvision::nms does not exist" because
    the compiled extension that would declare the ops cannot load. Declaring the two
    schemas it registers fake kernels for lets the pure-Python parts (datasets,
    transforms, models) import normally. Only used when the plain import fails.
    """
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    import sys

    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - must stay alive
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    return importlib.import_module("torchvision")


_KEEP: list = []
