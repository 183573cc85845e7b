"""DDP on CPU (2 gloo ranks) reproduces the single-process run with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from atlib.models.checkpoint import safe_load
from atlib.spec.settings import TrainSchedule
from atlib.train.distributed import DistEnv, shard_span
from atlib.train.source import train_source

# fp32, no channels_last: the comparison is about the algorithm, not bf16 rounding. The
# attack has no random start (ranks draw independent noise); augmentation is on, drawn for
# the global batch. 60 images / batch 16: the last global batch (12) splits 6/6.
SCHED = TrainSchedule.from_config({
    "epochs": 2, "batch_size": 16, "lr": 0.05, "lr_schedule": "cosine", "bf16": False, "channels_last": False,
    "attack": {"steps": 2, "random_start": False}, "augment": {"crop_pad": 1, "flip": True},
    "evaluation": {"eps": [0.5], "steps": 2, "max_images": 8}})


def test_shard_span_covers_the_batch():
    for n in (1, 5, 16, 17):
        spans = [shard_span(n, DistEnv(r, 3)) for r in range(3)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


def test_two_gloo_ranks_equal_one_process(tiny_prepared: Path, tmp_path: Path):
    kw = dict(arch="resnet8", width=0.0625, eps=0.5, seed=1, schedule=SCHED)
    single = train_source(tiny_prepared, tmp_path / "single", threads=1, **kw)
    multi = train_source(tiny_prepared, tmp_path / "ddp", threads=2, world_size=2, **kw)
    a = safe_load(tmp_path / "single" / "model.pt")["state_dict"]
    b = safe_load(tmp_path / "ddp" / "model.pt")["state_dict"]
    assert a.keys() == b.keys()  # synchronized BatchNorm saved under the plain names
    for k in a:
        if a[k].is_floating_point():
            rel = (a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)
            assert rel <= 1e-5, (k, float(rel))
        else:
            assert torch.equal(a[k], b[k]), k
    ha, hb = pd.read_csv(tmp_path / "single" / "history.csv"), pd.read_csv(tmp_path / "ddp" / "history.csv")
    assert (ha["train_loss"] - hb["train_loss"]).abs().max() < 1e-5  # all-reduced over ranks
    assert list(ha["train_adv_acc"]) == list(hb["train_adv_acc"])
    assert multi["natural_acc"] == single["natural_acc"] and not (tmp_path / "ddp" / "resume").exists()
