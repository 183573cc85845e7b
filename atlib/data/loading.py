"""Reading a prepared split in batches: in memory for array datasets, through a DataLoader for files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch

from atlib.data.store import Prepared
from atlib.data.tensors import TensorPairs, adapt, collate_pairs, split_dataset, split_tensors

log = logging.getLogger("atlib")


def split_data(prep: Prepared, split: str, limit: int | None = None):
    """In-memory TensorPairs for array datasets; the file-backed dataset (first `limit`) otherwise."""
    if prep.meta["format"] == "arrays":
        x, y = split_tensors(prep, split, limit=limit)
        return TensorPairs(x, y)
    ds = split_dataset(prep, split)
    if limit is not None and limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(limit))
    return ds


def load_batches(ds, batches: list[torch.Tensor], workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) for each index batch: direct indexing in memory, a DataLoader for files."""
    if isinstance(ds, TensorPairs):
        for idx in batches:
            idx = idx.to(ds.x.device)
            yield ds.x[idx], ds.y[idx]
        return
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                                         collate_fn=collate_pairs, persistent_workers=False)
    yield from loader


def sample_images(data_dir: str | Path, split: str, n: int, image_size: int, channels: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of n images of a prepared split, adapted to a model's input."""
    data = Prepared(data_dir)
    total = data.split_size(split)
    if n > total:
        log.warning("%s %s split has %d images; using all of them instead of %d", data.name, split, total, n)
        n = total
    idx = torch.randperm(total, generator=generator)[:n].sort().values
    if data.meta["format"] == "arrays":  # index the uint8 array: never convert the whole split
        images, labels = data.arrays(split)
        x = torch.from_numpy(images[idx.numpy()]).permute(0, 3, 1, 2).float().div_(255)
        return adapt(x, image_size, channels), torch.from_numpy(labels[idx.numpy()]).long()
    ds = split_dataset(data, split, image_size, channels)
    x, y = collate_pairs([ds[i] for i in idx.tolist()])
    return x, torch.as_tensor(y, dtype=torch.int64)
