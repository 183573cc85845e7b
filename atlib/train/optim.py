"""SGD with the schedules of the config (step with milestones, or cosine), stepped per epoch."""

from __future__ import annotations

from typing import Iterable

import torch

from atlib.spec.settings import Schedule


def make_optimizer(params: Iterable[torch.nn.Parameter], sched: Schedule) -> torch.optim.SGD:
    """SGD with momentum and weight decay from a train/finetune schedule."""
    return torch.optim.SGD(params, lr=sched.lr, momentum=sched.momentum, weight_decay=sched.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, sched: Schedule) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch LR schedule: MultiStepLR(milestones, gamma) or CosineAnnealingLR(epochs)."""
    if sched.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sched.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(sched.milestones), gamma=sched.gamma)
