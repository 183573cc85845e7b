"""The inputs of a transfer: the source model and the target, checked, and the target's splits.

A problem with either is a `TransferError` naming both and the fix. The target is read at its stored
size and adapted to the model's input per batch (`Split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from atlib.core.runtime import EVAL_BATCH, to_memory_format
from atlib.data import DataIntegrityError, Prepared, adapt, load_batches, split_data
from atlib.models.checkpoint import CheckpointError, load_model
from atlib.models.resnet import ResNet
from atlib.spec.jobs import MODEL_RE
from atlib.train.augment import augment_batch
from atlib.transfer.modes import MODES


class TransferError(ValueError):
    """A transfer that cannot be done as asked; the message names the target and the source model."""


class Split:
    """One split of a target at its stored size, adapted to the model's input per batch.

    Adapting per batch (resize, gray -> 3 channels) gives the same images as adapting the whole
    split up front, without holding an upsampled copy (e.g. CIFAR at 224 for an ImageNet model).
    """

    def __init__(self, prep: Prepared, split: str, image_size: int, channels: int, limit: int | None = None,
                 workers: int = 0) -> None:
        self.ds = split_data(prep, split, limit)
        self.n = len(self.ds)
        self.image_size, self.channels, self.workers = image_size, channels, workers

    def batch(self, idx: torch.Tensor, device: torch.device, channels_last: bool,
              augment: dict[str, Any] | None = None, generator: torch.Generator | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted (and optionally augmented) images of `idx` on `device`, and their labels."""
        x, y = next(load_batches(self.ds, [idx], self.workers))
        x = adapt(x, self.image_size, self.channels).to(device, non_blocking=True)
        if augment is not None:
            x = augment_batch(x, augment, generator)
        return to_memory_format(x, channels_last), y.to(device, non_blocking=True)

    def batches(self, device: torch.device, channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, EVAL_BATCH images at a time (what accuracies stream)."""
        for idx in torch.arange(self.n).split(EVAL_BATCH):
            yield self.batch(idx, device, channels_last)

    def head(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `m` images, adapted, on the CPU (what the PGD evaluation attacks)."""
        xs, ys = zip(*(self.batch(idx, torch.device("cpu"), False) for idx in torch.arange(m).split(EVAL_BATCH)))
        return torch.cat(xs), torch.cat(ys).long()


def parse_model_key(model_path: str | Path, model_key: str | None = None) -> tuple[str, str | None, float | None]:
    """(model path key, arch, eps) from `model_key` or from the results layout of `model_path`
    (`.../models/{source}/{arch}/{eps|gn}{eps}/s{seed}/model.pt`); arch/eps are None if unparsable."""
    key = model_key or "/".join(Path(model_path).parts[-5:-1])
    m = MODEL_RE.match(key)
    if m is None:
        return (model_key or str(model_path)), None, None
    return key, m["arch"], float(m["eps"])


def load_inputs(model_path: str | Path, target_dir: str | Path, key: str, arch: str | None,
                 mode: int) -> tuple[Prepared, ResNet, dict[str, Any]]:
    """Source model and target, or a TransferError naming both and the fix."""
    target = Path(target_dir).name
    where = f"cannot transfer {key} to {target}"
    if mode not in MODES:
        raise TransferError(f"{where}: unknown mode {mode!r}; modes are {MODES}")
    try:
        prep = Prepared(target_dir)
    except (FileNotFoundError, DataIntegrityError) as err:
        raise TransferError(f"{where}: {err}") from None
    try:
        model, meta = load_model(model_path, expect_arch=arch)
        if mode == 0:
            model.last_bn()  # an imported network may have no BatchNorm before its head
    except (CheckpointError, ValueError) as err:
        raise TransferError(f"{where}: {err}") from None
    for split in ("train", "test"):
        if prep.split_size(split) == 0:
            raise TransferError(f"{where}: the target's {split} split is empty ({prep.root / 'meta.json'}); "
                                "prepare it again or pick another target")
    probe = torch.zeros(1, prep.channels, prep.image_size, prep.image_size)
    try:
        adapt(probe, meta["image_size"], meta["in_channels"])
    except ValueError as err:
        raise TransferError(f"{where}: target {target} has {prep.channels}-channel images and source model "
                            f"{key} takes {meta['in_channels']}-channel input ({err}). Use a source model "
                            "trained on RGB images, or a grayscale target.") from None
    return prep, model, meta
