"""The mode-0 fast path: the frozen trunk's outputs cached once, the tail trained on them.

Everything before the last BN is frozen in mode 0, so the tensors the rest of the network reads -- the
last BN's input and, in a residual block, the shortcut output -- are computed once and cached
(`adapter.TailSplit`, cut from the traced model); each epoch then trains only the tail, e.g.

    last_bn -> (+ shortcut) -> relu -> avgpool -> fc,

the same function as the full model with the frozen trunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from atlib.core.runtime import EVAL_BATCH, autocast, eval_mode, to_memory_format
from atlib.models.adapter import TailSplit, tail_split
from atlib.spec.settings import FinetuneSchedule
from atlib.train.augment import is_random
from atlib.transfer.inputs import Split, TransferError


@dataclass
class TailCache:
    """The frozen trunk's outputs for one split (`TailSplit.trunk`: the last BN's input, shortcuts)."""

    parts: tuple[torch.Tensor, ...]
    y: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.parts)

    def to(self, device: torch.device) -> "TailCache":
        return TailCache(tuple(t.to(device) for t in self.parts), self.y.to(device))

    def batch(self, idx: torch.Tensor, device: torch.device, channels_last: bool,
              ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(trunk outputs, y) of `idx` on `device`."""
        idx = idx.to(self.y.device)
        parts = tuple(to_memory_format(t[idx].to(device, non_blocking=True), channels_last) for t in self.parts)
        return parts, self.y[idx].to(device, non_blocking=True)


def cache_nbytes(model: nn.Module, split: TailSplit, x: torch.Tensor, n: int, device: torch.device, bf16: bool,
                 channels_last: bool) -> int:
    """Bytes a cache of `n` images like `x` (one adapted image or more) will take."""
    with eval_mode(model), autocast(device, bf16):
        parts = split.trunk(to_memory_format(x[:1].to(device), channels_last))
    return n * sum(t.element_size() * t[0].nelement() for t in parts)


@torch.no_grad()
def build_cache(model: nn.Module, split: TailSplit, data: Split, device: torch.device, bf16: bool,
                channels_last: bool, desc: str = "cache") -> TailCache:
    """Run the frozen trunk once over a split, in eval mode (no running statistics move).

    The cache lives in host memory, in the dtype the trunk produced (bf16 under autocast: what
    the plain path feeds the last BN); batches move to `device` when used.
    """
    parts: list[torch.Tensor] | None = None
    ys = torch.empty(data.n, dtype=torch.int64)
    with eval_mode(model):
        for idx in tqdm(torch.arange(data.n).split(EVAL_BATCH), desc=desc, leave=False, mininterval=2.0):
            x, y = data.batch(idx, device, channels_last)
            with autocast(device, bf16):
                got = split.trunk(x)
            if parts is None:  # preallocate: no concatenation peak for large caches
                parts = [torch.empty((data.n,) + tuple(t.shape[1:]), dtype=t.dtype) for t in got]
            for whole, t in zip(parts, got):
                whole[idx] = t.cpu()
            ys[idx] = y.cpu()
    return TailCache(tuple(parts or ()), ys)


def use_cache(mode: int, schedule: FinetuneSchedule) -> bool:
    """Whether this job takes the mode-0 fast path (schedule.cache_features), before size checks.

    "auto" caches unless the schedule augments randomly; "always" refuses augmentation; "never"
    never caches. Modes 1 and 2 train inside the trunk and never cache.
    """
    policy = schedule.cache_features
    if mode != 0 or policy == "never":
        return False
    if is_random(schedule.augment):
        if policy == "always":
            raise TransferError("finetune schedule: cache_features is 'always' but augment is on "
                                "(crop_pad/flip), and cached trunk outputs cannot be augmented. "
                                "Set cache_features to 'auto' or 'never', or turn augmentation off.")
        return False
    return True


@torch.no_grad()
def cache_accuracy(model: nn.Module, split: TailSplit, cache: TailCache, device: torch.device, bf16: bool,
                   channels_last: bool = False) -> float:
    """Top-1 (%) of the tail on cached trunk outputs (eval mode for the call)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with eval_mode(model):
        for idx in torch.arange(len(cache.y)).split(EVAL_BATCH):
            parts, y = cache.batch(idx, device, channels_last)
            with autocast(device, bf16):
                logits = split.tail(parts)
            correct += (logits.argmax(1) == y).sum()
    return 100.0 * int(correct) / len(cache.y)


def cache_split(model: nn.Module, train: Split, n_test: int, sched: FinetuneSchedule, device: torch.device,
                what: str, log: logging.Logger) -> TailSplit | None:
    """The model cut at its last BN when the mode-0 cache can be used and fits in schedule.cache_max_mb
    ("always" fails when it cannot); None = train through the full model."""
    probe = train.batch(torch.arange(min(2, train.n)), device, bool(sched.channels_last))[0]
    split, why = tail_split(model, probe)
    if split is None:
        if sched.cache_features == "always":
            raise TransferError(f"mode-0 cache of {what}: {why}; set cache_features to 'auto' or 'never'")
        log.info("mode-0 cache of %s not available (%s): training through the full model instead", what, why)
        return None
    need = cache_nbytes(model, split, probe, train.n + n_test, device, bool(sched.bf16),
                        bool(sched.channels_last))
    if need <= sched.cache_max_mb * 2**20:
        return split
    msg = f"mode-0 cache of {what} needs {need / 2**20:.0f} MB, over cache_max_mb={sched.cache_max_mb}"
    if sched.cache_features == "always":
        raise TransferError(f"{msg}: raise cache_max_mb (and the job's memory) or set cache_features to 'auto'")
    log.info("%s: training through the full model instead", msg)
    return None
