"""Shared fixtures: tiny prepared datasets and single-threaded torch for fast, quiet tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    """A 3-class, 8x8 grayscale prepared dataset with learnable (class-dependent) images."""
    from atlib.data import Arrays, write_prepared

    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 8, 8, 1))
        for c in range(3):
            x[y == c, c * 2:(c * 2) + 3, :, 0] += 180  # a bright band whose position is the class
        return x.astype(np.uint8), y.astype(np.int64)

    out = tmp_path / "tiny"
    write_prepared(Arrays(*make(60), *make(30), classes=["a", "b", "c"]), out, "tiny", 3, 8, 1, "test")
    return out


def save_tiny_model(path: Path, num_classes: int = 3, in_channels: int = 1, arch: str = "resnet8",
                    **meta) -> torch.nn.Module:
    """A seeded resnet8 (width 0.125, 8x8 inputs) saved as an atlib checkpoint; extra meta merged in."""
    from atlib.models.checkpoint import save_model
    from atlib.models.resnet import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes, in_channels, width=0.125)
    save_model(path, model, {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
                             "width": 0.125, "normalization": None, "image_size": 8, **meta})
    return model


def preempt_after(epoch: int):
    """An `on_epoch` hook that sends this process SIGUSR1 (a cluster's preemption warning) at the end of
    `epoch`: the job stops after the next step and saves its state there, as a preempted job does."""

    def hook(row: dict) -> None:
        if row["epoch"] == epoch:
            signal.raise_signal(signal.SIGUSR1)

    return hook


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny config through every rule, in its own working directory (own .snakemake/); shared by
    the workflow and recommend tests (a test that adds files works on a copy)."""
    work = tmp_path_factory.mktemp("tiny")
    r = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2", "-d",
                        str(work), "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--config",
                        "results=results"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return work
