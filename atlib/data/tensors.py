"""The torch side of a prepared dataset: tensors, map-style datasets and batching.

Kept apart from `store` so that preparing data (19 jobs in the demo) never imports torch.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from atlib.data.store import Prepared


def adapt(x: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Resize a float batch (N, C, H, W) and repeat grayscale to 3 channels.

    Raises ValueError for a conversion we do not do silently (RGB to grayscale).
    """
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"cannot adapt {x.shape[1]}-channel images to a {channels}-channel model")
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def split_tensors(data: Prepared, split: str, image_size: int | None = None, channels: int | None = None,
                  limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split of `data` as float tensors in [0, 1], (N, C, H, W), adapted to a model's input."""
    if data.meta["format"] == "arrays":
        x, y = data.arrays(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255)
        yt = torch.from_numpy(y)
    else:
        ds = split_dataset(data, split)
        n = len(ds) if limit is None else min(limit, len(ds))
        items = [ds[i] for i in range(n)]
        xt = torch.stack([a for a, _ in items])
        yt = torch.tensor([b for _, b in items], dtype=torch.int64)
    return _adapt_chunked(xt, image_size, channels), yt


def split_dataset(data: Prepared, split: str, image_size: int | None = None,
                  channels: int | None = None) -> Dataset:
    """A map-style dataset of (float CHW image in [0, 1], label) over one split of `data`."""
    if data.meta["format"] == "arrays":
        return TensorPairs(*split_tensors(data, split, image_size, channels))
    return IndexDataset(data.root / "index.csv", split, image_size or data.image_size, channels or data.channels)


def _adapt_chunked(x: torch.Tensor, image_size: int | None, channels: int | None,
                   chunk: int = 4096) -> torch.Tensor:
    if image_size in (None, x.shape[-1]) and x.shape[-1] == x.shape[-2] and channels in (None, x.shape[1]):
        return x
    return torch.cat([adapt(x[i:i + chunk], image_size, channels) for i in range(0, len(x), chunk)])


class TensorPairs(Dataset):
    """In-memory (x, y) with batched `__getitems__`, so a DataLoader indexes once per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(idx)
        return self.x[t], self.y[t]


class IndexDataset(Dataset):
    """Images decoded from files listed in `index.csv`, resized to `image_size`."""

    def __init__(self, index: Path, split: str, image_size: int, channels: int) -> None:
        with open(index, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == split]
        self.paths = [r["path"] for r in rows]
        self.labels = [int(r["label"]) for r in rows]
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
        x = x.view(self.image_size, self.image_size, -1).permute(2, 0, 1).float().div_(255)
        return x, self.labels[i]


def collate_pairs(batch):
    """Collate for `TensorPairs.__getitems__` (already batched) and per-item datasets alike."""
    if isinstance(batch, tuple) and len(batch) == 2 and torch.is_tensor(batch[0]) and batch[0].dim() == 4:
        return batch
    return torch.utils.data.default_collate(batch)


def iterate(dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
            drop_last: bool = False, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (x, y) from a map-style dataset, reproducible given `generator`."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
        num_workers=num_workers, collate_fn=collate_pairs,
    )
    return iter(loader)
