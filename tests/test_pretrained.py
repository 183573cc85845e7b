"""Importing MadryLab `robustness` and torchvision checkpoints (synthetic, in their key layout)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from atlib.data.store import sha256
from atlib.models.checkpoint import CheckpointError, load_model
from atlib.models.resnet import build_model
from atlib.spec.settings import TrainSchedule
from atlib.train.imported import import_source, load_pretrained
from atlib.train.source import HISTORY_COLUMNS

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


def madrylab_layout(model: torch.nn.Module, cifar_names: bool) -> dict[str, torch.Tensor]:
    """Our model's weights as a `robustness` AttackerModel under DataParallel would save them."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("normalize."):
            continue
        if cifar_names:  # their CIFAR ResNets: `linear` head, `shortcut` projections
            k = re.sub(r"^fc\.", "linear.", k)
            k = k.replace(".downsample.", ".shortcut.")
        sd[f"module.model.{k}"] = v.clone()
        sd[f"module.attacker.model.{k}"] = v.clone()
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        sd[f"{prefix}new_mean"] = torch.tensor(MEAN).view(3, 1, 1)
        sd[f"{prefix}new_std"] = torch.tensor(STD).view(3, 1, 1)
    return sd


@pytest.mark.parametrize("arch,size", [("resnet18", 8), ("resnet50", 8), ("resnet50_imagenet", 32)])
def test_madrylab_round_trip(tmp_path: Path, arch: str, size: int):
    torch.manual_seed(0)
    ours = build_model(arch, 10, 3, width=0.0625)
    ours.normalize.mean.copy_(torch.tensor(MEAN).view(1, 3, 1, 1))
    ours.normalize.std.copy_(torch.tensor(STD).view(1, 3, 1, 1))
    ours.eval()
    for m in ours.modules():  # non-trivial BN statistics, so a mis-mapped buffer shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = madrylab_layout(ours, cifar_names=arch != "resnet50_imagenet")
    if arch == "resnet18":
        assert any(".shortcut." in k for k in sd) and "module.model.linear.weight" in sd
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd, "optimizer": {}, "epoch": 150}, path)
    loaded = load_pretrained(path, arch)
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ours(x), atol=1e-5)
    assert torch.allclose(loaded.normalize.mean.flatten(), torch.tensor(MEAN))


def test_torchvision_state_dict_uses_dataset_normalization(tmp_path: Path):
    ours = build_model("resnet50_imagenet", 10, 3, width=0.0625, normalization="imagenet").eval()
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("normalize.")}
    torch.save(sd, tmp_path / "tv.pth")
    loaded = load_pretrained(tmp_path / "tv.pth", "resnet50_imagenet", normalization="imagenet")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ours(x), atol=1e-5)


def test_wrong_arch_or_garbage_is_refused(tmp_path: Path):
    sd = madrylab_layout(build_model("resnet18", 10, 3, width=0.0625), cifar_names=True)
    torch.save({"model": sd}, tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match=r"r18\.pt: weights do not fit resnet50"):
        load_pretrained(tmp_path / "r18.pt", "resnet50")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_pretrained(tmp_path / "junk.pt", "resnet18")


def test_import_source_writes_the_three_outputs(tiny_prepared: Path, tmp_path: Path):
    torch.manual_seed(0)
    src = build_model("resnet8", 3, 1, width=0.0625)
    sd = {f"module.model.{k.replace('fc.', 'linear.')}": v for k, v in src.state_dict().items()
          if not k.startswith("normalize.")}
    torch.save({"model": sd}, tmp_path / "madry.pt")
    out = tmp_path / "models" / "tiny" / "resnet8" / "eps1" / "s0"
    sched = TrainSchedule.from_config({"evaluation": {"eps": [0.25], "steps": 2, "max_images": 10}})
    metrics = import_source({"kind": "robustness", "file": str(tmp_path / "madry.pt")}, tiny_prepared, out,
                            arch="resnet8", eps=1.0, seed=0, schedule=sched, threads=1)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics["pgd_acc"]) == {"0.25"} and metrics["epochs"] == 0 and metrics["eps"] == 1.0
    assert set(metrics["pgd_acc_ci"]) == {"0.25"}  # not the training eps the import also attacks at
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == HISTORY_COLUMNS and len(hist) == 1 and hist["epoch"].iloc[0] == 0
    assert hist["test_acc"].iloc[0] == pytest.approx(metrics["natural_acc"]) and hist["train_loss"].isna().all()
    assert hist["test_adv_acc"].notna().all()  # PGD at the model's own eps, even if not evaluated
    model, meta = load_model(out / "model.pt")
    assert meta["pretrained"].endswith("madry.pt") and meta["width"] == 0.0625 and meta["in_channels"] == 1
    assert meta["imported"] == {"kind": "robustness", "file": str(tmp_path / "madry.pt"),
                                "sha256": sha256(tmp_path / "madry.pt")}
