"""Evaluating a trained model on a test split: top-1 accuracy, PGD and (optionally) AutoAttack.

Shared by source training, fine-tuning and imported models; the images come as batches
(`accuracy`) or as the split's first k images (`evaluate_head`), so each job keeps its own way of
reading them (in memory, through a DataLoader, adapted to the model's input).

Every accuracy measured on a sample of images comes with its sample: `atlib.core.intervals.accuracy_interval`
gives the number of images, the number correct and the 95% Wilson score interval in percent,
stored beside the accuracy as "<key>_ci" (on 25 images a 95% interval is about +-19 points).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from atlib.core.intervals import accuracy_interval, intervals
from atlib.core.runtime import EVAL_BATCH
from atlib.data import load_batches
from atlib.train.attacks import evaluate, natural_correct

logger = logging.getLogger("atlib.train.evaluation")

Images = tuple[torch.Tensor, torch.Tensor]


def accuracy(model: nn.Module, batches: Iterable[Images], n: int, device: torch.device, amp: bool = False,
             channels_last: bool = False) -> float:
    """Top-1 (%) of `model` (eval mode for the call) over `n` images given as (x, y) batches."""
    if n == 0:
        return float("nan")
    correct = 0
    for x, y in batches:
        correct += natural_correct(model, x, y.cpu(), EVAL_BATCH, device, amp, channels_last)
    return 100.0 * correct / n


def evaluate_head(model: nn.Module, first: Callable[[int], Images], n: int, evaluation: dict[str, Any],
                  device: torch.device, norm: str = "l2", seed: int = 0, state_dir: Path | None = None,
                  log: logging.Logger = logger) -> dict[str, Any]:
    """`attacks.evaluate` with a schedule's `evaluation` block on the first evaluation.max_images of
    `n` test images (`first(k)`: the first k, on the CPU); with evaluation.attack autoattack also
    `robust_eval.autoattack_accuracy` (seeded by `seed`, resumable from `state_dir`). "natural_acc"
    is over the attacked images only; "attack_of_record" names the attack of record; "pgd_acc_ci" and
    "natural_acc_ci" are the accuracies' samples and Wilson intervals."""
    m = n if evaluation["max_images"] is None else min(evaluation["max_images"], n)
    aa = evaluation["attack"] == "autoattack"
    m_aa = min(evaluation["autoattack"]["max_images"] or n, n) if aa else 0
    k = max(m, m_aa)
    x, y = first(k) if k else (torch.empty(0), torch.empty(0))
    out = evaluate(model, x[:m], y[:m].long(), evaluation["eps"], evaluation["steps"], evaluation["restarts"],
                   EVAL_BATCH, device, None, norm)
    out["pgd_acc_ci"], out["natural_acc_ci"] = intervals(out["pgd_acc"], m), accuracy_interval(out["natural_acc"], m)
    if aa:
        from atlib.train.robust_eval import autoattack_accuracy

        out.update(autoattack_accuracy(model, x[:m_aa], y[:m_aa].long(), evaluation, norm, device,
                                       model.fc.out_features, seed, state_dir, log))
    out["attack_of_record"] = evaluation["attack"]
    return out


def evaluate_dataset(model: nn.Module, ds, evaluation: dict[str, Any], device: torch.device, norm: str = "l2",
                     workers: int = 0, seed: int = 0, state_dir: Path | None = None,
                     log: logging.Logger = logger) -> dict[str, Any]:
    """`evaluate_head` on a dataset of model-ready images, with "natural_acc" over every image
    (streamed in batches: file-backed sets are never loaded whole)."""
    n = len(ds)
    out = evaluate_head(model, lambda k: next(load_batches(ds, [torch.arange(k)], workers)), n, evaluation, device,
                        norm, seed, state_dir, log)
    m = n if evaluation["max_images"] is None else min(evaluation["max_images"], n)
    if m < n:  # natural accuracy on every test image, not only the attacked ones
        out["natural_acc"] = accuracy(model, load_batches(ds, list(torch.arange(n).split(EVAL_BATCH)), workers), n,
                                      device)
        out["natural_acc_ci"] = accuracy_interval(out["natural_acc"], n)
    return out


def robust_metrics(ev: dict[str, Any]) -> dict[str, Any]:
    """The evaluation's robustness entries for metrics.json: PGD, and AutoAttack when it ran, each accuracy
    with its sample and interval ("<key>_ci", for the eps kept in "pgd_acc")."""
    keys = ("pgd_acc", "pgd_acc_ci", "autoattack_acc", "autoattack_acc_ci", "autoattack", "attack_of_record")
    out = {k: ev[k] for k in keys if k in ev}
    if "pgd_acc_ci" in out:  # the eps of pgd_acc only (an import drops the training eps it added)
        out["pgd_acc_ci"] = {e: out["pgd_acc_ci"][e] for e in out["pgd_acc"]}
    return out
