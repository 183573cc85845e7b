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
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import distributed as ddp
from . import resume
from .attacks import _ModeGuard, evaluate, gaussian_noise, natural_correct, pgd, trades_loss
from .augment import augment_batch
from .checkpoint import save_model
from .config import schedule_defaults  # noqa: F401 - re-exported: pretrained and transfer import it from here
from .data import Prepared, TensorPairs
from .data.tensors import collate_pairs
from .models import NORMALIZATION, build_model
from .optim import make_optimizer, make_scheduler
from .runtime import autocast, pick_device, seed_everything, set_threads, to_memory_format

logger = logging.getLogger("atlib.train")

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
EVAL_BATCH = 256


class TrainingError(RuntimeError):
    """A training failure the user can act on (divergence, a failed DDP rank)."""


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters (the paper's Figure 5)."""
    with torch.no_grad():
        return float(torch.sqrt(sum(p.detach().float().pow(2).sum() for p in model.parameters())))


class Objective(nn.Module):
    """The training loss of one batch, as a module so DDP sees one forward per step.

    forward(x, y) -> (per-example loss, logits on the trained inputs (adversarial, or noisy
    for objective gaussian, when eps > 0), clean logits when the objective computes them
    anyway (TRADES), else None).
    """

    def __init__(self, net: nn.Module, eps: float, sched: dict[str, Any]) -> None:
        super().__init__()
        self.net, self.eps = net, float(eps)
        a = sched["attack"]
        self.objective, self.beta = sched["objective"], float(sched["trades_beta"])
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


def split_data(prep: Prepared, split: str, limit: int | None = None):
    """In-memory TensorPairs for array datasets; the file-backed dataset (first `limit`) otherwise."""
    if prep.meta["format"] == "arrays":
        x, y = prep.tensors(split, limit=limit)
        return TensorPairs(x, y)
    ds = prep.dataset(split)
    if limit is not None and limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(limit))
    return ds


def load_batches(ds, batches: list[torch.Tensor], workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) for each index batch: direct indexing in memory, a DataLoader for files."""
    if isinstance(ds, TensorPairs):
        for idx in batches:
            idx = idx.to(ds.x.device)
            yield ds.x[idx], ds.y[idx]
        return
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                                         collate_fn=collate_pairs, persistent_workers=False)
    yield from loader


def natural_accuracy(model: nn.Module, ds, device: torch.device, amp: bool = False, channels_last: bool = False,
                     workers: int = 0) -> float:
    """Accuracy (%) of `model` on a whole dataset, streamed in batches."""
    n = len(ds)
    if n == 0:
        return float("nan")
    correct = 0
    batches = list(torch.arange(n).split(EVAL_BATCH))
    for x, y in load_batches(ds, batches, workers):
        correct += natural_correct(model, x, y.cpu(), EVAL_BATCH, device, amp, channels_last)
    return 100.0 * correct / n


def evaluate_dataset(model: nn.Module, ds, evaluation: dict[str, Any], device: torch.device, norm: str = "l2",
                     workers: int = 0, seed: int = 0, state_dir: Path | None = None,
                     log: logging.Logger = logger) -> dict:
    """`attacks.evaluate` with a schedule's `evaluation` block on a dataset (natural on all
    images, PGD on the first evaluation.max_images), without loading file-backed sets whole; with
    evaluation.attack autoattack also `robust_eval.autoattack_accuracy` (seeded by `seed`, resumable
    from `state_dir`). The result names the attack of record ("attack_of_record")."""
    m = len(ds) if evaluation["max_images"] is None else min(evaluation["max_images"], len(ds))
    aa = evaluation.get("attack", "pgd") == "autoattack"
    m_aa = min(evaluation["autoattack"]["max_images"] or len(ds), len(ds)) if aa else 0
    k = max(m, m_aa)
    x, y = next(load_batches(ds, [torch.arange(k)], workers)) if k else (torch.empty(0), torch.empty(0))
    out = evaluate(model, x[:m], y[:m].long(), evaluation["eps"], evaluation["steps"], evaluation["restarts"],
                   EVAL_BATCH, device, None, norm)
    if m < len(ds):  # natural accuracy on every test image, not only the attacked ones
        out["natural_acc"] = natural_accuracy(model, ds, device, workers=workers)
    if aa:
        from .robust_eval import autoattack_accuracy

        out.update(autoattack_accuracy(model, x, y.long(), evaluation, norm, device, model.fc.out_features, seed,
                                       state_dir, log))
    out["attack_of_record"] = "autoattack" if aa else "pgd"
    return out


def robust_metrics(ev: dict) -> dict:
    """The evaluation's robustness entries for metrics.json: PGD, and AutoAttack when it ran."""
    return {k: ev[k] for k in ("pgd_acc", "autoattack_acc", "autoattack", "attack_of_record") if k in ev}


def model_meta(prep: Prepared, arch: str, width: float, eps: float, seed: int, **extra) -> dict[str, Any]:
    return {
        "arch": arch, "num_classes": prep.num_classes, "in_channels": prep.channels, "width": float(width),
        "normalization": prep.name if prep.name in NORMALIZATION else None, "image_size": prep.image_size,
        "eps": float(eps), "seed": int(seed), "source": prep.name, **extra,
    }


def write_outputs(out_dir: Path, model: nn.Module, meta: dict, history: list[dict], metrics: dict) -> None:
    """history.csv, metrics.json, then model.pt: each written to a temporary file and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".history.csv.tmp{os.getpid()}"
    import pandas as pd  # here, not at the top: every job pays ~0.3 s to import it

    pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "history.csv")
    tmp = out_dir / f".metrics.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, out_dir / "metrics.json")
    save_model(out_dir / "model.pt", model, meta)


def train_source(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    arch: str,
    width: float = 1.0,
    eps: float = 0.0,
    seed: int = 0,
    schedule: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    threads: int = 2,
    log: logging.Logger = logger,
    world_size: int = 1,
    rng_seed: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    _stop_after_epoch: int | None = None,
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
        schedule: a `train_schedules` entry (missing keys take the schema defaults).
        device: "cpu", "cuda" or "auto".
        threads: torch threads (split across ranks on CPU).
        log: where per-epoch lines go.
        world_size: DDP ranks to spawn on this node (ignored under torchrun, whose
            WORLD_SIZE/RANK environment is used instead).
        rng_seed: seed of all randomness when it differs from `seed` (the rule derives one
            from the wildcards with `job_seed`).
        on_epoch: called with each epoch's history row (e.g. MLflow live logging); not called
            in spawned single-node DDP, whose ranks are separate processes.
        _stop_after_epoch: test hook, behave as if preempted after this many epochs.
    Returns:
        The metrics dict written to metrics.json.
    Raises:
        TrainingError: non-finite loss (names epoch and step) or a failed DDP rank.
        resume.Interrupted: SIGTERM/SIGUSR1 (or the test hook); the state is saved.
        CheckpointError: a corrupt or foreign resume state.
    """
    sched = schedule_defaults(schedule)
    kw = dict(data_dir=str(data_dir), out_dir=str(out_dir), arch=arch, width=float(width), eps=float(eps),
              seed=int(seed), rng_seed=int(seed if rng_seed is None else rng_seed), sched=sched,
              device=str(device), threads=int(threads),
              stop_after_epoch=_stop_after_epoch)
    env = ddp.env_from_torchrun()
    if env is not None:
        return _train(env, log=log, on_epoch=on_epoch, **kw)
    if world_size > 1:
        files = [h.baseFilename for h in logging.getLogger().handlers + log.handlers
                 if isinstance(h, logging.FileHandler)]
        try:
            ddp.spawn(_spawned, world_size, (kw, log.name, files))
        except Exception as err:  # a rank failed: surface its last message, not the wrapper's
            if isinstance(err, resume.Interrupted) or "Interrupted" in str(err):
                raise resume.Interrupted(_last_line(err)) from None
            raise TrainingError(f"DDP training failed: {_last_line(err)}") from None
        return json.loads((Path(out_dir) / "metrics.json").read_text())
    return _train(ddp.DistEnv(), log=log, on_epoch=on_epoch, **kw)


def _last_line(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _spawned(rank: int, world_size: int, kw: dict, log_name: str, log_files: list[str]) -> None:
    log = logging.getLogger(log_name)
    if rank == 0:
        handlers: list[logging.Handler] = [logging.FileHandler(f, mode="a") for f in log_files]
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            handlers=handlers or None, force=True)
    _train(ddp.DistEnv(rank, world_size, rank), log=log, **kw)


def _train(env: ddp.DistEnv, *, data_dir: str, out_dir: str, arch: str, width: float, eps: float, seed: int,
           rng_seed: int, sched: dict, device: str, threads: int, stop_after_epoch: int | None,
           log: logging.Logger, on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict:
    dev = pick_device(device)
    if dev.type == "cuda" and env.distributed:
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    set_threads(max(1, threads // env.world_size) if dev.type == "cpu" else threads)
    ddp.init(env, dev)
    try:
        return _train_loop(env, dev, Path(data_dir), Path(out_dir), arch, width, eps, seed, rng_seed, sched,
                           threads, stop_after_epoch, log, on_epoch)
    finally:
        ddp.shutdown()


def _train_loop(env: ddp.DistEnv, dev: torch.device, data_dir: Path, out_dir: Path, arch: str, width: float,
                eps: float, seed: int, rng_seed: int, sched: dict, threads: int, stop_after_epoch: int | None,
                log: logging.Logger, on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict:
    prep = Prepared(data_dir)
    gen = seed_everything(rng_seed)
    meta = model_meta(prep, arch, width, eps, seed, rng_seed=rng_seed, objective=sched["objective"],
                      epochs=sched["epochs"])
    net = build_model(arch, prep.num_classes, prep.channels, width, meta["normalization"]).to(dev)
    if env.distributed:
        net = ddp.convert_batchnorm(net, dev)
        torch.manual_seed(rng_seed + 1_000_003 * env.rank)  # independent attack noise per rank
    if sched["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    objective = ddp.wrap_ddp(Objective(net, eps, sched), env, dev)
    opt = make_optimizer(net.parameters(), sched)
    scheduler = make_scheduler(opt, sched)
    amp, cl = bool(sched["bf16"]), bool(sched["channels_last"])
    workers = 0 if prep.meta["format"] == "arrays" else max(1, threads // env.world_size)

    train = split_data(prep, "train", sched["max_train"])
    test = split_data(prep, "test")
    if dev.type == "cuda" and isinstance(train, TensorPairs) and train.x.numel() * 4 < 4e9:
        train = TensorPairs(train.x.to(dev), train.y.to(dev))  # small sets live on the GPU
    n_adv = min(EPOCH_ADV_IMAGES, len(test), sched["evaluation"]["max_images"] or len(test))
    adv_x, adv_y = next(load_batches(test, [torch.arange(n_adv)], workers)) if eps > 0 else (None, None)

    n, bs, epochs = len(train), int(sched["batch_size"]), int(sched["epochs"])
    rdir = out_dir / "resume"
    fingerprint = {"arch": arch, "width": width, "eps": eps, "seed": seed, "rng_seed": rng_seed,
                   "source": prep.name, "n_train": n,
                   "data": json.dumps(prep.meta.get("sha256", {}), sort_keys=True),
                   # world_size is left out: a job may resume on another number of GPUs.
                   "schedule": json.dumps({k: v for k, v in sched.items() if k != "world_size"}, sort_keys=True)}
    state = resume.load(rdir, fingerprint)
    history: list[dict] = []
    start_epoch, start_step, perm, acc, elapsed, epoch_time = 0, 0, None, torch.zeros(5, dtype=torch.float64), 0.0, 0.0
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        scheduler.load_state_dict(state["sched"])
        start_epoch, start_step, perm = state["epoch"], state["step"], state["perm"]
        acc, history, elapsed, epoch_time = state["acc"], state["history"], state["elapsed"], state["epoch_time"]
        rngs = state["rng"]
        resume.restore_rng(rngs[env.rank] if env.rank < len(rngs) else rngs[0], gen)
        if env.is_main:
            log.info("resuming %s from epoch %d step %d (%s)", out_dir, start_epoch + 1, start_step, rdir)

    def save_state(epoch: int, step: int) -> None:
        rngs = ddp.gather_objects(resume.capture_rng(gen), env)
        if env.is_main:
            resume.save(rdir, {"net": net.state_dict(), "opt": opt.state_dict(),
                               "sched": resume.scheduler_state(scheduler), "epoch": epoch, "step": step,
                               "perm": perm, "acc": acc, "history": history, "elapsed": elapsed,
                               "epoch_time": epoch_time, "rng": rngs}, fingerprint)
        ddp.barrier(env)

    if env.is_main:
        log.info("training %s %s width %g on %s (%d images, %d epochs, eps %g, %s, %s, %d rank(s))", arch,
                 meta["objective"], width, prep.name, n, epochs, eps, dev, "bf16" if amp else "fp32", env.world_size)
    with resume.GracefulExit() as stop:
        for epoch in range(start_epoch, epochs):
            t0 = time.time()
            if start_step == 0:
                perm = torch.randperm(n, generator=gen)
                acc, epoch_time = torch.zeros(5, dtype=torch.float64), 0.0
            batches = [b for b in perm.split(bs) if len(b) >= env.world_size]
            lr = opt.param_groups[0]["lr"]
            objective.train()
            bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       disable=not env.is_main, mininterval=2.0)
            for step in range(start_step, len(batches)):
                gidx = batches[step]
                start, stop_ = ddp.shard_span(len(gidx), env)
                x, y = next(load_batches(train, [gidx[start:stop_]], workers))
                x = augment_batch(x, sched["augment"], gen, (start, len(gidx)))
                x, y = to_memory_format(x.to(dev, non_blocking=True), cl), y.to(dev, non_blocking=True)
                # DDP averages gradients over ranks: this scale makes it the global-batch mean.
                losses, logits, nat_logits = train_step(objective, opt, x, y, dev, amp, env.world_size / len(gidx))
                if eps > 0 and nat_logits is None and step % NATURAL_EVERY == 0:
                    with torch.no_grad(), _ModeGuard(net, True), autocast(dev, amp):
                        nat_logits = net(x)
                stats = torch.tensor([float(losses.detach().sum()), len(y), _correct(logits, y),
                                      _correct(nat_logits, y), 0 if nat_logits is None else len(y),
                                      1.0 if stop.requested else 0.0], dtype=torch.float64, device=dev)
                stats = ddp.all_reduce_sum(stats, env).cpu()
                if not math.isfinite(float(stats[0])):
                    resume.clear(rdir)  # resuming would only diverge again
                    raise TrainingError(
                        f"training diverged: non-finite loss ({float(stats[0])}) at epoch {epoch + 1}, step "
                        f"{step + 1}/{len(batches)} of {out_dir}. Lower the schedule's lr or check the data; "
                        "no model was written.")
                opt.step()
                acc += stats[:5]
                bar.update(1)
                if env.is_main and step % 20 == 0:
                    bar.set_postfix(loss=f"{acc[0] / acc[1]:.3f}")
                if stats[5] > 0:  # a rank got SIGTERM/SIGUSR1: save mid-epoch and stop everywhere
                    epoch_time += time.time() - t0
                    elapsed += time.time() - t0
                    save_state(epoch, step + 1)
                    raise resume.Interrupted(
                        f"{stop.requested or 'signal'}: stopped at epoch {epoch + 1} step {step + 1}; state saved in "
                        f"{rdir}, rerun the job to resume")
            bar.close()
            start_step = 0
            scheduler.step()
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": float(acc[0] / acc[1]),
                      "train_acc": _pct(acc[3] if eps > 0 else acc[2], acc[4] if eps > 0 else acc[1]),
                      "train_adv_acc": _pct(acc[2], acc[1]) if eps > 0 else float("nan")}
            if env.is_main:
                record["test_acc"] = natural_accuracy(net, test, dev, amp, cl, workers)
                record["test_adv_acc"] = float("nan")
                if eps > 0:
                    ev = evaluate(net, adv_x, adv_y, [eps], sched["evaluation"]["steps"], 1, EVAL_BATCH, dev,
                                  None, sched["attack"]["norm"], amp=amp)
                    record["test_adv_acc"] = next(iter(ev["pgd_acc"].values()))
                record["weight_norm"] = weight_norm(net)
            epoch_time += time.time() - t0
            elapsed += time.time() - t0
            record["time_s"] = epoch_time
            if env.is_main:
                history.append({k: record.get(k, float("nan")) for k in HISTORY_COLUMNS})
                log.info("epoch %d/%d " + " ".join(f"{k} %.4g" for k in HISTORY_COLUMNS[1:]), epoch + 1, epochs,
                         *[history[-1][k] for k in HISTORY_COLUMNS[1:]])
                if on_epoch is not None:
                    on_epoch(history[-1])
            last = epoch + 1 == epochs
            hook = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch
            if last or hook or (epoch + 1) % sched["checkpoint_every"] == 0:
                save_state(epoch + 1, 0)
            if hook and not last:
                raise resume.Interrupted(f"test hook: stopped after epoch {epoch + 1}; state saved in {rdir}")

    metrics: dict[str, Any] = {}
    if env.is_main:
        ev = evaluate_dataset(net, test, sched["evaluation"], dev, sched["attack"]["norm"], workers, rng_seed, rdir,
                              log)
        metrics = {"natural_acc": ev["natural_acc"], **robust_metrics(ev), "weight_norm": weight_norm(net),
                   "epochs": epochs, "train_time_s": elapsed, "eps": eps, "source": prep.name, "arch": arch,
                   "seed": seed}
        write_outputs(out_dir, net, meta, history, metrics)
        resume.clear(rdir)
        log.info("done: natural %.2f%%, pgd %s, autoattack %s, %.1f s", metrics["natural_acc"], metrics["pgd_acc"],
                 metrics.get("autoattack_acc", "not run"), elapsed)
    ddp.barrier(env)
    return ddp.broadcast_object(metrics, env)


def _correct(logits: torch.Tensor | None, y: torch.Tensor) -> int:
    return 0 if logits is None else int((logits.detach().argmax(1) == y).sum())


def _pct(num, den) -> float:
    return 100.0 * float(num) / float(den) if float(den) > 0 else float("nan")
