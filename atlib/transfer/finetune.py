"""Transfer a source model to a target dataset: a new linear head, fine-tuned in one of three modes.

The job: the source model and target (`atlib.transfer.inputs`), the mode's frozen and trained modules
(`atlib.transfer.modes`), the mode-0 cache when it applies (`atlib.transfer.cache`), the resumable
epoch loop (`atlib.train.epochs`), then top-1 and the robustness of the transferred model. Both paths of
mode 0 (cached tail, full model) draw batches from the same seeded generator, so with bn_policy "train"
(batch statistics in the last BN) they see the same batches in the same order and give the same results
up to float rounding.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from atlib.core.intervals import accuracy_interval
from atlib.core.io import write_text_atomic
from atlib.core.runtime import autocast, pick_device, seed_everything, set_threads
from atlib.data import Prepared
from atlib.data.store import sha256
from atlib.models.adapter import TailSplit
from atlib.models.checkpoint import CheckpointError, save_model
from atlib.models.resnet import ResNet
from atlib.spec.settings import FinetuneSchedule
from atlib.train.epochs import EpochRunner, Sums
from atlib.train.evaluation import accuracy, evaluate_head, robust_metrics
from atlib.train.optim import make_optimizer, make_scheduler
from atlib.transfer.cache import TailCache, build_cache, cache_accuracy, cache_split, use_cache
from atlib.transfer.inputs import Split, TransferError, load_inputs, parse_model_key
from atlib.transfer.modes import MODES, freeze_for_mode, new_head, set_train_mode, trained_state

logger = logging.getLogger("atlib.transfer.finetune")

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_top1", "time_s")
CHECK_EVERY = 50  # steps between finiteness checks of the loss (each one syncs a GPU)


@dataclass(kw_only=True)
class _TransferJob:
    """Fine-tuning as an `epochs.EpochJob`: the trained modules' state, one batch per step (through
    the mode-0 cache when there is one), top-1 on the target's test split per epoch."""

    SUMS = ("loss", "images", "correct")

    model: ResNet
    mode: int
    sched: FinetuneSchedule
    opt: torch.optim.Optimizer
    train: Split
    test: Split
    gen: torch.Generator
    dev: torch.device
    split: TailSplit | None
    what: str
    rdir: Path
    train_cache: TailCache | None = None
    test_cache: TailCache | None = None
    amp: bool = field(init=False)
    cl: bool = field(init=False)

    def __post_init__(self) -> None:
        self.amp, self.cl = bool(self.sched.bf16), bool(self.sched.channels_last)

    def build_caches(self, log: logging.Logger) -> float:
        """The mode-0 caches of both splits (on the GPU when they fit in half its free memory); seconds taken."""
        t0 = time.time()
        train = build_cache(self.model, self.split, self.train, self.dev, self.amp, self.cl, "cache train")
        test = build_cache(self.model, self.split, self.test, self.dev, self.amp, self.cl, "cache test")
        nbytes = train.nbytes + test.nbytes
        if self.dev.type == "cuda" and nbytes < 0.5 * torch.cuda.mem_get_info(self.dev)[0]:
            train, test = train.to(self.dev), test.to(self.dev)  # no host->device copy per step
        self.train_cache, self.test_cache = train, test
        build_s = time.time() - t0
        log.info("mode-0 cache: %d bytes (%.1f MB) on %s, built in %.2f s", nbytes, nbytes / 2**20, train.y.device,
                 build_s)
        return build_s

    def model_state(self) -> dict[str, torch.Tensor]:
        return trained_state(self.model, self.mode)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        loaded = self.model.load_state_dict(state, strict=False)  # the frozen rest: the source model's
        if loaded.unexpected_keys or set(state) != set(trained_state(self.model, self.mode)):
            raise CheckpointError(f"{self.rdir}: resume state does not match mode {self.mode}; delete it to start "
                                  "over")

    def batches(self, perm: torch.Tensor) -> list[torch.Tensor]:
        return list(perm.split(int(self.sched.batch_size)))

    def train_mode(self) -> None:
        set_train_mode(self.model, self.mode, self.sched.bn_policy)

    def step(self, idx: torch.Tensor, index: int, sums: Sums, stop: str | None) -> tuple[torch.Tensor, bool]:
        with autocast(self.dev, self.amp):
            if self.train_cache is not None:
                parts, y = self.train_cache.batch(idx, self.dev, self.cl)
                logits = self.split.tail(parts)
            else:
                x, y = self.train.batch(idx, self.dev, self.cl, self.sched.augment, self.gen)
                logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        # Summed on the device: the runner checks them (one sync) every CHECK_EVERY steps, not every step.
        step = torch.stack(sums.pack(loss=loss.detach().double() * len(y),
                                     images=torch.tensor(len(y), device=self.dev).double(),
                                     correct=(logits.detach().argmax(1) == y).sum().double()))
        return step, stop is not None

    def end_epoch(self, sums: Sums) -> dict[str, float]:
        if self.test_cache is not None:
            top1 = cache_accuracy(self.model, self.split, self.test_cache, self.dev, self.amp, self.cl)
        else:
            top1 = accuracy(self.model, self.test.batches(self.dev, self.cl), self.test.n, self.dev, self.amp,
                            self.cl)
        return {"train_loss": float(sums["loss"] / sums["images"]),
                "train_acc": 100.0 * float(sums["correct"] / sums["images"]), "test_top1": top1}

    def diverged(self, epoch: int, step: int, n_steps: int, loss: float) -> Exception:
        return TransferError(f"transfer {self.what} diverged: non-finite loss in epoch {epoch + 1} by step "
                             f"{step + 1}; lower the finetune schedule's lr. No outputs were written.")


def transfer(
    model_path: str | Path,
    target_dir: str | Path,
    out_dir: str | Path,
    *,
    mode: int,
    schedule: FinetuneSchedule | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    threads: int = 1,
    log: logging.Logger = logger,
    model_key: str | None = None,
    arch: str | None = None,
    save_model_to: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune a source model on a target and write history.csv and metrics.json to `out_dir`.

    The head is replaced by a new linear layer for the target's classes; target images are
    adapted to the source model's input size and channels. Mode 0 trains the head and the last
    BatchNorm, mode 1 the head and every BatchNorm, mode 2 the whole network; frozen modules stay
    in eval mode (`set_train_mode`; schedule.bn_policy says what the trained BNs do). Mode 0
    caches the frozen trunk's outputs when schedule.cache_features allows (`use_cache`) and the
    cache fits in schedule.cache_max_mb. At the end the transferred model is evaluated on the
    target's test split: top-1 on every image and PGD (L2) accuracy per schedule.evaluation
    (Lemma 5.1: a robust backbone gives a robust transferred model).

    Args:
        model_path: a source model.pt (`checkpoint.save_model`).
        target_dir: a prepared target (`results/data/{target}`).
        out_dir: where history.csv and metrics.json go; `out_dir/resume/` holds the resumable
            state while the job runs (a rerun after a kill or SIGTERM/SIGUSR1 continues from it).
        mode: 0, 1 or 2 (the paper's Appendix C).
        schedule: a finetune_schedules entry (`FinetuneSchedule.from_config`); None: the schema's defaults.
        seed: seeds the head, data order, augmentation and the attack.
        device: "cpu", "cuda", "auto" or a torch.device.
        threads: torch threads.
        log: where per-epoch lines go.
        model_key: "{source}/{arch}/{eps|gn}{eps}/s{seed}" of the source model (metrics'
            source_model and eps); default: read from `model_path`'s results layout.
        arch: the architecture the source model must have (default: the key's).
        save_model_to: also save the fine-tuned model there (not an output of the rule).
        on_epoch: called with each epoch's history row (e.g. MLflow live logging).
    Returns:
        The metrics dict written to metrics.json.
    Raises:
        TransferError: the source model or target cannot be used (names both), or a
            non-finite loss.
        resume.Interrupted: SIGTERM/SIGUSR1; the state is saved.
        CheckpointError: a corrupt or foreign resume state.
    """
    sched = schedule or FinetuneSchedule.from_config()
    dev = device if isinstance(device, torch.device) else pick_device(device)
    set_threads(threads)
    out_dir = Path(out_dir)
    key, key_arch, key_eps = parse_model_key(model_path, model_key)
    prep, model, meta = load_inputs(model_path, target_dir, key, arch or key_arch, mode)
    job, runner = _prepare(model, prep, meta, key=key, mode=mode, sched=sched, seed=seed, dev=dev, threads=threads,
                           out_dir=out_dir, log=log, on_epoch=on_epoch, model_sha256=sha256(Path(model_path)))
    runner.resume(job)
    log.info("transfer %s -> %s, mode %d (%s), %d train / %d test images, %d epochs, %s, %s, bn_policy %s",
             key, prep.name, mode, MODES[mode], job.train.n, job.test.n, runner.epochs, dev,
             "bf16" if job.amp else "fp32", sched.bn_policy)
    if job.split is not None and runner.epoch < runner.epochs:
        runner.elapsed += job.build_caches(log)  # rebuilt on resume too: the frozen trunk gives the same outputs
    runner.run(job)
    eps = key_eps if key_eps is not None else float(meta.get("eps", float("nan")))
    metrics = _evaluate_and_write(job, runner, prep, meta, key=key, eps=eps, seed=seed, out_dir=out_dir,
                                  save_model_to=save_model_to, log=log)
    runner.finish()
    return metrics


def _prepare(model: ResNet, prep: Prepared, meta: dict[str, Any], *, key: str, mode: int, sched: FinetuneSchedule,
             seed: int, dev: torch.device, threads: int, out_dir: Path, log: logging.Logger,
             on_epoch: Callable[[dict[str, float]], None] | None, model_sha256: str,
             ) -> tuple[_TransferJob, EpochRunner]:
    """The seeded new head, the frozen model, its optimizer, the splits, the cache decision and the runner."""
    workers = 0 if prep.meta["format"] == "arrays" else max(1, threads)
    size, chans = int(meta["image_size"]), int(meta["in_channels"])
    train = Split(prep, "train", size, chans, sched.max_train, workers)
    test = Split(prep, "test", size, chans, None, workers)
    gen = seed_everything(seed)
    new_head(model, prep.num_classes)
    params = freeze_for_mode(model, mode)
    model.to(dev)
    if sched.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(params, sched)
    scheduler = make_scheduler(opt, sched)
    what = f"{key} -> {prep.name} mode {mode}"
    split = cache_split(model, train, test.n, sched, dev, f"{key} on {prep.name}", log) \
        if use_cache(mode, sched) else None
    job = _TransferJob(model=model, mode=mode, sched=sched, opt=opt, train=train, test=test, gen=gen, dev=dev,
                       split=split, what=what, rdir=out_dir / "resume")
    fingerprint = {"model": key, "model_sha256": model_sha256, "target": prep.name, "mode": mode,
                   "seed": seed, "cached": split is not None, "n_train": train.n,
                   "data": json.dumps(prep.meta.get("sha256", {}), sort_keys=True),
                   "schedule": json.dumps(sched.as_dict(), sort_keys=True)}
    runner = EpochRunner(out_dir, fingerprint, opt, scheduler, gen, int(sched.epochs), train.n, HISTORY_COLUMNS,
                         _TransferJob.SUMS, log, sums_device=dev, check_every=CHECK_EVERY,
                         desc=f"{prep.name} mode {mode} ", on_epoch=on_epoch)
    return job, runner


def _evaluate_and_write(job: _TransferJob, runner: EpochRunner, prep: Prepared, meta: dict[str, Any], *, key: str,
                        eps: float, seed: int, out_dir: Path, save_model_to: str | Path | None,
                        log: logging.Logger) -> dict[str, Any]:
    """Top-1 and PGD (and AutoAttack) of the transferred model on the target's test split (Lemma 5.1:
    a robust backbone gives a robust transferred model), then history.csv, metrics.json (and the model)."""
    model, test, dev, mode = job.model, job.test, job.dev, job.mode
    ev = evaluate_head(model, test.head, test.n, job.sched.evaluation, dev, "l2", seed, runner.resume_dir, log)
    top1 = accuracy(model, test.batches(dev, job.cl), test.n, dev, job.amp, job.cl)
    cached = job.split is not None
    metrics = {"top1": top1, "top1_ci": accuracy_interval(top1, test.n), **robust_metrics(ev), "mode": mode,
               "target": prep.name, "source_model": key, "eps": eps, "seed": seed, "epochs": runner.epochs,
               "cached": cached, "train_time_s": runner.elapsed}
    out_dir.mkdir(parents=True, exist_ok=True)
    import pandas as pd  # here, not at the top: every job pays ~0.3 s to import it

    history = pd.DataFrame(runner.history, columns=list(HISTORY_COLUMNS))
    write_text_atomic(out_dir / "history.csv", history.to_csv(index=False))
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    if save_model_to is not None:
        save_model(save_model_to, model, {**meta, "num_classes": prep.num_classes,
                                          "transfer": {"source_model": key, "target": prep.name, "mode": mode}})
    log.info("done %s -> %s mode %d: top1 %.2f%%, pgd %s, %.1f s%s", key, prep.name, mode, top1, ev["pgd_acc"],
             runner.elapsed, " (cached)" if cached else "")
    return metrics
