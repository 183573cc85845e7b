"""Source training: outputs and their contracts, objectives, divergence, augmentation, schedules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import preempt_after

from atlib.models.checkpoint import load_model
from atlib.models.resnet import weight_norm
from atlib.spec.schema import ConfigError, load_schema
from atlib.spec.settings import FinetuneSchedule, TrainSchedule
from atlib.train import source as train_mod
from atlib.train.augment import augment_batch, is_random, random_crop, random_flip
from atlib.train.source import HISTORY_COLUMNS, TrainingError, train_source

METRIC_KEYS = {"natural_acc", "natural_acc_ci", "pgd_acc", "pgd_acc_ci", "attack_of_record", "weight_norm", "epochs",
               "train_time_s", "eps", "source", "arch", "seed"}


def tiny_schedule(**over) -> TrainSchedule:
    sched = {"epochs": 2, "batch_size": 16, "lr": 0.05, "lr_schedule": "cosine", "attack": {"steps": 2},
             "evaluation": {"eps": [0.25, 0.5], "steps": 3, "max_images": 12}, "augment": {"crop_pad": 1, "flip": True}}
    sched.update(over)
    return TrainSchedule.from_config(sched)


@pytest.mark.parametrize("eps,objective,norm", [(0.0, "madry", "l2"), (0.5, "madry", "l2"), (0.5, "trades", "l2"),
                                                (0.05, "madry", "linf"), (0.5, "gaussian", "l2")])
def test_train_source_outputs(tiny_prepared: Path, tmp_path: Path, eps, objective, norm):
    out = tmp_path / "model"
    sched = tiny_schedule(objective=objective, attack={"steps": 2, "norm": norm})
    metrics = train_source(tiny_prepared, out, arch="resnet8", width=0.0625, eps=eps, seed=3, schedule=sched,
                           threads=1)
    assert set(metrics) == METRIC_KEYS
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics["pgd_acc"]) == set(metrics["pgd_acc_ci"]) == {"0.25", "0.5"}
    ci = metrics["pgd_acc_ci"]["0.5"]  # PGD on max_images 12: its count, and a Wilson interval around it
    assert ci["n"] == 12 and 100 * ci["correct"] / 12 == pytest.approx(metrics["pgd_acc"]["0.5"])
    assert ci["lo"] <= metrics["pgd_acc"]["0.5"] <= ci["hi"] and ci["hi"] - ci["lo"] > 20  # 12 images: wide
    assert metrics["epochs"] == 2 and metrics["eps"] == eps and metrics["source"] == "tiny" and metrics["seed"] == 3
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == HISTORY_COLUMNS and list(hist["epoch"]) == [1, 2]
    assert hist["lr"].iloc[0] == pytest.approx(0.05) and hist["lr"].iloc[1] < 0.05  # cosine, per epoch
    assert hist[["train_loss", "train_acc", "test_acc", "weight_norm"]].notna().all().all()
    assert hist["test_adv_acc"].isna().all() == (eps == 0) and hist["train_adv_acc"].isna().all() == (eps == 0)
    model, meta = load_model(out / "model.pt", expect_arch="resnet8")
    assert meta["eps"] == eps and meta["source"] == "tiny" and meta["in_channels"] == 1 and meta["image_size"] == 8
    assert meta["normalization"] is None and meta["num_classes"] == 3
    assert metrics["weight_norm"] == pytest.approx(weight_norm(model))
    assert not (out / "resume").exists()


class _Counting(torch.nn.Module):
    """Wraps a model and records the inputs of every forward pass."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def test_gaussian_objective_one_noisy_forward():
    """Gaussian training costs one forward per batch (as standard training; PGD-2 costs three), on
    x + noise of norm ~eps, fresh at each step."""
    from atlib.models.resnet import build_model

    sched = tiny_schedule(objective="gaussian")
    x, y = torch.rand(6, 1, 8, 8) * 0.2 + 0.4, torch.arange(6) % 3
    counts = {}
    for objective in ("gaussian", "madry"):
        torch.manual_seed(0)
        net = _Counting(build_model("resnet8", 3, 1, width=0.0625))
        obj = train_mod.Objective(net, 1.0, dataclasses.replace(sched, objective=objective))
        losses, logits, nat = obj(x, y)
        counts[objective] = len(net.inputs)
        if objective == "gaussian":
            assert losses.shape == (6,) and logits.shape == (6, 3) and nat is None
            d = net.inputs[0] - x
            norms = torch.linalg.vector_norm(d.flatten(1), dim=1)
            assert ((norms > 0.7) & (norms < 1.3)).all()  # n = 64: norm ~ eps * (1 +- 1/sqrt(128))
            obj(x, y)
            assert not torch.equal(net.inputs[1], net.inputs[0])
    assert counts == {"gaussian": 1, "madry": 3}


def test_gaussian_training_resumes_bit_identically(tiny_prepared: Path, tmp_path: Path):
    from atlib.models.checkpoint import safe_load
    from atlib.train import resume

    sched = tiny_schedule(objective="gaussian", epochs=3)
    args = dict(arch="resnet8", width=0.0625, eps=1.0, seed=4, schedule=sched, threads=1)
    train_source(tiny_prepared, tmp_path / "ref", **args)
    with pytest.raises(resume.Interrupted, match="SIGUSR1"):
        train_source(tiny_prepared, tmp_path / "cut", on_epoch=preempt_after(1), **args)
    assert resume.load(tmp_path / "cut" / "resume")["epoch"] == 1
    train_source(tiny_prepared, tmp_path / "cut", **args)
    ref, cut = safe_load(tmp_path / "ref" / "model.pt"), safe_load(tmp_path / "cut" / "model.pt")
    assert all(torch.equal(ref["state_dict"][k], cut["state_dict"][k]) for k in ref["state_dict"])
    assert ref["meta"]["objective"] == "gaussian"
    # the noise matters: the same seed without it (standard training) ends elsewhere
    train_source(tiny_prepared, tmp_path / "std", **{**args, "schedule": tiny_schedule(epochs=3), "eps": 0.0})
    std = safe_load(tmp_path / "std" / "model.pt")["state_dict"]
    assert not all(torch.equal(ref["state_dict"][k], std[k]) for k in std)


def test_training_learns(tiny_prepared: Path, tmp_path: Path):
    sched = tiny_schedule(epochs=6, augment={}, lr=0.1, bf16=False)
    m = train_source(tiny_prepared, tmp_path / "m", arch="resnet8", width=0.125, eps=0.0, schedule=sched, threads=1)
    assert m["natural_acc"] > 60  # 3 classes, a visible band: chance is 33%


def test_nan_loss_stops_naming_epoch_and_step(tiny_prepared: Path, tmp_path: Path, monkeypatch):
    forward = train_mod.Objective.forward
    calls = {"n": 0}

    def poisoned(self, x, y):
        losses, logits, nat = forward(self, x, y)
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2 (4 steps per epoch), step 2
            losses = losses * float("nan")
        return losses, logits, nat

    monkeypatch.setattr(train_mod.Objective, "forward", poisoned)
    out = tmp_path / "model"
    with pytest.raises(TrainingError, match=r"epoch 2, step 2/4"):
        train_source(tiny_prepared, out, arch="resnet8", width=0.0625, eps=0.0, schedule=tiny_schedule(), threads=1)
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    assert not (out / "resume").exists()


def test_schedule_defaults_fill_and_refuse():
    s = TrainSchedule.from_config({"epochs": 3})
    assert s.epochs == 3 and s.attack["steps"] == 7 and s.evaluation["restarts"] == 1 and s.milestones == (50, 100)
    assert s.objective == "madry" and s.augment == {"crop_pad": 0, "flip": False}
    assert s.evaluation is not TrainSchedule.from_config({"epochs": 3}).evaluation  # each its own copy
    with pytest.raises(ConfigError, match=r"train_schedule error at attack\.norm"):
        TrainSchedule.from_config({"attack": {"norm": "l3"}})
    with pytest.raises(ConfigError, match=r"finetune_schedule error: unknown key\(s\) 'objective', 'stpes'"):
        FinetuneSchedule.from_config({"stpes": 3, "objective": "madry"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 4  # type: ignore[misc]


@pytest.mark.parametrize("cls", [TrainSchedule, FinetuneSchedule])
def test_schedule_fields_are_the_schemas_keys_with_its_defaults(cls):
    schema = load_schema()["$defs"][cls.KIND]["properties"]
    assert sorted(f.name for f in dataclasses.fields(cls)) == sorted(schema)
    filled = cls.from_config()
    for key, spec in schema.items():
        got, want = getattr(filled, key), spec["default"]
        if want == {}:  # a section (attack, augment, evaluation): its own keys' defaults
            assert isinstance(got, dict) and got, key
        else:
            assert got == (tuple(want) if key == "milestones" else want), key


def test_random_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    c = random_crop(x, 2, g)
    assert c.shape == x.shape
    # Every crop is a window of the zero-padded image: its nonzero values are a shifted block.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(c[i, 0], padded[i, 0, a:a + 4, b:b + 4]) for a in range(5) for b in range(5))
    f = random_flip(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1))
    # Same generator state, same augmentation; a shard draws the global batch's numbers.
    spec = {"crop_pad": 1, "flip": True}
    full = augment_batch(x, spec, torch.Generator().manual_seed(5))
    part = augment_batch(x[1:], spec, torch.Generator().manual_seed(5), span=(1, 2))
    assert torch.equal(full[1:], part)
    assert torch.equal(augment_batch(x, {}, None), x) and is_random(spec) and not is_random({"crop_pad": 0})


def test_augment_channels_last():
    """A channels_last batch comes back channels_last, with the images of the contiguous batch."""
    cl = torch.channels_last
    x = torch.rand(3, 3, 6, 6)
    for spec in ({"crop_pad": 2, "flip": True}, {"crop_pad": 2}, {"flip": True}):
        y = augment_batch(x.contiguous(memory_format=cl), spec, torch.Generator().manual_seed(0))
        plain = augment_batch(x, spec, torch.Generator().manual_seed(0))
        assert y.is_contiguous(memory_format=cl) and not y.is_contiguous(), spec
        assert plain.is_contiguous() and not plain.is_contiguous(memory_format=cl), spec  # the check tells them apart
        assert torch.equal(y, plain), spec
