"""Published models of every source kind, saved by (or in the format of) their owners' code: each imports,
gives the owner's logits, refuses bad input with one message, and flows through transfer modes 0/1/2 and
the analyses (Fisher, representations, task-distance features, inversion) on a tiny target.

The architectures are the owners' own, randomly initialized: RobustBench's WideResNet-28 (width 1
instead of 10, so it runs in a test), its PreActResNet-18 (Rice2020Overfitting, full size) and
torchvision's ResNet-18; MadryLab's `robustness` ResNet-18 (width 1/4) is saved by its own
AttackerModel, the way `robustness.train` writes checkpoints.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from atlib.core.compat import import_torchvision
from atlib.data import Arrays, write_prepared
from atlib.data.store import sha256
from atlib.models.adapter import Adapted, import_robustbench
from atlib.models.checkpoint import CheckpointError, load_model
from atlib.models.resnet import NORMALIZATION
from atlib.spec.settings import FinetuneSchedule, TrainSchedule
from atlib.train.imported import import_source, load_source
from atlib.transfer.finetune import transfer

FAST = {"evaluation": {"eps": [0.5], "steps": 1, "max_images": 4}}
X = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def zoo(monkeypatch):
    """RobustBench's zoo, its Standard WRN-28-10 scaled to WRN-28-1 (the same class and code path)."""
    rb = import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = rb.model_dicts[BenchmarkDataset("cifar10")]
    monkeypatch.setitem(models[ThreatModel("Linf")]["Standard"], "model", lambda: WideResNet(depth=28, widen_factor=1))
    return models


def owner_robustbench(zoo, root: Path, name: str, tm: str) -> tuple[torch.nn.Module, dict]:
    """A zoo network saved at RobustBench's layout path, DataParallel-prefixed like Carmon2019's."""
    from robustbench.model_zoo.enums import ThreatModel

    torch.manual_seed(0)
    net = zoo[ThreatModel(tm)][name]["model"]().eval()
    path = root / "cifar10" / tm / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if k not in ("mu", "sigma")}
    torch.save({"state_dict": state}, path)  # the zoo's files hold no normalization buffers
    return net, dict(kind="robustbench", name=name, threat_model=tm, model_dir=str(root))


def owner_torchvision(root: Path) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    net = import_torchvision().models.resnet18(num_classes=10).eval()
    torch.save(net.state_dict(), root / "resnet18.pth")
    return net, dict(kind="torchvision", arch="resnet18", file=str(root / "resnet18.pth"))


def owner_robustness(root: Path) -> tuple[torch.nn.Module, dict]:
    """MadryLab's ResNet-18 in its AttackerModel under DataParallel, saved as robustness.train does."""
    import_torchvision()  # robustness imports torchvision, which needs atlib's shim on this CPU torch
    pytest.importorskip("robustness.attacker")
    dill = pytest.importorskip("dill")
    from robustness.attacker import AttackerModel
    from robustness.cifar_models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    data = types.SimpleNamespace(mean=torch.tensor([0.4914, 0.4822, 0.4465]), std=torch.tensor([0.2023, 0.1994, 0.201]))
    model = torch.nn.DataParallel(AttackerModel(ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10, wm=0.25), data))
    for m in model.modules():  # trained-looking BN statistics, so a mis-mapped buffer shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sd_info = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": None, "epoch": 150,
               "amp": None, "nat_prec1": 94.1}
    torch.save(sd_info, root / "cifar_l2_1_0.pt", pickle_module=dill)
    model.eval()
    return (lambda x: model(x)[0]), dict(kind="robustness", file=str(root / "cifar_l2_1_0.pt"))


def test_robustbench_wrn_and_preact_give_the_zoo_logits(tmp_path, zoo):
    for name, tm, head, bn in [("Standard", "Linf", "fc", "bn1"), ("Rice2020Overfitting", "L2", "linear", "bn")]:
        net, entry = owner_robustbench(zoo, tmp_path, name, tm)
        model, prov = load_source(entry, "x", "source_models.x")
        assert isinstance(model, Adapted) and (model.spec["head"], model.spec["last_bn"]) == (head, bn)
        assert prov["sha256"] == sha256(tmp_path / "cifar10" / tm / f"{name}.pt") and prov["name"] == name
        with torch.no_grad():
            assert rel_diff(model(X), net(X)) < 1e-5


def test_torchvision_resnet18_gives_torchvision_logits(tmp_path):
    net, entry = owner_torchvision(tmp_path)
    model, prov = load_source(entry, "tv_resnet18", "source_models.tv")
    assert model.spec["last_bn"] == "layer4.1.bn2" and prov["arch"] == "resnet18"
    declared, _ = load_source({**entry, "head": "fc"}, "tv_resnet18", "source_models.tv")
    assert declared.spec["last_bn"] == "layer4.1.bn2"  # what is not declared is traced
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["imagenet"])
    with torch.no_grad():
        assert rel_diff(model(X), net((X - mean) / std)) < 1e-5


def test_madrylab_checkpoint_gives_madrylab_logits(tmp_path):
    theirs, entry = owner_robustness(tmp_path)
    model, prov = load_source(entry, "resnet18", "source_models.madry")
    with torch.no_grad():
        assert rel_diff(model(X), theirs(X)) < 1e-5
    assert prov == {"kind": "robustness", "file": entry["file"], "sha256": sha256(Path(entry["file"]))}


def test_madrylab_imagenet_checkpoint_imports_as_torchvision(tmp_path, monkeypatch):
    """Salman et al.'s ImageNet grid is saved by MadryLab's code around torchvision-named networks."""
    import_torchvision()  # robustness imports torchvision, which needs atlib's shim on this CPU torch
    pytest.importorskip("robustness.attacker")
    # robustness.imagenet_models' other files import torchvision.models.utils, an alias of torch.hub's
    # loader that torchvision has since removed.
    monkeypatch.setitem(sys.modules, "torchvision.models.utils", torch.hub)
    dill = pytest.importorskip("dill")
    from robustness.attacker import AttackerModel
    from robustness.imagenet_models import resnet18

    torch.manual_seed(0)
    data = types.SimpleNamespace(mean=torch.tensor([0.485, 0.456, 0.406]), std=torch.tensor([0.229, 0.224, 0.225]))
    theirs = torch.nn.DataParallel(AttackerModel(resnet18(num_classes=10), data))
    torch.save({"model": theirs.state_dict(), "epoch": 90}, tmp_path / "resnet18_l2_eps3.ckpt", pickle_module=dill)
    model, _ = load_source(dict(kind="torchvision", arch="resnet18", file=str(tmp_path / "resnet18_l2_eps3.ckpt")),
                           "salman_r18", "source_models.salman")
    with torch.no_grad():
        assert rel_diff(model(X), theirs.eval()(X)[0]) < 1e-5


# --------------------------------------------------------------------------- bad input


def test_hash_mismatch_names_file_and_key(tmp_path):
    _, entry = owner_torchvision(tmp_path)
    entry["sha256"] = "0" * 64
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: sha256 [0-9a-f]{64} differs from 0{64} declared "
                                              r"at source_models\.tv\.sha256"):
        load_source(entry, "a", "source_models.tv")
    entry["sha256"] = sha256(tmp_path / "resnet18.pth")
    load_source(entry, "a", "source_models.tv")


def test_wrong_architecture_is_refused(tmp_path):
    _, entry = owner_torchvision(tmp_path)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: weights do not fit torchvision's resnet34 .*set "
                                              r"source_models\.tv\.arch"):
        load_source({**entry, "arch": "resnet34"}, "a", "source_models.tv")


def test_unknown_robustbench_name_suggests_close_ones(zoo):
    entry = dict(kind="robustbench", name="Carmon2019Unlabelled")
    with pytest.raises(CheckpointError, match=r"source_models\.rb\.name: 'Carmon2019Unlabelled' is not in "
                                              r"RobustBench's cifar10 Linf zoo .*closest: Carmon2019Unlabeled"):
        load_source(entry, "a", "source_models.rb")


def test_missing_robustbench_file_is_not_downloaded(tmp_path, zoo):
    entry = dict(kind="robustbench", name="Standard", model_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match=r"cifar10/Linf/Standard\.pt: RobustBench model Standard is not "
                                              r"pre-staged .*allow_download: true"):
        load_source(entry, "a", "source_models.rb")
    assert not (tmp_path / "cifar10").exists()


def test_no_file_and_no_download_is_refused():
    with pytest.raises(CheckpointError, match=r"source_models\.tv\.file: no weights file named and allow_download "
                                              r"is false"):
        load_source(dict(kind="torchvision", arch="resnet18"), "a", "source_models.tv")


def test_not_a_checkpoint_and_pickled_objects_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    entry = dict(kind="torchvision", arch="resnet18", file=str(tmp_path / "junk.pth"))
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a PyTorch checkpoint .*expected a state_dict"):
        load_source(entry, "a", "source_models.tv")
    torch.save(import_torchvision().models.resnet18(num_classes=3), tmp_path / "whole.pth")  # a pickled module
    entry["file"] = str(tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match=r"whole\.pth: saved with Python objects .*python -c \"import torch; "
                                              r".*whole\.weights\.pt"):
        load_source(entry, "a", "source_models.tv")


# --------------------------------------------------------------------------- downstream


def cifar_like(root: Path, name: str, classes: int, n: int = 24) -> Path:
    """A tiny 32x32 RGB dataset whose class is a bright band's position."""
    rng = np.random.default_rng(0)

    def make():
        y = np.arange(n) % classes
        x = rng.integers(0, 60, (n, 32, 32, 3))
        for c in range(classes):
            x[y == c, c * 3:c * 3 + 3] += 180
        return x.astype(np.uint8), y.astype(np.int64)

    out = root / "data" / name
    write_prepared(Arrays(*make(), *make(), classes=[str(c) for c in range(classes)]), out, name, classes, 32, 3,
                   "test")
    return out


@pytest.mark.parametrize("kind", ["wrn", "preact", "torchvision", "robustness"])
def test_imported_models_transfer_in_every_mode(tmp_path, zoo, kind):
    if kind == "wrn":
        _, entry = owner_robustbench(zoo, tmp_path, "Standard", "Linf")
    elif kind == "preact":
        _, entry = owner_robustbench(zoo, tmp_path, "Rice2020Overfitting", "L2")
    elif kind == "torchvision":
        _, entry = owner_torchvision(tmp_path)
    else:
        _, entry = owner_robustness(tmp_path)
    arch = "resnet18" if kind == "robustness" else kind
    out = tmp_path / "models" / "src" / arch / "eps1" / "s0"
    m = import_source(entry, cifar_like(tmp_path, "src", 10), out, arch=arch, eps=1.0, seed=0,
                      schedule=TrainSchedule.from_config(FAST), threads=1)
    assert set(m["pgd_acc"]) == {"0.5"}
    model, meta = load_model(out / "model.pt", expect_arch=arch)
    assert meta["imported"]["sha256"] == sha256(Path(meta["imported"]["file"]))
    target = cifar_like(tmp_path, "tgt", 3)
    sched = FinetuneSchedule.from_config({"epochs": 1, "batch_size": 12, "lr": 0.01, "bf16": False,
                                          "channels_last": False, **FAST})
    for mode in (0, 1, 2):
        got = transfer(out / "model.pt", target, tmp_path / f"t{mode}", mode=mode, schedule=sched, threads=1)
        assert np.isfinite(got["top1"]) and got["cached"] == (mode == 0)
        assert json.loads((tmp_path / f"t{mode}" / "metrics.json").read_text())["mode"] == mode


def test_analyses_run_on_an_imported_network(tmp_path, zoo):
    from atlib.distance.measures import extract_features
    from atlib.info.fisher import diagonal_fisher, input_fisher_summary
    from atlib.info.invert import invert

    _, entry = owner_robustbench(zoo, tmp_path, "Standard", "Linf")
    model, _ = load_source(entry, "wrn", "source_models.rb")
    x = X[:2]
    fisher = diagonal_fisher(model, x, kind="true", chunk=2, generator=torch.Generator().manual_seed(0))
    assert set(fisher) == {k for k, _ in model.named_parameters()}
    assert all(torch.isfinite(v).all() for v in fisher.values())
    inp = input_fisher_summary(model, x, 2, 2, torch.Generator().manual_seed(0), chunk=2)
    assert np.isfinite(inp["lambda1"]) and inp["lambda1"] > 0
    z = extract_features(model, x, 2, torch.device("cpu"), "wrn")
    assert z.shape == (2, model.feature_dim) and np.isfinite(z).all()
    x_hat, curves = invert(model, x, "plain", 3, 0.1, 0.1, None, torch.Generator().manual_seed(0),
                           input_shape=(3, 32, 32))
    assert x_hat.shape == x.shape and len(curves["loss"]) == 4
