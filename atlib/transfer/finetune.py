"""Transfer a source model to a target dataset: a new linear head, fine-tuned in one of three modes.

Modes (the paper's Appendix C): 0 trains the head and the BatchNorm right before it, 1 the head and
every BatchNorm, 2 the whole network. Frozen modules stay in eval mode, so their running statistics
never move.

Any source model works that declares `features`, `fc`, `last_bn()` (atlib's ResNet, or an imported
network wrapped by `adapter.Adapted`); mode 1's BatchNorms are every `_BatchNorm` in the model.

Mode 0 has a fast path. Everything before the last BN is frozen, so the tensors the rest of the network
reads -- the last BN's input and, in a residual block, the shortcut output -- are computed once and
cached (`adapter.TailSplit`, cut from the traced model); each epoch then trains only the tail, e.g.

    last_bn -> (+ shortcut) -> relu -> avgpool -> fc,

the same function as the full model with the frozen trunk. Both paths draw batches from the same
seeded generator, so with bn_policy "train" (batch statistics in the last BN) they see the same
batches in the same order and give the same results up to float rounding.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from atlib.core.intervals import accuracy_interval
from atlib.core.io import write_text_atomic
from atlib.core.runtime import (
    EVAL_BATCH,
    autocast,
    eval_mode,
    pick_device,
    seed_everything,
    set_threads,
    to_memory_format,
)
from atlib.data import DataIntegrityError, Prepared, adapt, load_batches, split_data
from atlib.data.store import sha256
from atlib.models.adapter import TailSplit, tail_split
from atlib.models.checkpoint import CheckpointError, load_model, save_model
from atlib.models.resnet import ResNet
from atlib.spec.config import schedule_defaults
from atlib.train.augment import augment_batch, is_random
from atlib.train.epochs import EpochRunner, Sums
from atlib.train.evaluation import accuracy, evaluate_head, robust_metrics
from atlib.train.optim import make_optimizer, make_scheduler

logger = logging.getLogger("atlib.transfer.finetune")

MODES = {0: "head + last BatchNorm", 1: "head + every BatchNorm", 2: "whole network"}
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_top1", "time_s")
CHECK_EVERY = 50  # steps between finiteness checks of the loss (each one syncs a GPU)
# atlib.spec.config.ModelKey.path: tag "eps" (standard, adversarial) or "gn" (Gaussian-noise training).
from atlib.spec.jobs import MODEL_RE as _MODEL_KEY  # noqa: E402 - the one model-path pattern


class TransferError(ValueError):
    """A transfer that cannot be done as asked; the message names the target and the source model."""


# --------------------------------------------------------------------------- modes


def trained_modules(model: ResNet, mode: int) -> list[nn.Module]:
    """The leaf modules whose parameters mode `mode` trains (the head is `model.fc`)."""
    if mode == 0:
        return [model.fc, model.last_bn()]
    if mode == 1:
        return [model.fc] + [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if mode == 2:
        return [m for m in model.modules() if not any(True for _ in m.children())]
    raise ValueError(f"unknown transfer mode {mode!r}: expected one of {sorted(MODES)}")


def freeze_for_mode(model: ResNet, mode: int) -> list[nn.Parameter]:
    """Set requires_grad for `mode` and return the trained parameters, in model order."""
    trained = {id(p) for m in trained_modules(model, mode) for p in m.parameters(recurse=False)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: ResNet, mode: int, bn_policy: str) -> None:
    """`model.train()`, then eval() on every frozen leaf module (and on trained BNs under "eval").

    bn_policy says what the BatchNorm layers being fine-tuned do:
      "train": train mode -- they normalize with batch statistics and update their running
               statistics on the target;
      "eval":  eval mode -- the source running statistics are kept and used, only their affine
               parameters (weight, bias) are learned.
    Frozen BatchNorms are always in eval mode, so their running statistics never move.
    """
    if bn_policy not in ("train", "eval"):
        raise ValueError(f"bn_policy must be 'train' or 'eval', got {bn_policy!r}")
    model.train()
    trained = {id(m) for m in trained_modules(model, mode)}
    for m in model.modules():
        if any(True for _ in m.children()):
            continue  # containers: their leaves decide
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
        if id(m) not in trained or (is_bn and bn_policy == "eval"):
            m.eval()


def trained_state(model: ResNet, mode: int) -> dict[str, torch.Tensor]:
    """The state_dict entries of the trained modules: all a resume needs, since the frozen rest
    is reloaded from the source model (mode 0 saves a few KB instead of the whole network)."""
    trained = {id(m) for m in trained_modules(model, mode)}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in trained)
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def new_head(model: ResNet, num_classes: int) -> None:
    """Replace `model.fc` with a fresh linear head (initialized from torch's global RNG)."""
    model.fc = nn.Linear(model.feature_dim, num_classes)


# --------------------------------------------------------------------------- mode-0 cache


@dataclass
class TailCache:
    """The frozen trunk's outputs for one split (`TailSplit.trunk`: the last BN's input, shortcuts)."""

    parts: tuple[torch.Tensor, ...]
    y: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.parts)

    def to(self, device: torch.device) -> "TailCache":
        return TailCache(tuple(t.to(device) for t in self.parts), self.y.to(device))

    def batch(self, idx: torch.Tensor, device: torch.device, channels_last: bool,
              ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(trunk outputs, y) of `idx` on `device`."""
        idx = idx.to(self.y.device)
        parts = tuple(to_memory_format(t[idx].to(device, non_blocking=True), channels_last) for t in self.parts)
        return parts, self.y[idx].to(device, non_blocking=True)


def cache_nbytes(model: nn.Module, split: TailSplit, x: torch.Tensor, n: int, device: torch.device, bf16: bool,
                 channels_last: bool) -> int:
    """Bytes a cache of `n` images like `x` (one adapted image or more) will take."""
    with eval_mode(model), autocast(device, bf16):
        parts = split.trunk(to_memory_format(x[:1].to(device), channels_last))
    return n * sum(t.element_size() * t[0].nelement() for t in parts)


@torch.no_grad()
def build_cache(model: nn.Module, split: TailSplit, data: "Split", device: torch.device, bf16: bool,
                channels_last: bool, desc: str = "cache") -> TailCache:
    """Run the frozen trunk once over a split, in eval mode (no running statistics move).

    The cache lives in host memory, in the dtype the trunk produced (bf16 under autocast: what
    the plain path feeds the last BN); batches move to `device` when used.
    """
    parts: list[torch.Tensor] | None = None
    ys = torch.empty(data.n, dtype=torch.int64)
    with eval_mode(model):
        for idx in tqdm(torch.arange(data.n).split(EVAL_BATCH), desc=desc, leave=False, mininterval=2.0):
            x, y = data.batch(idx, device, channels_last)
            with autocast(device, bf16):
                got = split.trunk(x)
            if parts is None:  # preallocate: no concatenation peak for large caches
                parts = [torch.empty((data.n,) + tuple(t.shape[1:]), dtype=t.dtype) for t in got]
            for whole, t in zip(parts, got):
                whole[idx] = t.cpu()
            ys[idx] = y.cpu()
    return TailCache(tuple(parts or ()), ys)


def use_cache(mode: int, schedule: dict[str, Any]) -> bool:
    """Whether this job takes the mode-0 fast path (schedule.cache_features), before size checks.

    "auto" caches unless the schedule augments randomly; "always" refuses augmentation; "never"
    never caches. Modes 1 and 2 train inside the trunk and never cache.
    """
    policy = schedule["cache_features"]
    if mode != 0 or policy == "never":
        return False
    if is_random(schedule["augment"]):
        if policy == "always":
            raise TransferError("finetune schedule: cache_features is 'always' but augment is on "
                                "(crop_pad/flip), and cached trunk outputs cannot be augmented. "
                                "Set cache_features to 'auto' or 'never', or turn augmentation off.")
        return False
    return True


# --------------------------------------------------------------------------- data


class Split:
    """One split of a target at its stored size, adapted to the model's input per batch.

    Adapting per batch (resize, gray -> 3 channels) gives the same images as adapting the whole
    split up front, without holding an upsampled copy (e.g. CIFAR at 224 for an ImageNet model).
    """

    def __init__(self, prep: Prepared, split: str, image_size: int, channels: int, limit: int | None = None,
                 workers: int = 0) -> None:
        self.ds = split_data(prep, split, limit)
        self.n = len(self.ds)
        self.image_size, self.channels, self.workers = image_size, channels, workers

    def batch(self, idx: torch.Tensor, device: torch.device, channels_last: bool,
              augment: dict[str, Any] | None = None, generator: torch.Generator | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted (and optionally augmented) images of `idx` on `device`, and their labels."""
        x, y = next(load_batches(self.ds, [idx], self.workers))
        x = adapt(x, self.image_size, self.channels).to(device, non_blocking=True)
        if augment is not None:
            x = augment_batch(x, augment, generator)
        return to_memory_format(x, channels_last), y.to(device, non_blocking=True)

    def batches(self, device: torch.device, channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, EVAL_BATCH images at a time (what accuracies stream)."""
        for idx in torch.arange(self.n).split(EVAL_BATCH):
            yield self.batch(idx, device, channels_last)

    def head(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `m` images, adapted, on the CPU (what the PGD evaluation attacks)."""
        xs, ys = zip(*(self.batch(idx, torch.device("cpu"), False) for idx in torch.arange(m).split(EVAL_BATCH)))
        return torch.cat(xs), torch.cat(ys).long()


@torch.no_grad()
def cache_accuracy(model: nn.Module, split: TailSplit, cache: TailCache, device: torch.device, bf16: bool,
                   channels_last: bool = False) -> float:
    """Top-1 (%) of the tail on cached trunk outputs (eval mode for the call)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with eval_mode(model):
        for idx in torch.arange(len(cache.y)).split(EVAL_BATCH):
            parts, y = cache.batch(idx, device, channels_last)
            with autocast(device, bf16):
                logits = split.tail(parts)
            correct += (logits.argmax(1) == y).sum()
    return 100.0 * int(correct) / len(cache.y)


# --------------------------------------------------------------------------- the job


def parse_model_key(model_path: str | Path, model_key: str | None = None) -> tuple[str, str | None, float | None]:
    """(model path key, arch, eps) from `model_key` or from the results layout of `model_path`
    (`.../models/{source}/{arch}/{eps|gn}{eps}/s{seed}/model.pt`); arch/eps are None if unparsable."""
    key = model_key or "/".join(Path(model_path).parts[-5:-1])
    m = _MODEL_KEY.match(key)
    if m is None:
        return (model_key or str(model_path)), None, None
    return key, m["arch"], float(m["eps"])


def _load_inputs(model_path: str | Path, target_dir: str | Path, key: str, arch: str | None,
                 mode: int) -> tuple[Prepared, ResNet, dict[str, Any]]:
    """Source model and target, or a TransferError naming both and the fix."""
    target = Path(target_dir).name
    where = f"cannot transfer {key} to {target}"
    if mode not in MODES:
        raise TransferError(f"{where}: unknown mode {mode!r}; modes are {MODES}")
    try:
        prep = Prepared(target_dir)
    except (FileNotFoundError, DataIntegrityError) as err:
        raise TransferError(f"{where}: {err}") from None
    try:
        model, meta = load_model(model_path, expect_arch=arch)
        if mode == 0:
            model.last_bn()  # an imported network may have no BatchNorm before its head
    except (CheckpointError, ValueError) as err:
        raise TransferError(f"{where}: {err}") from None
    for split in ("train", "test"):
        if prep.split_size(split) == 0:
            raise TransferError(f"{where}: the target's {split} split is empty ({prep.root / 'meta.json'}); "
                                "prepare it again or pick another target")
    probe = torch.zeros(1, prep.channels, prep.image_size, prep.image_size)
    try:
        adapt(probe, meta["image_size"], meta["in_channels"])
    except ValueError as err:
        raise TransferError(f"{where}: target {target} has {prep.channels}-channel images and source model "
                            f"{key} takes {meta['in_channels']}-channel input ({err}). Use a source model "
                            "trained on RGB images, or a grayscale target.") from None
    return prep, model, meta


def _cache_split(model: nn.Module, train: Split, n_test: int, sched: dict[str, Any], device: torch.device,
                 what: str, log: logging.Logger) -> TailSplit | None:
    """The model cut at its last BN when the mode-0 cache can be used and fits in schedule.cache_max_mb
    ("always" fails when it cannot); None = train through the full model."""
    probe = train.batch(torch.arange(min(2, train.n)), device, bool(sched["channels_last"]))[0]
    split, why = tail_split(model, probe)
    if split is None:
        if sched["cache_features"] == "always":
            raise TransferError(f"mode-0 cache of {what}: {why}; set cache_features to 'auto' or 'never'")
        log.info("mode-0 cache of %s not available (%s): training through the full model instead", what, why)
        return None
    need = cache_nbytes(model, split, probe, train.n + n_test, device, bool(sched["bf16"]),
                        bool(sched["channels_last"]))
    if need <= sched["cache_max_mb"] * 2**20:
        return split
    msg = f"mode-0 cache of {what} needs {need / 2**20:.0f} MB, over cache_max_mb={sched['cache_max_mb']}"
    if sched["cache_features"] == "always":
        raise TransferError(f"{msg}: raise cache_max_mb (and the job's memory) or set cache_features to 'auto'")
    log.info("%s: training through the full model instead", msg)
    return None


class _TransferJob:
    """Fine-tuning as an `epochs.EpochJob`: the trained modules' state, one batch per step (through
    the mode-0 cache when there is one), top-1 on the target's test split per epoch."""

    SUMS = ("loss", "images", "correct")

    def __init__(self, model: ResNet, mode: int, sched: dict[str, Any], opt: torch.optim.Optimizer, train: Split,
                 test: Split, gen: torch.Generator, dev: torch.device, split: TailSplit | None, what: str,
                 rdir: Path) -> None:
        self.model, self.mode, self.sched, self.opt, self.train, self.test = model, mode, sched, opt, train, test
        self.gen, self.dev, self.split, self.what, self.rdir = gen, dev, split, what, rdir
        self.amp, self.cl = bool(sched["bf16"]), bool(sched["channels_last"])
        self.train_cache: TailCache | None = None
        self.test_cache: TailCache | None = None

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
        return list(perm.split(int(self.sched["batch_size"])))

    def train_mode(self) -> None:
        set_train_mode(self.model, self.mode, self.sched["bn_policy"])

    def step(self, idx: torch.Tensor, index: int, sums: Sums, stop: str | None) -> tuple[torch.Tensor, bool]:
        with autocast(self.dev, self.amp):
            if self.train_cache is not None:
                parts, y = self.train_cache.batch(idx, self.dev, self.cl)
                logits = self.split.tail(parts)
            else:
                x, y = self.train.batch(idx, self.dev, self.cl, self.sched["augment"], self.gen)
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
    schedule: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    threads: int = 1,
    log: logging.Logger = logger,
    model_key: str | None = None,
    arch: str | None = None,
    save_model_to: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    _stop_after_epoch: int | None = None,
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
        schedule: a finetune_schedules entry (missing keys take the schema defaults).
        seed: seeds the head, data order, augmentation and the attack.
        device: "cpu", "cuda", "auto" or a torch.device.
        threads: torch threads.
        log: where per-epoch lines go.
        model_key: "{source}/{arch}/{eps|gn}{eps}/s{seed}" of the source model (metrics'
            source_model and eps); default: read from `model_path`'s results layout.
        arch: the architecture the source model must have (default: the key's).
        save_model_to: also save the fine-tuned model there (not an output of the rule).
        on_epoch: called with each epoch's history row (e.g. MLflow live logging).
        _stop_after_epoch: test hook, behave as if preempted after this many epochs.
    Returns:
        The metrics dict written to metrics.json.
    Raises:
        TransferError: the source model or target cannot be used (names both), or a
            non-finite loss.
        resume.Interrupted: SIGTERM/SIGUSR1 (or the test hook); the state is saved.
        CheckpointError: a corrupt or foreign resume state.
    """
    sched = schedule_defaults(schedule, "finetune_schedule")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    set_threads(threads)
    out_dir = Path(out_dir)
    key, key_arch, key_eps = parse_model_key(model_path, model_key)
    prep, model, meta = _load_inputs(model_path, target_dir, key, arch or key_arch, mode)
    job, runner = _prepare(model, prep, meta, key, mode, sched, seed, dev, threads, out_dir, log, on_epoch,
                           _stop_after_epoch, sha256(Path(model_path)))
    runner.resume(job)
    log.info("transfer %s -> %s, mode %d (%s), %d train / %d test images, %d epochs, %s, %s, bn_policy %s",
             key, prep.name, mode, MODES[mode], job.train.n, job.test.n, runner.epochs, dev,
             "bf16" if job.amp else "fp32", sched["bn_policy"])
    if job.split is not None and runner.epoch < runner.epochs:
        runner.elapsed += job.build_caches(log)  # rebuilt on resume too: the frozen trunk gives the same outputs
    runner.run(job)
    eps = key_eps if key_eps is not None else float(meta.get("eps", float("nan")))
    metrics = _evaluate_and_write(job, runner, prep, meta, key, eps, seed, out_dir, save_model_to, log)
    runner.finish()
    return metrics


def _prepare(model: ResNet, prep: Prepared, meta: dict[str, Any], key: str, mode: int, sched: dict[str, Any],
             seed: int, dev: torch.device, threads: int, out_dir: Path, log: logging.Logger,
             on_epoch: Callable[[dict[str, float]], None] | None, stop_after_epoch: int | None,
             model_sha256: str) -> tuple[_TransferJob, EpochRunner]:
    """The seeded new head, the frozen model, its optimizer, the splits, the cache decision and the runner."""
    workers = 0 if prep.meta["format"] == "arrays" else max(1, threads)
    size, chans = int(meta["image_size"]), int(meta["in_channels"])
    train = Split(prep, "train", size, chans, sched["max_train"], workers)
    test = Split(prep, "test", size, chans, None, workers)
    gen = seed_everything(seed)
    new_head(model, prep.num_classes)
    params = freeze_for_mode(model, mode)
    model.to(dev)
    if sched["channels_last"]:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(params, sched)
    scheduler = make_scheduler(opt, sched)
    what = f"{key} -> {prep.name} mode {mode}"
    split = _cache_split(model, train, test.n, sched, dev, f"{key} on {prep.name}", log) \
        if use_cache(mode, sched) else None
    job = _TransferJob(model, mode, sched, opt, train, test, gen, dev, split, what, out_dir / "resume")
    fingerprint = {"model": key, "model_sha256": model_sha256, "target": prep.name, "mode": mode,
                   "seed": seed, "cached": split is not None, "n_train": train.n,
                   "data": json.dumps(prep.meta.get("sha256", {}), sort_keys=True),
                   "schedule": json.dumps(sched, sort_keys=True)}
    runner = EpochRunner(out_dir, fingerprint, opt, scheduler, gen, int(sched["epochs"]), train.n, HISTORY_COLUMNS,
                         _TransferJob.SUMS, log, sums_device=dev, check_every=CHECK_EVERY,
                         desc=f"{prep.name} mode {mode} ", on_epoch=on_epoch, stop_after_epoch=stop_after_epoch)
    return job, runner


def _evaluate_and_write(job: _TransferJob, runner: EpochRunner, prep: Prepared, meta: dict[str, Any], key: str,
                        eps: float, seed: int, out_dir: Path, save_model_to: str | Path | None,
                        log: logging.Logger) -> dict[str, Any]:
    """Top-1 and PGD (and AutoAttack) of the transferred model on the target's test split (Lemma 5.1:
    a robust backbone gives a robust transferred model), then history.csv, metrics.json (and the model)."""
    model, test, dev, mode = job.model, job.test, job.dev, job.mode
    ev = evaluate_head(model, test.head, test.n, job.sched["evaluation"], dev, "l2", seed, runner.resume_dir, log)
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
