"""Which modules each transfer mode trains (the paper's Appendix C), freezing, the BN policy, the new head.

Mode 0 trains the head and the BatchNorm right before it, mode 1 the head and every BatchNorm, mode 2 the
whole network. Frozen modules stay in eval mode, so their running statistics never move. Any model works
that declares `fc` and `last_bn()` (atlib's ResNet, or an imported network wrapped by `adapter.Adapted`);
mode 1's BatchNorms are every `_BatchNorm` in the model.
"""

from __future__ import annotations

import torch
from torch import nn

from atlib.models.resnet import ResNet

MODES = {0: "head + last BatchNorm", 1: "head + every BatchNorm", 2: "whole network"}


def trained_modules(model: ResNet, mode: int) -> list[nn.Module]:
    """The leaf modules whose parameters mode `mode` trains (the head is `model.fc`)."""
    if mode == 0:
        return [model.fc, model.last_bn()]
    if mode == 1:
        return [model.fc] + [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if mode == 2:
        return [m for m in model.modules() if not any(True for _ in m.children())]
    raise ValueError(f"unknown transfer mode {mode!r}: expected one of {sorted(MODES)}")


def freeze_for_mode(model: ResNet, mode: int) -> list[nn.Parameter]:
    """Set requires_grad for `mode` and return the trained parameters, in model order."""
    trained = {id(p) for m in trained_modules(model, mode) for p in m.parameters(recurse=False)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: ResNet, mode: int, bn_policy: str) -> None:
    """`model.train()`, then eval() on every frozen leaf module (and on trained BNs under "eval").

    bn_policy says what the BatchNorm layers being fine-tuned do:
      "train": train mode -- they normalize with batch statistics and update their running
               statistics on the target;
      "eval":  eval mode -- the source running statistics are kept and used, only their affine
               parameters (weight, bias) are learned.
    Frozen BatchNorms are always in eval mode, so their running statistics never move.
    """
    if bn_policy not in ("train", "eval"):
        raise ValueError(f"bn_policy must be 'train' or 'eval', got {bn_policy!r}")
    model.train()
    trained = {id(m) for m in trained_modules(model, mode)}
    for m in model.modules():
        if any(True for _ in m.children()):
            continue  # containers: their leaves decide
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
        if id(m) not in trained or (is_bn and bn_policy == "eval"):
            m.eval()


def trained_state(model: ResNet, mode: int) -> dict[str, torch.Tensor]:
    """The state_dict entries of the trained modules: all a resume needs, since the frozen rest
    is reloaded from the source model (mode 0 saves a few KB instead of the whole network)."""
    trained = {id(m) for m in trained_modules(model, mode)}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in trained)
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def new_head(model: ResNet, num_classes: int) -> None:
    """Replace `model.fc` with a fresh linear head (initialized from torch's global RNG)."""
    model.fc = nn.Linear(model.feature_dim, num_classes)
