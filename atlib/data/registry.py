"""Dataset registry: name -> classes, image size, channels, and how to acquire it.

Acquisition order for every dataset (see `AcquireContext.candidates`):
1. a pre-staged directory `<data_root>/<name>/` in the dataset's documented layout,
2. a system copy (e.g. Debian's `dataset-fashion-mnist` under /usr/share/datasets),
3. torchvision's download, only when the config allows it.
A dataset found nowhere raises `DatasetMissing`, one message naming the dataset,
the places searched and the ways to provide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np


class DatasetMissing(RuntimeError):
    """A dataset that could not be found or acquired; the message says what to do."""

    def __init__(self, name: str, searched: list[str], how: str) -> None:
        places = "\n".join(f"  - {p}" for p in searched) or "  (nothing)"
        super().__init__(f"dataset {name!r} not found. Searched:\n{places}\nTo provide it: {how}")
        self.name = name


@dataclass
class Arrays:
    """An in-memory dataset: uint8 images (N, H, W, C) and int64 labels, per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str] | None = None


@dataclass
class Index:
    """A file-backed dataset (too large for memory): rows of (path, label, split)."""

    paths: list[str]
    labels: list[int]
    splits: list[str]
    classes: list[str] | None = None


Raw = Union[Arrays, Index]


@dataclass
class AcquireContext:
    """Where to look for data and whether downloading is allowed.

    `check_sizes` refuses a copy whose split sizes differ from the paper's Table 4
    (`check_paper_sizes`); only tests on tiny fixtures turn it off.
    """

    data_root: Path
    allow_download: bool = False
    download_dir: Path | None = None
    system_dirs: dict[str, Path] = field(default_factory=dict)
    check_sizes: bool = True

    def staged(self, name: str) -> Path:
        return Path(self.data_root) / name

    def download_root(self, name: str) -> Path:
        return Path(self.download_dir or self.data_root) / f"{name}_download"


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset.

    Args:
        name: registry key, also the wildcard value.
        num_classes: number of labels.
        image_size: side length images are stored (and, for sources, trained) at.
        channels: 1 (grayscale) or 3 (RGB).
        how: human instructions to provide it offline (the pre-staged layout).
        load: reads or downloads it, raising `DatasetMissing` when it cannot.
        paper_sizes: (train, test) sizes of the full dataset in the paper's Table 4.
    """

    name: str
    num_classes: int
    image_size: int
    channels: int
    how: str
    load: Callable[[AcquireContext], Raw]
    paper_sizes: tuple[int, int] | None = None


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check_paper_sizes(spec: DatasetSpec, n_train: int, n_test: int) -> None:
    """Refuse a full copy whose split sizes differ from the paper's Table 4."""
    if spec.paper_sizes is None:
        return
    if (n_train, n_test) != tuple(spec.paper_sizes):
        raise ValueError(
            f"dataset {spec.name!r} has {n_train} train / {n_test} test images; the paper's Table 4 "
            f"has {spec.paper_sizes[0]} / {spec.paper_sizes[1]}. The copy is incomplete or a different version."
        )
