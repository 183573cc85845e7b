"""Resumable training: bit-identical resume after SIGUSR1, SIGKILL and SIGTERM; refused states."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import preempt_after

from atlib.models.checkpoint import CheckpointError, safe_load
from atlib.spec.settings import TrainSchedule
from atlib.train import resume
from atlib.train.source import train_source

ROOT = Path(__file__).resolve().parent.parent
# Adversarial, augmented, step schedule (its Counter milestones), momentum: everything resume must carry.
SCHED_ENTRY = {"epochs": 3, "batch_size": 16, "lr": 0.05, "lr_schedule": "step", "milestones": [1, 2],
         "attack": {"steps": 2}, "augment": {"crop_pad": 1, "flip": True},
         "evaluation": {"eps": [0.5], "steps": 2, "max_images": 8}}
SCHED = TrainSchedule.from_config(SCHED_ENTRY)
ARGS = dict(arch="resnet8", width=0.0625, eps=0.5, seed=7, threads=1)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return safe_load(out / "model.pt")["state_dict"]


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture
def reference(tiny_prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "uninterrupted"
    train_source(tiny_prepared, out, schedule=SCHED, **ARGS)
    return out


def test_sigusr1_then_resume_is_bit_identical(tiny_prepared: Path, tmp_path: Path, reference: Path):
    out = tmp_path / "stopped"
    with pytest.raises(resume.Interrupted, match="SIGUSR1: stopped at epoch 2 step 1;"):
        train_source(tiny_prepared, out, schedule=SCHED, on_epoch=preempt_after(1), **ARGS)
    state = resume.load(out / "resume")
    assert (state["epoch"], state["step"]) == (1, 1) and not (out / "model.pt").exists()
    train_source(tiny_prepared, out, schedule=SCHED, **ARGS)
    _assert_identical(reference, out)
    assert not (out / "resume").exists()


def _slow_run(tiny_prepared: Path, out: Path) -> subprocess.Popen:
    """train_source in a child process whose steps are slowed down (so a signal lands mid-epoch)."""
    code = textwrap.dedent(f"""
        import time
        from atlib.spec.settings import TrainSchedule
        from atlib.train import source as train
        forward = train.Objective.forward
        def slow(self, x, y):
            time.sleep(0.15)
            return forward(self, x, y)
        train.Objective.forward = slow
        train.train_source({str(tiny_prepared)!r}, {str(out)!r}, schedule=TrainSchedule.from_config({SCHED_ENTRY!r}),
                           **{ARGS!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny_prepared: Path, tmp_path: Path, reference: Path):
    out = tmp_path / "killed"
    proc = _slow_run(tiny_prepared, out)
    _wait_for(out / "resume" / "state.pt", proc)  # epoch 1 checkpointed
    time.sleep(0.3)  # two steps into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists()
    assert resume.load(out / "resume")["epoch"] == 1  # the epoch-boundary checkpoint survived
    train_source(tiny_prepared, out, schedule=SCHED, **ARGS)
    _assert_identical(reference, out)


def test_sigterm_saves_mid_epoch_and_resume_is_bit_identical(tiny_prepared: Path, tmp_path: Path,
                                                             reference: Path):
    out = tmp_path / "preempted"
    proc = _slow_run(tiny_prepared, out)
    _wait_for(out / "resume" / "state.pt", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "SIGTERM" in err and "rerun the job to resume" in err
    state = resume.load(out / "resume")
    assert state["epoch"] == 1 and 0 < state["step"] < 4  # saved inside epoch 2
    train_source(tiny_prepared, out, schedule=SCHED, **ARGS)
    _assert_identical(reference, out)


def test_corrupt_and_foreign_states_are_refused(tmp_path: Path):
    d = tmp_path / "resume"
    assert resume.load(d) is None
    resume.save(d, {"epoch": 2, "w": torch.ones(3)}, {"eps": 1.0, "seed": 0})
    assert resume.load(d, {"eps": 1.0, "seed": 0})["epoch"] == 2
    with pytest.raises(CheckpointError, match=r"state\.pt.*another job \(eps: saved 1\.0, this job 0\.5\)"):
        resume.load(d, {"eps": 0.5, "seed": 0})
    (d / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"resume/state\.pt: corrupt or truncated resume state "
                                              r"\(UnpicklingError\); delete .*resume to start"):
        resume.load(d)


def test_corrupt_state_stops_training_naming_the_file(tiny_prepared: Path, tmp_path: Path):
    out = tmp_path / "m"
    (out / "resume").mkdir(parents=True)
    (out / "resume" / "state.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=str(out / "resume" / "state.pt")):
        train_source(tiny_prepared, out, schedule=SCHED, **ARGS)


def test_rng_capture_restore(tmp_path: Path):
    g = torch.Generator().manual_seed(1)
    state = resume.capture_rng(g)
    a = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    resume.save(tmp_path, state)  # through a weights_only load
    resume.restore_rng(resume.load(tmp_path), g)
    b = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and torch.equal(a[3], b[3])


def test_graceful_exit_flags_and_restores():
    before = signal.getsignal(signal.SIGUSR1)
    with resume.GracefulExit() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert stop.requested == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before
