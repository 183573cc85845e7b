"""ResNets for the paper: CIFAR variants (3x3 stem) and the ImageNet ResNet-50.

Parameter names follow torchvision's `resnet.py` (conv1, bn1, layerN.M.convK/bnK,
downsample.0/1, fc), so torchvision and MadryLab checkpoints map onto ours by name.
Input normalization is the first layer (`normalize`), so every caller works in
pixel space [0, 1].
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

# Per-dataset normalization statistics; unknown datasets fall back to 0.5/0.5.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class Normalize(nn.Module):
    """(x - mean) / std with per-channel buffers, saved in the state_dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride on the 3x3 conv, as torchvision (ResNet v1.5) and MadryLab do.
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """A ResNet whose `features(x)` is the pooled representation z before the head.

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage; stage i has `base * 2**i` planes.
        num_classes: size of the linear head `fc`.
        in_channels: input channels (3 for RGB; grayscale is repeated upstream).
        stem: "cifar" (3x3 conv, no max-pool) or "imagenet" (7x7/2 conv + max-pool).
        width: multiplier on the 64 base planes (the demo uses small widths).
        mean, std: normalization applied inside the model.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        stem: str = "cifar",
        width: float = 1.0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        base = max(4, int(round(64 * width)))
        self.normalize = Normalize(mean[:in_channels], std[:in_channels])
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, base, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, base, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"unknown stem {stem!r}: expected 'cifar' or 'imagenet'")
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        inplanes = base
        for i, n in enumerate(layers):
            planes = base * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = inplanes
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation z = f_w(x): pooled output of the last stage."""
        return self.features_at(x, "final")

    def layer_names(self) -> list[str]:
        """Valid `features_at` layers: "final" (pooled, = features) and "layer1".."layerN" (unpooled)."""
        return ["final"] + [f"layer{i + 1}" for i in range(self.num_stages)]

    def features_at(self, x: torch.Tensor, layer: str = "final") -> torch.Tensor:
        """Flattened activations at `layer`: "final" = features(x); "layerK" = stage K's output map
        before any pooling (N, C*H*W), an earlier and spatially resolved representation."""
        if layer not in self.layer_names():
            raise ValueError(f"unknown layer {layer!r}: expected one of {self.layer_names()}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        for i, stage in enumerate(self.stages()):
            x = stage(x)
            if layer == f"layer{i + 1}":
                return torch.flatten(x, 1)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def last_block(self) -> nn.Module:
        return self.stages()[-1][-1]

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm right before the head (mode 0 trains it with `fc`)."""
        block = self.last_block()
        return block.bn3 if isinstance(block, Bottleneck) else block.bn2


ARCHS: dict[str, Callable[..., ResNet]] = {}


def register(name: str) -> Callable[[Callable[..., ResNet]], Callable[..., ResNet]]:
    def deco(fn: Callable[..., ResNet]) -> Callable[..., ResNet]:
        ARCHS[name] = fn
        return fn

    return deco


@register("resnet8")
def resnet8(**kw) -> ResNet:
    """Three-stage CIFAR ResNet-8 (the demo's CPU-sized backbone)."""
    return ResNet(BasicBlock, [1, 1, 1], stem="cifar", **kw)


@register("resnet18")
def resnet18(**kw) -> ResNet:
    """CIFAR ResNet-18 (3x3 stem), as in MadryLab `robustness`."""
    return ResNet(BasicBlock, [2, 2, 2, 2], stem="cifar", **kw)


@register("resnet50")
def resnet50(**kw) -> ResNet:
    """CIFAR ResNet-50 (3x3 stem, bottleneck blocks)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], stem="cifar", **kw)


@register("resnet50_imagenet")
def resnet50_imagenet(**kw) -> ResNet:
    """ImageNet ResNet-50 with torchvision's parameter names."""
    return ResNet(Bottleneck, [3, 4, 6, 3], stem="imagenet", **kw)


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    normalization: str | None = None,
) -> ResNet:
    """Build a registered architecture with the normalization of dataset `normalization`.

    Args:
        arch: a name in `ARCHS`.
        num_classes: head size.
        in_channels: image channels the model takes.
        width: multiplier on the base width.
        normalization: dataset whose mean/std the model applies (default 0.5/0.5).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHS))}")
    mean, std = NORMALIZATION.get(normalization or "", ((0.5,) * 3, (0.5,) * 3))
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels, width=width, mean=mean, std=std)


def weight_norm(model: nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """||w||_2 over every parameter (the paper's Figure 5), summed in `dtype`.

    Training histories and source metrics sum in float32, the fisher summary in float64: each
    keeps the precision its recorded numbers were computed in.
    """
    with torch.no_grad():
        return float(torch.sqrt(sum(p.detach().to(dtype).pow(2).sum() for p in model.parameters())))


# A cluster job's memory (MB) by architecture and job kind, the one table the rule files read.
# train: a training step; transfer: mode 0 also holds the trunk outputs of the whole target
# (finetune_schedules.*.cache_max_mb); analysis (fisher, invert): per-sample gradients take chunk x
# parameters floats. Architectures not listed (zoo imports: wide ResNets, ...) get OTHER_MEM_MB.
JOB_MEM_MB: dict[str, dict[str, int]] = {
    "resnet8": {"train": 4000, "transfer": 2500, "analysis": 2000},
    "resnet18": {"train": 4000, "transfer": 8000, "analysis": 8000},
    "resnet50": {"train": 16000, "transfer": 20000, "analysis": 24000},
    "resnet50_imagenet": {"train": 16000, "transfer": 48000, "analysis": 24000},
}
OTHER_MEM_MB: dict[str, int] = {"train": 4000, "transfer": 48000, "analysis": 24000}


def job_mem_mb(arch: str, job: str) -> int:
    """Memory (MB) a `job` ('train', 'transfer' or 'analysis') on `arch` asks the cluster for."""
    return JOB_MEM_MB.get(arch, OTHER_MEM_MB)[job]
