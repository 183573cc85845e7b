"""DistributedDataParallel plumbing: process groups, global-batch sharding, synchronized BatchNorm.

A run with W ranks reproduces the single-process run with the same global batch: every rank
draws the same data order and augmentation for the global batch and keeps its slice, each
rank's loss is scaled so the averaged gradient equals the global-batch mean, and BatchNorm
statistics are all-reduced (torch's SyncBatchNorm on CUDA; `GlobalBatchNorm2d` on CPU/gloo,
where SyncBatchNorm is not implemented).
"""

from __future__ import annotations

import inspect
import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_torchrun() -> DistEnv | None:
    """The DistEnv of a torchrun/SLURM-launched rank (WORLD_SIZE > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) from MASTER_ADDR/MASTER_PORT."""
    if not env.distributed or dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = ()) -> None:
    """Run `fn(rank, world_size, *args)` in `world_size` fresh processes (single node)."""
    import torch.multiprocessing as mp

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    mp.spawn(fn, args=(world_size, *args), nprocs=world_size, join=True)


def shard_span(n_global: int, env: DistEnv) -> tuple[int, int]:
    """[start, stop) of this rank's slice of a global batch of n_global (sizes differ by <= 1)."""
    base, extra = divmod(n_global, env.world_size)
    start = env.rank * base + min(env.rank, extra)
    return start, start + base + (1 if env.rank < extra else 0)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a (small) tensor over ranks in place; a no-op on one process."""
    if env.distributed:
        dist.all_reduce(t)
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a global sum is the global sum of gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across ranks.

    For CPU/gloo, where torch's SyncBatchNorm refuses to run. Two differentiable
    all-reduces (mean, then centered second moment) keep it as accurate as the
    single-process BatchNorm; eval mode is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        count = _AllReduceSum.apply(count)
        mean = _AllReduceSum.apply(xf.sum(dim=(0, 2, 3))) / count
        centered = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply(centered.pow(2).sum(dim=(0, 2, 3))) / count
        y = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm2d -> synchronized BatchNorm (SyncBatchNorm on CUDA, GlobalBatchNorm2d on CPU).

    Parameter and buffer names are unchanged, so checkpoints load into either form.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_global(module)


def _convert_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.to(next(iter(module.buffers()), torch.empty(0)).device)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_global(child))
    return module


def wrap_ddp(module: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` (identity on one process)."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # BatchNorm buffers are already identical on every rank (synchronized statistics), so they
    # are synced once at construction, not broadcast before every forward.
    sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else {"broadcast_buffers": False})
    # oneDNN returns 1x1-conv weight grads with arbitrary strides on the size-1 dims, which
    # DDP reports as a layout mismatch although the copy into the bucket is exact.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DDP(module, device_ids=ids, gradient_as_bucket_view=True, **sync)
