"""Evaluating a trained model on a test split: top-1 accuracy, PGD and (optionally) AutoAttack.

Shared by source training, fine-tuning and imported models; the images come as batches
(`accuracy`) or as the split's first k images (`evaluate_head`), so each job keeps its own way of
reading them (in memory, through a DataLoader, adapted to the model's input).

Every accuracy measured on a sample of images comes with its sample: `accuracy_interval` gives the
number of images, the number correct and the 95% Wilson score interval (`wilson_interval`) in percent,
stored beside the accuracy as "<key>_ci" (on 25 images a 95% interval is about +-19 points).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from scipy.stats import binomtest
from torch import nn

from .attacks import evaluate, natural_correct
from .data import load_batches
from .runtime import EVAL_BATCH

logger = logging.getLogger("atlib.evaluation")

Images = tuple[torch.Tensor, torch.Tensor]
LEVEL = 0.95  # the confidence level of every interval in metrics.json


def wilson_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion of k successes in n trials (scipy's binomtest), as
    fractions in [0, 1]; (nan, nan) without trials. Unlike the Wald interval it stays inside [0, 1] and
    keeps its coverage at k = 0 or k = n, the usual case for robust accuracy on a few images."""
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_interval(acc: float, n: int) -> dict[str, Any]:
    """An accuracy `acc` (%) over `n` images as {"n", "correct", "lo", "hi"} (the 95% Wilson interval, %).
    The count is recovered from the percentage (exact: acc = 100 * correct / n); no accuracy, no interval."""
    if not (n > 0 and math.isfinite(acc)):
        return {"n": int(n), "correct": None, "lo": math.nan, "hi": math.nan}
    k = round(acc * n / 100.0)
    lo, hi = wilson_interval(k, n)
    return {"n": int(n), "correct": int(k), "lo": 100.0 * lo, "hi": 100.0 * hi}


def intervals(accs: dict[str, float], n: int) -> dict[str, dict[str, Any]]:
    """`accuracy_interval` of each accuracy of a {eps: %} dict, all over the same `n` images."""
    return {e: accuracy_interval(a, n) for e, a in accs.items()}


def _pair_correlation(both: int, first_only: int, second_only: int, neither: int) -> float:
    """Newcombe's continuity-corrected correlation of paired outcomes: (ad - bc) shrunk towards 0 by n/2
    when positive, 0 when a margin is empty."""
    n = both + first_only + second_only + neither
    margins = (both + first_only, second_only + neither, both + second_only, first_only + neither)
    if min(margins) == 0:
        return 0.0
    a = both * neither - first_only * second_only
    a = a - n / 2 if a > n / 2 else min(a, 0)
    return a / math.sqrt(math.prod(margins))


def paired_difference_interval(both: int, first_only: int, second_only: int, neither: int,
                               level: float = LEVEL) -> tuple[float, float]:
    """Interval of p1 - p2 for two proportions measured on the same n items, from their 2x2 table
    (p1 = (both + first_only) / n, p2 = (both + second_only) / n), as fractions; (nan, nan) without items.

    Newcombe's hybrid score ("square-and-add") interval for paired proportions (Newcombe 1998, method 10,
    with his continuity-corrected correlation; as in Fagerland, Lydersen & Laake 2017, ch. 8): each
    proportion's Wilson interval, combined with the correlation of the pairs. Unlike the difference of
    two independent intervals it credits the pairing; its width rests on the discordant cells."""
    n = both + first_only + second_only + neither
    if n <= 0:
        return math.nan, math.nan
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    (l1, u1), (l2, u2) = wilson_interval(both + first_only, n, level), wilson_interval(both + second_only, n, level)
    phi = _pair_correlation(both, first_only, second_only, neither)
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    up = math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return p1 - p2 - down, p1 - p2 + up


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
        from .robust_eval import autoattack_accuracy

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
