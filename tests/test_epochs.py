"""The shared epoch runner on a toy job: named sums, resume, divergence, history."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import preempt_after

from atlib.train import resume
from atlib.train.epochs import EpochRunner, Sums

COLUMNS = ("epoch", "lr", "train_loss", "time_s")


class ToyJob:
    """Linear regression on 20 fixed points, 4 per batch; `poison_at` makes one step's loss NaN."""

    def __init__(self, poison_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.x, self.y = torch.randn(20, 3), torch.randn(20, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.poison_at, self.calls = poison_at, 0

    def model_state(self):
        return self.model.state_dict()

    def load_model_state(self, state) -> None:
        self.model.load_state_dict(state)

    def batches(self, perm):
        return list(perm.split(4))

    def train_mode(self) -> None:
        self.model.train()

    def step(self, idx, index, sums, stop):
        self.calls += 1
        loss = F.mse_loss(self.model(self.x[idx] + torch.randn(len(idx), 3) * 0.01), self.y[idx])
        if self.calls == self.poison_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        step = torch.tensor(sums.pack(loss=float(loss.detach()) * len(idx), images=len(idx)), dtype=torch.float64)
        return step, stop is not None

    def end_epoch(self, sums):
        return {"train_loss": float(sums["loss"] / sums["images"])}

    def diverged(self, epoch, step, n_steps, loss):
        return ValueError(f"toy diverged at epoch {epoch + 1} step {step + 1}/{n_steps} ({loss})")


def _runner(job: ToyJob, out: Path, **kw) -> EpochRunner:
    sched = torch.optim.lr_scheduler.StepLR(job.opt, 1, 0.5)
    gen = torch.Generator().manual_seed(1)
    return EpochRunner(out, {"toy": 1}, job.opt, sched, gen, 3, 20, COLUMNS, ("loss", "images"),
                       logging.getLogger("test"), **kw)


def _run(out: Path, **kw) -> tuple[ToyJob, EpochRunner]:
    job = ToyJob()
    runner = _runner(job, out, **kw)
    runner.resume(job)
    runner.run(job)
    return job, runner


def test_sums_are_named_and_complete():
    s = Sums(("loss", "images"))
    s.add(torch.tensor(s.pack(images=4, loss=2.0), dtype=torch.float64))
    assert float(s["loss"]) == 2.0 and float(s["images"]) == 4.0
    with pytest.raises(ValueError, match="do not match"):
        s.pack(loss=1.0)
    assert float(s.zero()["loss"]) == 0.0


def test_stop_and_resume_gives_the_same_weights_and_history(tmp_path):
    ref_job, ref = _run(tmp_path / "ref")
    with pytest.raises(resume.Interrupted, match="SIGUSR1: stopped at epoch 2 step 1;"):
        _run(tmp_path / "cut", on_epoch=preempt_after(1))
    state = resume.load(tmp_path / "cut" / "resume", {"toy": 1})
    assert (state["epoch"], state["step"]) == (1, 1)
    seen = []
    job, runner = _run(tmp_path / "cut", on_epoch=seen.append)
    assert torch.equal(job.model.weight, ref_job.model.weight) and torch.equal(job.model.bias, ref_job.model.bias)
    assert [r["epoch"] for r in runner.history] == [1, 2, 3] and [r["epoch"] for r in seen] == [2, 3]
    assert [r["train_loss"] for r in runner.history] == [r["train_loss"] for r in ref.history]
    assert [r["lr"] for r in runner.history] == [0.1, 0.05, 0.025]


def test_non_finite_loss_raises_the_jobs_error_and_clears_the_state(tmp_path):
    job = ToyJob(poison_at=7)  # epoch 2 (5 steps per epoch), step 2
    runner = _runner(job, tmp_path)
    with pytest.raises(ValueError, match=r"toy diverged at epoch 2 step 2/5 \(nan\)"):
        runner.run(job)
    assert not (tmp_path / "resume").exists()
    job = ToyJob(poison_at=2)  # checked at steps 1 and 4 (every 3) and the last: found at step 4
    with pytest.raises(ValueError, match=r"epoch 1 step 4/5"):
        _runner(job, tmp_path, check_every=3).run(job)
