"""The resumable epoch loop shared by source training (`atlib.train.source`) and fine-tuning (`atlib.transfer.finetune`).

A job describes one training step, the end-of-epoch measurements and its model's state
(`EpochJob`); `EpochRunner` does the rest the same way for both: the resume state
(`atlib.train.resume`, checked against the job's fingerprint), SIGTERM/SIGUSR1 (save mid-epoch, raise
`resume.Interrupted`), the finite-loss check, named running sums, history rows, the epoch log
line, the live logging hook and the checkpoints. Under DDP every rank runs the loop; rank 0
logs, keeps the history and writes the state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from tqdm import tqdm

from atlib.train import distributed as ddp
from atlib.train import resume


class Sums:
    """Running sums of one epoch by name (loss, images, correct, ...), held in one float64 tensor
    so that adding a step's sums (and all-reducing them across ranks) is one operation."""

    def __init__(self, names: Sequence[str], device: torch.device | str = "cpu",
                 values: torch.Tensor | None = None) -> None:
        self.names = tuple(names)
        self.values = torch.zeros(len(self.names), dtype=torch.float64, device=device) if values is None \
            else values.to(device)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[self.names.index(name)]

    def pack(self, **step: Any) -> list[Any]:
        """A step's values in the order of `names` (every name must be given)."""
        if set(step) != set(self.names):
            raise ValueError(f"step sums {sorted(step)} do not match {sorted(self.names)}")
        return [step[n] for n in self.names]

    def add(self, step: torch.Tensor) -> None:
        self.values += step

    def zero(self) -> "Sums":
        return Sums(self.names, self.values.device)


class EpochJob(Protocol):
    """What a job tells the runner: its state, one step, the end of an epoch, its divergence error."""

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model weights the resume state keeps."""

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `model_state()` from a resume state (refuse one that does not fit)."""

    def batches(self, perm: torch.Tensor) -> list[torch.Tensor]:
        """The epoch's index batches from its permutation of the training set."""

    def train_mode(self) -> None:
        """Set the modules' train/eval modes for an epoch of training."""

    def step(self, idx: torch.Tensor, index: int, sums: Sums, stop: str | None) -> tuple[torch.Tensor, bool]:
        """Train on batch `idx`, the `index`-th of its epoch (optimizer step included); return its sums
        (`sums.pack` order, float64, on `sums`' device) and whether the job must stop (`stop`: the
        signal this process got)."""

    def end_epoch(self, sums: Sums) -> dict[str, float]:
        """The epoch's history entries besides epoch, lr and time_s (rank 0 measures the test set)."""

    def diverged(self, epoch: int, step: int, n_steps: int, loss: float) -> Exception:
        """The error raised for a non-finite loss at `step` (0-based) of `epoch` (0-based)."""


@dataclass
class EpochRunner:
    """The epoch loop of one job: resume, train, checkpoint, log.

    Args:
        out_dir: the job's output directory; the state lives in `out_dir/resume/`.
        fingerprint: what the state belongs to (a resume with another one is refused).
        opt, scheduler: stepped by the job / once per epoch here; saved in the state.
        generator: the data-order generator (saved with every other RNG).
        epochs: the schedule's epochs.
        n_train: training images (each epoch draws a permutation of them).
        columns: history columns (first "epoch" and "lr", last "time_s").
        sum_names: the running sums of an epoch (`Sums`).
        sums_device: where they are kept (the GPU when steps must not sync).
        log: the epoch lines; on_epoch gets each history row (rank 0).
        env: this process's DDP rank.
        checkpoint_every: epochs between checkpoints (the last epoch always saves).
        check_every: steps between finite-loss checks (each one syncs a GPU).
        show_loss_every: steps between updates of the progress bar's loss (None: never).
        desc: the progress bar's label, before "epoch e/E".
    """

    out_dir: Path
    fingerprint: dict[str, Any]
    opt: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    epochs: int
    n_train: int
    columns: Sequence[str]
    sum_names: Sequence[str]
    log: logging.Logger
    sums_device: torch.device | str = "cpu"
    env: ddp.DistEnv = field(default_factory=ddp.DistEnv)
    checkpoint_every: int = 1
    check_every: int = 1
    show_loss_every: int | None = None
    desc: str = ""
    on_epoch: Callable[[dict[str, float]], None] | None = None
    # the loop's position, what the resume state carries
    epoch: int = 0
    step: int = 0
    perm: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    epoch_time: float = 0.0

    def __post_init__(self) -> None:
        self.sums = Sums(self.sum_names, self.sums_device)

    @property
    def resume_dir(self) -> Path:
        return Path(self.out_dir) / "resume"

    def resume(self, job: EpochJob) -> None:
        """Continue from `out_dir/resume/` when a state is there (CheckpointError if foreign or corrupt)."""
        state = resume.load(self.resume_dir, self.fingerprint)
        if state is None:
            return
        job.load_model_state(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scheduler.load_state_dict(state["sched"])
        self.epoch, self.step, self.perm = state["epoch"], state["step"], state["perm"]
        self.sums = Sums(self.sum_names, self.sums_device, state["sums"])
        self.history, self.elapsed, self.epoch_time = state["history"], state["elapsed"], state["epoch_time"]
        rngs = state["rng"]  # one per rank; a job resumed on more ranks than saved reuses rank 0's
        resume.restore_rng(rngs[self.env.rank] if self.env.rank < len(rngs) else rngs[0], self.generator)
        if self.env.is_main:
            self.log.info("resuming %s from epoch %d step %d (%s)", self.out_dir, self.epoch + 1, self.step,
                          self.resume_dir)

    def save(self, job: EpochJob) -> None:
        """Write the state at the current position (a collective under DDP: every RNG is kept)."""
        rngs = ddp.gather_objects(resume.capture_rng(self.generator), self.env)
        if self.env.is_main:
            resume.save(self.resume_dir, {
                "model": job.model_state(), "opt": self.opt.state_dict(),
                "sched": resume.scheduler_state(self.scheduler), "epoch": self.epoch, "step": self.step,
                "perm": self.perm, "sums": self.sums.values.cpu(), "history": self.history,
                "elapsed": self.elapsed, "epoch_time": self.epoch_time, "rng": rngs}, self.fingerprint)
        ddp.barrier(self.env)

    def run(self, job: EpochJob) -> None:
        """Train from the current position through the last epoch."""
        with resume.GracefulExit() as stop:
            while self.epoch < self.epochs:
                t0 = time.time()
                if self.step == 0:
                    self.perm = torch.randperm(self.n_train, generator=self.generator)
                    self.sums, self.epoch_time = self.sums.zero(), 0.0
                lr = self.opt.param_groups[0]["lr"]
                self._train_epoch(job, stop, t0)
                self.step = 0
                self.scheduler.step()
                self._end_epoch(job, lr, t0)

    def _train_epoch(self, job: EpochJob, stop: resume.GracefulExit, t0: float) -> None:
        batches = job.batches(self.perm)
        job.train_mode()
        bar = tqdm(total=len(batches), initial=self.step, desc=f"{self.desc}epoch {self.epoch + 1}/{self.epochs}",
                   leave=False, disable=not self.env.is_main, mininterval=2.0)
        for step in range(self.step, len(batches)):
            requested = stop.requested
            step_sums, stopping = job.step(batches[step], step, self.sums, requested)
            self.sums.add(step_sums)
            bar.update(1)
            if self.show_loss_every and self.env.is_main and step % self.show_loss_every == 0:
                bar.set_postfix(loss=f"{self.sums['loss'] / self.sums['images']:.3f}")
            if step % self.check_every == 0 or step + 1 == len(batches) or stopping:
                loss = float(self.sums["loss"])
                if not math.isfinite(loss):
                    resume.clear(self.resume_dir)  # resuming would only diverge again
                    raise job.diverged(self.epoch, step, len(batches), loss)
            if stopping:  # a rank got SIGTERM/SIGUSR1: save mid-epoch and stop everywhere
                self._add_time(t0)
                self.step = step + 1
                self.save(job)
                raise resume.Interrupted(
                    f"{requested or 'signal'}: stopped at epoch {self.epoch + 1} step {step + 1}; state saved in "
                    f"{self.resume_dir}, rerun the job to resume")
        bar.close()

    def _end_epoch(self, job: EpochJob, lr: float, t0: float) -> None:
        """The history row, log line and hook (rank 0), then the checkpoint."""
        record = {"epoch": self.epoch + 1, "lr": lr, **job.end_epoch(self.sums)}
        self._add_time(t0)
        record["time_s"] = self.epoch_time
        if self.env.is_main:
            self.history.append({k: record.get(k, float("nan")) for k in self.columns})
            self.log.info("epoch %d/%d " + " ".join(f"{k} %.4g" for k in self.columns[1:]), self.epoch + 1,
                          self.epochs, *[self.history[-1][k] for k in self.columns[1:]])
            if self.on_epoch is not None:
                self.on_epoch(self.history[-1])
        self.epoch += 1
        if self.epoch == self.epochs or self.epoch % self.checkpoint_every == 0:
            self.save(job)

    def _add_time(self, t0: float) -> None:
        self.epoch_time += time.time() - t0
        self.elapsed += time.time() - t0

    def finish(self) -> None:
        """Remove the resume state once the job's outputs are written."""
        resume.clear(self.resume_dir)
