"""Transfer: which parameters each mode trains, frozen BN statistics, the mode-0 cache, outputs,
refusals and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import preempt_after
from torch import nn

from atlib.data import Arrays, write_prepared
from atlib.models.adapter import tail_split
from atlib.models.checkpoint import load_model, save_model
from atlib.models.resnet import build_model
from atlib.spec.settings import FinetuneSchedule
from atlib.train import resume
from atlib.transfer.cache import use_cache
from atlib.transfer.finetune import HISTORY_COLUMNS, transfer
from atlib.transfer.inputs import TransferError, parse_model_key
from atlib.transfer.modes import freeze_for_mode, new_head, set_train_mode

METRIC_KEYS = {"top1", "top1_ci", "pgd_acc", "pgd_acc_ci", "attack_of_record", "mode", "target", "source_model",
               "eps", "seed", "epochs", "cached", "train_time_s"}
KEY = "src/resnet8/eps1/s0"


def schedule(**kw) -> FinetuneSchedule:
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "lr_schedule": "cosine", "bf16": False,
            "channels_last": False, "evaluation": {"eps": [0.5], "steps": 1, "max_images": 8}}
    return FinetuneSchedule.from_config({**base, **kw})


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so 'unchanged' and 'equal' mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def make_source(root: Path, arch: str = "resnet8", in_channels: int = 1, key: str = KEY) -> Path:
    torch.manual_seed(0)
    model = build_model(arch, 5, in_channels, width=0.125)
    _randomize_bn(model)
    path = root / "models" / key / "model.pt"
    save_model(path, model, {"arch": arch, "num_classes": 5, "in_channels": in_channels, "width": 0.125,
                             "normalization": None, "image_size": 8, "eps": 1.0})
    return path


def make_target(root: Path, name: str = "tgt", channels: int = 1, n_train: int = 48, n_test: int = 24) -> Path:
    rng = np.random.default_rng(1)

    def make(n: int):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 8, 8, channels))
        for c in range(3):
            x[y == c, c * 2:c * 2 + 3] += 180  # a bright band whose position is the class
        return x.astype(np.uint8), y.astype(np.int64)

    out = root / "data" / name
    write_prepared(Arrays(*make(n_train), *make(n_test), classes=["a", "b", "c"]), out, name, 3, 8, channels, "test")
    return out


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    return make_source(tmp_path), make_target(tmp_path)


def _trained_names(mode: int) -> set[str]:
    model = build_model("resnet8", 5, 1, width=0.125)
    new_head(model, 3)
    freeze_for_mode(model, mode)
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_modes_train_exactly_the_intended_parameters():
    names = [n for n, _ in build_model("resnet8", 5, 1, width=0.125).named_parameters()]
    bn = {n for n in names if ".bn" in n or n.startswith("bn1") or "downsample.1" in n}
    assert _trained_names(0) == {"fc.weight", "fc.bias", "layer3.0.bn2.weight", "layer3.0.bn2.bias"}
    assert _trained_names(1) == {"fc.weight", "fc.bias"} | bn
    assert _trained_names(2) == set(names)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("policy", ["train", "eval"])
def test_train_mode_keeps_frozen_modules_in_eval(mode, policy):
    model = build_model("resnet8", 5, 1, width=0.125)
    set_train_mode(model, mode, policy)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            trained = mode > 0 or m is model.last_bn()
            assert m.training == (trained and policy == "train"), name
        elif isinstance(m, nn.Conv2d):
            assert m.training == (mode == 2), name


def _changed(a: dict, b: dict, keys) -> set[str]:
    return {k for k in keys if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("mode,policy", [(0, "train"), (0, "eval"), (1, "train"), (1, "eval"), (2, "train")])
def test_an_epoch_changes_only_what_the_mode_trains(tmp_path, setup, mode, policy):
    src, tgt = setup
    out = tmp_path / "saved.pt"
    transfer(src, tgt, tmp_path / "out", mode=mode, schedule=schedule(epochs=1, bn_policy=policy),
             save_model_to=out)
    before = torch.load(src, weights_only=True)["state_dict"]
    after = torch.load(out, weights_only=True)["state_dict"]
    keys = [k for k in before if not k.startswith("fc.")]
    convs = [k for k in keys if before[k].dim() == 4 and not k.startswith("normalize.")]
    stats = [k for k in keys if k.endswith(("running_mean", "running_var"))]
    last = "layer3.0.bn2"
    if mode < 2:
        assert not _changed(before, after, convs)  # trunk convs frozen
    else:
        assert _changed(before, after, convs) == set(convs)
    trained_bn = {k for k in stats if mode > 0 or k.startswith(last + ".")}
    moved = trained_bn if policy == "train" else set()
    assert _changed(before, after, stats) == moved  # frozen (and "eval"-policy) BN statistics unchanged
    affine = [k for k in keys if k.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight"))]
    expect = set(affine) if mode > 0 else {last + ".weight"}
    assert _changed(before, after, affine) == expect
    assert after["fc.weight"].shape == (3, before["fc.weight"].shape[1])


@pytest.mark.parametrize("arch", ["resnet8", "resnet18"])  # last block with and without a downsample
@pytest.mark.parametrize("train", [False, True])
def test_cached_tail_equals_full_forward(arch, train):
    torch.manual_seed(0)
    model = build_model(arch, 4, 3, width=0.125)
    _randomize_bn(model)
    new_head(model, 3)
    assert (model.last_block().downsample is None) == (arch == "resnet18")
    x = torch.rand(6, 3, 16, 16)
    split, why = tail_split(model, x[:2])
    assert split is not None, why
    model.eval()  # the cache is built in eval mode
    parts = split.trunk(x)
    assert len(parts) == 2  # the last BN's input and the shortcut
    if train:  # the last BN normalizes with batch statistics, as in training
        set_train_mode(model, 0, "train")
    with torch.no_grad():
        full = model(x)
        tail = split.tail(parts)
    torch.testing.assert_close(tail, full, rtol=1e-5, atol=1e-5)


def test_cached_and_plain_paths_agree(tmp_path, setup):
    src, tgt = setup
    runs = {}
    for policy in ("never", "always"):
        m = transfer(src, tgt, tmp_path / policy, mode=0, seed=3, schedule=schedule(epochs=3, cache_features=policy))
        runs[policy] = (m, pd.read_csv(tmp_path / policy / "history.csv"))
    (plain, hp), (cached, hc) = runs["never"], runs["always"]
    assert not plain["cached"] and cached["cached"]
    assert abs(plain["top1"] - cached["top1"]) <= 0.5
    np.testing.assert_allclose(hc["train_loss"], hp["train_loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hc[["train_acc", "test_top1"]], hp[["train_acc", "test_top1"]], atol=0.5)


def test_cache_policy():
    aug = {"crop_pad": 2, "flip": False}
    assert use_cache(0, schedule(cache_features="auto", augment={"crop_pad": 0, "flip": False}))
    assert not use_cache(0, schedule(cache_features="auto", augment=aug))
    assert not use_cache(0, schedule(cache_features="never", augment={"crop_pad": 0, "flip": False}))
    assert not use_cache(1, schedule(cache_features="always", augment=aug))  # a mode-0 path only
    with pytest.raises(TransferError, match="augment"):
        use_cache(0, schedule(cache_features="always", augment=aug))


def test_outputs_and_metric_keys(tmp_path, setup):
    src, tgt = setup
    out = tmp_path / "out"
    m = transfer(src, tgt, out, mode=0, seed=1, schedule=schedule(augment={"flip": True}))
    assert set(m) == METRIC_KEYS
    assert json.loads((out / "metrics.json").read_text()) == m
    assert m["source_model"] == KEY and m["eps"] == 1.0 and m["target"] == "tgt" and m["mode"] == 0
    assert m["cached"] is False  # flip on: "auto" trains the full model
    assert list(m["pgd_acc"]) == ["0.5"] and 0 <= m["top1"] <= 100
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == list(HISTORY_COLUMNS) and list(hist["epoch"]) == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json"]  # no resume dir, no temp files


def test_refusals_name_target_and_source(tmp_path, setup):
    src, tgt = setup
    with pytest.raises(TransferError, match=r"src/resnet8/eps1/s0 to tgt.*resnet8.*resnet18"):
        transfer(src, tgt, tmp_path / "a", mode=0, schedule=schedule(), arch="resnet18")
    rgb = make_target(tmp_path, "rgb", channels=3)
    with pytest.raises(TransferError, match=r"src/resnet8/eps1/s0 to rgb.*3-channel.*1-channel"):
        transfer(src, rgb, tmp_path / "b", mode=0, schedule=schedule())
    meta = json.loads((tgt / "meta.json").read_text())
    meta["splits"] = {"train": 0, "test": meta["splits"]["train"] + meta["splits"]["test"]}
    (tgt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TransferError, match=r"src/resnet8/eps1/s0 to tgt.*train split is empty"):
        transfer(src, tgt, tmp_path / "c", mode=0, schedule=schedule())
    assert not any((tmp_path / d).exists() for d in "abc")


def test_gray_target_feeds_an_rgb_model(tmp_path):
    src = make_source(tmp_path, in_channels=3)
    m = transfer(src, make_target(tmp_path), tmp_path / "out", mode=0, schedule=schedule(epochs=1))
    assert m["cached"]


class _Killed(Exception):
    """What the job sees of a kill between an epoch's end and its checkpoint."""


def _killed_after(epoch: int):
    def hook(row: dict) -> None:
        if row["epoch"] == epoch:
            raise _Killed

    return hook


@pytest.mark.parametrize("mode,cache", [(0, "always"), (2, "never")])
def test_resume_gives_identical_weights(tmp_path, setup, mode, cache):
    src, tgt = setup
    sched = schedule(epochs=3, cache_features=cache, augment={"flip": cache == "never"})
    ref = transfer(src, tgt, tmp_path / "ref", mode=mode, seed=5, schedule=sched, save_model_to=tmp_path / "ref.pt")
    out = tmp_path / "run"
    with pytest.raises(_Killed):  # epoch 2 trained but not saved: the rerun starts from epoch 1's checkpoint
        transfer(src, tgt, out, mode=mode, seed=5, schedule=sched, on_epoch=_killed_after(2))
    state = resume.load(out / "resume")
    assert (state["epoch"], state["step"]) == (1, 0) and not (out / "metrics.json").exists()
    with pytest.raises(resume.Interrupted, match="SIGUSR1: stopped at epoch 3 step 1;"):  # mid-epoch
        transfer(src, tgt, out, mode=mode, seed=5, schedule=sched, on_epoch=preempt_after(2))
    got = transfer(src, tgt, out, mode=mode, seed=5, schedule=sched, save_model_to=tmp_path / "got.pt")
    a, _ = load_model(tmp_path / "ref.pt")
    b, _ = load_model(tmp_path / "got.pt")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert got["top1"] == ref["top1"] and got["pgd_acc"] == ref["pgd_acc"]
    assert pd.read_csv(out / "history.csv").drop(columns="time_s").equals(
        pd.read_csv(tmp_path / "ref" / "history.csv").drop(columns="time_s"))
    assert not (out / "resume").exists()


def test_cache_too_large_falls_back_or_fails(tmp_path, setup, monkeypatch):
    src, tgt = setup
    monkeypatch.setattr("atlib.transfer.cache.cache_nbytes", lambda *a, **k: 2**40)
    m = transfer(src, tgt, tmp_path / "auto", mode=0, schedule=schedule(epochs=1, cache_max_mb=100))
    assert m["cached"] is False
    with pytest.raises(TransferError, match="cache_max_mb"):
        transfer(src, tgt, tmp_path / "always", mode=0, schedule=schedule(epochs=1, cache_features="always"))


def test_parse_model_key_reads_both_path_tags():
    assert parse_model_key("r/models/src/resnet8/eps0.5/s1/model.pt") == ("src/resnet8/eps0.5/s1", "resnet8", 0.5)
    assert parse_model_key("r/models/src/resnet8/gn1/s0/model.pt") == ("src/resnet8/gn1/s0", "resnet8", 1.0)
    assert parse_model_key("x", "src/resnet8/gn0.25/s2") == ("src/resnet8/gn0.25/s2", "resnet8", 0.25)
    assert parse_model_key("x", "src/resnet8/noise1/s2") == ("src/resnet8/noise1/s2", None, None)
