"""Source training (rule train_source): standard (eps 0), PGD adversarial and Gaussian-noise training.

Madry et al.'s objective (the paper's Eq. 1), TRADES (Eq. 2) or Gaussian noise of L2 norm ~eps
(objective `gaussian`, `attacks.gaussian_noise`; the paper's weaker regularizer of Section 3,
about the cost of standard training), SGD with the schedule of
the config, bf16 autocast and channels_last where the schedule enables them, resumable
from `<out_dir>/resume/` (bit-identical on CPU), and DDP across ranks with the same global
batch. Outputs (model.pt, history.csv, metrics.json) are written atomically at the very end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from atlib.core.io import atomic_write, write_json_atomic
from atlib.core.runtime import (
    EVAL_BATCH,
    autocast,
    eval_mode,
    pick_device,
    seed_everything,
    set_threads,
    to_memory_format,
)
from atlib.data import Prepared, TensorPairs, load_batches, split_data
from atlib.models.checkpoint import save_model
from atlib.models.resnet import NORMALIZATION, build_model, weight_norm
from atlib.spec.settings import TrainSchedule
from atlib.train import distributed as ddp
from atlib.train import resume
from atlib.train.attacks import evaluate, gaussian_noise, pgd, trades_loss
from atlib.train.augment import augment_batch
from atlib.train.epochs import EpochRunner, Sums
from atlib.train.evaluation import accuracy, evaluate_dataset, robust_metrics
from atlib.train.optim import make_optimizer, make_scheduler

logger = logging.getLogger("atlib.train.source")

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "train_adv_acc", "test_acc", "test_adv_acc",
                   "weight_norm", "time_s"]
# For eps > 0: train_acc is clean accuracy, train_adv_acc the accuracy on the batch actually
# trained on (PGD examples; for objective gaussian the noisy batch), test_adv_acc PGD accuracy at
# the training eps (for gaussian too: the noise model's robustness to the attack of the same eps).
# Clean accuracy of adversarial training is measured on every NATURAL_EVERY-th batch only:
# an extra forward per batch would cost ~6% of a PGD-2..7 step for a monitoring number.
NATURAL_EVERY = 5
# Images attacked per epoch for test_adv_acc (capped further by evaluation.max_images).
EPOCH_ADV_IMAGES = 500


class TrainingError(RuntimeError):
    """A training failure the user can act on (divergence, a failed DDP rank)."""


class Objective(nn.Module):
    """The training loss of one batch, as a module so DDP sees one forward per step.

    forward(x, y) -> (per-example loss, logits on the trained inputs (adversarial, or noisy
    for objective gaussian, when eps > 0), clean logits when the objective computes them
    anyway (TRADES), else None).
    """

    def __init__(self, net: nn.Module, eps: float, sched: TrainSchedule) -> None:
        super().__init__()
        self.net, self.eps = net, float(eps)
        a = sched.attack
        self.objective, self.beta = sched.objective, float(sched.trades_beta)
        self.steps, self.norm = int(a["steps"]), a["norm"]
        self.step_size = float(a["step_size_factor"]) * self.eps / self.steps
        self.random_start, self.bn_eval = bool(a["random_start"]), bool(a["bn_eval"])

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        if self.eps == 0:
            logits = self.net(x)
            return F.cross_entropy(logits.float(), y, reduction="none"), logits, None
        if self.objective == "gaussian":  # one forward, like standard training
            logits = self.net(gaussian_noise(x, self.eps))
            return F.cross_entropy(logits.float(), y, reduction="none"), logits, None
        if self.objective == "trades":
            per_example, nat, adv = trades_loss(self.net, x, y, self.eps, self.steps, self.step_size, self.beta,
                                                self.norm, self.bn_eval, reduction="none", return_logits=True)
            return per_example, adv, nat
        x_adv = pgd(self.net, x, y, self.eps, self.steps, self.step_size, self.norm, self.random_start, self.bn_eval)
        logits = self.net(x_adv)
        return F.cross_entropy(logits.float(), y, reduction="none"), logits, None


def train_step(objective: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: torch.device, amp: bool, loss_scale: float):
    """Forward (attack included) and backward of one batch; the caller checks and steps.

    Returns the objective's outputs: (per-example losses, logits, clean logits or None).
    """
    with autocast(device, amp):
        losses, logits, nat_logits = objective(x, y)
    opt.zero_grad(set_to_none=True)
    (losses.sum() * loss_scale).backward()
    return losses, logits, nat_logits


def model_meta(prep: Prepared, arch: str, width: float, eps: float, seed: int, **extra) -> dict[str, Any]:
    return {
        "arch": arch, "num_classes": prep.num_classes, "in_channels": prep.channels, "width": float(width),
        "normalization": prep.name if prep.name in NORMALIZATION else None, "image_size": prep.image_size,
        "eps": float(eps), "seed": int(seed), "source": prep.name, **extra,
    }


def write_outputs(out_dir: Path, model: nn.Module, meta: dict, history: list[dict], metrics: dict) -> None:
    """history.csv, metrics.json, then model.pt: each written to a temporary file and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    import pandas as pd  # here, not at the top: every job pays ~0.3 s to import it

    with atomic_write(out_dir / "history.csv") as tmp:
        pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
    write_json_atomic(out_dir / "metrics.json", metrics)
    save_model(out_dir / "model.pt", model, meta)


@dataclass(frozen=True, kw_only=True)
class SourceRun:
    """What one source training is (train_source's arguments, resolved): picklable, so that spawned
    DDP ranks get the same."""

    data_dir: Path
    out_dir: Path
    arch: str
    width: float
    eps: float
    seed: int
    rng_seed: int
    schedule: TrainSchedule
    device: str
    threads: int


def train_source(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    arch: str,
    width: float = 1.0,
    eps: float = 0.0,
    seed: int = 0,
    schedule: TrainSchedule | None = None,
    device: str | torch.device = "cpu",
    threads: int = 2,
    log: logging.Logger = logger,
    world_size: int = 1,
    rng_seed: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train one source model and write model.pt, history.csv and metrics.json to `out_dir`.

    Args:
        data_dir: a prepared dataset (`results/data/{source}`).
        out_dir: the model's directory; `out_dir/resume/` holds the resumable state.
        arch, width: backbone (`models.build_model`).
        eps: L2 (or the schedule's norm) training radius, or the noise's expected L2 norm for
            objective gaussian; 0 = standard training.
        seed: the model's seed (the `s{seed}` of its path), recorded in the outputs; it also
            seeds model init, data order, augmentation and attacks unless `rng_seed` is given.
        schedule: a `train_schedules` entry (`TrainSchedule.from_config`); None: the schema's defaults.
        device: "cpu", "cuda" or "auto".
        threads: torch threads (split across ranks on CPU).
        log: where per-epoch lines go.
        world_size: DDP ranks to spawn on this node (ignored under torchrun, whose
            WORLD_SIZE/RANK environment is used instead).
        rng_seed: seed of all randomness when it differs from `seed` (the rule derives one
            from the wildcards with `job_seed`).
        on_epoch: called with each epoch's history row (e.g. MLflow live logging); not called
            in spawned single-node DDP, whose ranks are separate processes.
    Returns:
        The metrics dict written to metrics.json.
    Raises:
        TrainingError: non-finite loss (names epoch and step) or a failed DDP rank.
        resume.Interrupted: SIGTERM/SIGUSR1; the state is saved.
        CheckpointError: a corrupt or foreign resume state.
    """
    run = SourceRun(data_dir=Path(data_dir), out_dir=Path(out_dir), arch=arch, width=float(width), eps=float(eps),
                    seed=int(seed), rng_seed=int(seed if rng_seed is None else rng_seed),
                    schedule=schedule or TrainSchedule.from_config(), device=str(device), threads=int(threads))
    env = ddp.env_from_torchrun()
    if env is not None:
        return _train(env, run, log, on_epoch)
    if world_size > 1:
        files = [h.baseFilename for h in logging.getLogger().handlers + log.handlers
                 if isinstance(h, logging.FileHandler)]
        try:
            ddp.spawn(_spawned, world_size, (run, log.name, files))
        except Exception as err:  # a rank failed: surface its last message, not the wrapper's
            if isinstance(err, resume.Interrupted) or "Interrupted" in str(err):
                raise resume.Interrupted(_last_line(err)) from None
            raise TrainingError(f"DDP training failed: {_last_line(err)}") from None
        return json.loads((Path(out_dir) / "metrics.json").read_text())
    return _train(ddp.DistEnv(), run, log, on_epoch)


def _last_line(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _spawned(rank: int, world_size: int, run: SourceRun, log_name: str, log_files: list[str]) -> None:
    log = logging.getLogger(log_name)
    if rank == 0:
        handlers: list[logging.Handler] = [logging.FileHandler(f, mode="a") for f in log_files]
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            handlers=handlers or None, force=True)
    _train(ddp.DistEnv(rank, world_size, rank), run, log)


def _train(env: ddp.DistEnv, run: SourceRun, log: logging.Logger,
           on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict:
    dev = pick_device(run.device)
    if dev.type == "cuda" and env.distributed:
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    set_threads(max(1, run.threads // env.world_size) if dev.type == "cpu" else run.threads)
    ddp.init(env, dev)
    try:
        return _train_loop(env, dev, run, log, on_epoch)
    finally:
        ddp.shutdown()


@dataclass(kw_only=True)
class _SourceJob:
    """Source training as an `epochs.EpochJob`: one (DDP-sharded, augmented) batch per step, the
    train/test accuracies and weight norm per epoch."""

    SUMS = ("loss", "images", "correct", "nat_correct", "nat_images")

    env: ddp.DistEnv
    dev: torch.device
    net: nn.Module
    objective: nn.Module
    opt: torch.optim.Optimizer
    sched: TrainSchedule
    eps: float
    train: Any
    test: Any
    workers: int
    gen: torch.Generator
    what: str
    amp: bool = field(init=False)
    cl: bool = field(init=False)
    adv: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.amp, self.cl = bool(self.sched.bf16), bool(self.sched.channels_last)
        test = self.test
        n_adv = min(EPOCH_ADV_IMAGES, len(test), self.sched.evaluation["max_images"] or len(test))
        self.adv = next(load_batches(test, [torch.arange(n_adv)], self.workers)) if self.eps > 0 else (None, None)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)

    def batches(self, perm: torch.Tensor) -> list[torch.Tensor]:
        return [b for b in perm.split(int(self.sched.batch_size)) if len(b) >= self.env.world_size]

    def train_mode(self) -> None:
        self.objective.train()

    def step(self, gidx: torch.Tensor, index: int, sums: Sums, stop: str | None) -> tuple[torch.Tensor, bool]:
        start, stop_ = ddp.shard_span(len(gidx), self.env)
        x, y = next(load_batches(self.train, [gidx[start:stop_]], self.workers))
        x = augment_batch(x, self.sched.augment, self.gen, (start, len(gidx)))
        x, y = to_memory_format(x.to(self.dev, non_blocking=True), self.cl), y.to(self.dev, non_blocking=True)
        # DDP averages gradients over ranks: this scale makes it the global-batch mean.
        losses, logits, nat_logits = train_step(self.objective, self.opt, x, y, self.dev, self.amp,
                                                self.env.world_size / len(gidx))
        if self.eps > 0 and nat_logits is None and index % NATURAL_EVERY == 0:
            with torch.no_grad(), eval_mode(self.net), autocast(self.dev, self.amp):
                nat_logits = self.net(x)
        step = sums.pack(loss=float(losses.detach().sum()), images=len(y), correct=_correct(logits, y),
                         nat_correct=_correct(nat_logits, y), nat_images=0 if nat_logits is None else len(y))
        # one all-reduce for the sums and the stop flag: every rank stops at the same step
        stats = torch.tensor(step + [1.0 if stop else 0.0], dtype=torch.float64, device=self.dev)
        stats = ddp.all_reduce_sum(stats, self.env).cpu()
        self.opt.step()
        return stats[:-1], bool(stats[-1] > 0)

    def end_epoch(self, sums: Sums) -> dict[str, float]:
        adv = self.eps > 0
        record = {"train_loss": float(sums["loss"] / sums["images"]),
                  "train_acc": _pct(sums["nat_correct"] if adv else sums["correct"],
                                    sums["nat_images"] if adv else sums["images"]),
                  "train_adv_acc": _pct(sums["correct"], sums["images"]) if adv else float("nan")}
        if self.env.is_main:
            batches = list(torch.arange(len(self.test)).split(EVAL_BATCH))
            record["test_acc"] = accuracy(self.net, load_batches(self.test, batches, self.workers), len(self.test),
                                          self.dev, self.amp, self.cl)
            record["test_adv_acc"] = float("nan")
            if adv:
                ev = evaluate(self.net, *self.adv, [self.eps], self.sched.evaluation["steps"], 1, EVAL_BATCH,
                              self.dev, None, self.sched.attack["norm"], amp=self.amp)
                record["test_adv_acc"] = next(iter(ev["pgd_acc"].values()))
            record["weight_norm"] = weight_norm(self.net)
        return record

    def diverged(self, epoch: int, step: int, n_steps: int, loss: float) -> Exception:
        return TrainingError(f"training diverged: non-finite loss ({loss}) at epoch {epoch + 1}, step {step + 1}/"
                             f"{n_steps} of {self.what}. Lower the schedule's lr or check the data; no model was "
                             "written.")


def _train_loop(env: ddp.DistEnv, dev: torch.device, run: SourceRun, log: logging.Logger,
                on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict:
    prep, sched, eps = Prepared(run.data_dir), run.schedule, run.eps
    gen = seed_everything(run.rng_seed)
    meta = model_meta(prep, run.arch, run.width, eps, run.seed, rng_seed=run.rng_seed, objective=sched.objective,
                      epochs=sched.epochs)
    net = build_model(run.arch, prep.num_classes, prep.channels, run.width, meta["normalization"]).to(dev)
    if env.distributed:
        net = ddp.convert_batchnorm(net, dev)
        torch.manual_seed(run.rng_seed + 1_000_003 * env.rank)  # independent attack noise per rank
    if sched.channels_last:
        net = net.to(memory_format=torch.channels_last)
    objective = ddp.wrap_ddp(Objective(net, eps, sched), env, dev)
    opt = make_optimizer(net.parameters(), sched)
    workers = 0 if prep.meta["format"] == "arrays" else max(1, run.threads // env.world_size)
    train = split_data(prep, "train", sched.max_train)
    test = split_data(prep, "test")
    if dev.type == "cuda" and isinstance(train, TensorPairs) and train.x.numel() * 4 < 4e9:
        train = TensorPairs(train.x.to(dev), train.y.to(dev))  # small sets live on the GPU
    job = _SourceJob(env=env, dev=dev, net=net, objective=objective, opt=opt, sched=sched, eps=eps, train=train,
                     test=test, workers=workers, gen=gen, what=str(run.out_dir))
    # world_size is left out of the schedule: a job may resume on another number of GPUs.
    schedule = {k: v for k, v in sched.as_dict().items() if k != "world_size"}
    fingerprint = {"arch": run.arch, "width": run.width, "eps": eps, "seed": run.seed, "rng_seed": run.rng_seed,
                   "source": prep.name, "n_train": len(train),
                   "data": json.dumps(prep.meta.get("sha256", {}), sort_keys=True),
                   "schedule": json.dumps(schedule, sort_keys=True)}
    runner = EpochRunner(run.out_dir, fingerprint, opt, make_scheduler(opt, sched), gen, int(sched.epochs),
                         len(train), HISTORY_COLUMNS, _SourceJob.SUMS, log, env=env,
                         checkpoint_every=sched.checkpoint_every, show_loss_every=20, on_epoch=on_epoch)
    runner.resume(job)
    if env.is_main:
        log.info("training %s %s width %g on %s (%d images, %d epochs, eps %g, %s, %s, %d rank(s))", run.arch,
                 meta["objective"], run.width, prep.name, len(train), runner.epochs, eps, dev,
                 "bf16" if job.amp else "fp32", env.world_size)
    runner.run(job)
    metrics: dict[str, Any] = {}
    if env.is_main:
        ev = evaluate_dataset(net, test, sched.evaluation, dev, sched.attack["norm"], workers, run.rng_seed,
                              runner.resume_dir, log)
        metrics = {"natural_acc": ev["natural_acc"], "natural_acc_ci": ev["natural_acc_ci"], **robust_metrics(ev),
                   "weight_norm": weight_norm(net), "epochs": runner.epochs, "train_time_s": runner.elapsed, "eps": eps,
                   "source": prep.name, "arch": run.arch, "seed": run.seed}
        write_outputs(run.out_dir, net, meta, runner.history, metrics)
        runner.finish()
        log.info("done: natural %.2f%%, pgd %s, autoattack %s, %.1f s", metrics["natural_acc"], metrics["pgd_acc"],
                 metrics.get("autoattack_acc", "not run"), runner.elapsed)
    ddp.barrier(env)
    return ddp.broadcast_object(metrics, env)


def _correct(logits: torch.Tensor | None, y: torch.Tensor) -> int:
    return 0 if logits is None else int((logits.detach().argmax(1) == y).sum())


def _pct(num, den) -> float:
    return 100.0 * float(num) / float(den) if float(den) > 0 else float("nan")
