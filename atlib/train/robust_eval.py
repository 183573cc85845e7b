"""AutoAttack (Croce & Hein, 2020) as the robust accuracy of record, via its reference code `pyautoattack`.

PGD (`atlib.train.attacks`) stays the cheap per-epoch monitor. A model's final evaluation (a source model, or a
transferred one: Lemma 5.1) can add AutoAttack, the attack the field reports robustness with (RobustBench
runs it). It is the reference implementation on PyPI, the one RobustBench depends on; torchattacks'
port is known to disagree with it (torchattacks#188).

`version` is AutoAttack's: standard (APGD-CE, APGD-T, FAB-T, Square), plus, rand, or custom, which
runs the listed attacks with the standard version's settings (100 iterations, 1 restart, C-1 target
classes, 5,000 Square queries). Beside each AutoAttack number the PGD accuracy on the same images is
kept, with the 2x2 table of their per-image outcomes, so a report can say how far PGD overstated
robustness with a paired interval (the table's discordant cells).

Resumable: the robust flags of each chunk of images are saved in `state_dir` as the chunk finishes;
a rerun (after a kill or preemption) attacks only the chunks not done.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlib.core.intervals import intervals
from atlib.core.runtime import EVAL_BATCH, eval_mode
from atlib.models.checkpoint import CheckpointError, atomic_save, safe_load
from atlib.spec.grid import eps_str
from atlib.train.attacks import pgd_robust_flags

logger = logging.getLogger("atlib.train.robust_eval")

NORMS = {"l2": "L2", "linf": "Linf"}
CHUNK = 500  # images attacked between two saves of the progress
NEEDS_4_CLASSES = ("apgd-dlr", "apgd-t")  # the DLR losses read the 3rd and 4th largest logits


def make_autoattack(model: nn.Module, norm: str, eps: float, cfg: dict[str, Any], num_classes: int, seed: int,
                    device: torch.device, log: logging.Logger = logger) -> Any:
    """A `pyautoattack.AutoAttack` for `cfg` (the evaluation's autoattack block).

    Target classes are min(9, C-1) (AutoAttack's 9 assume 10+ classes); with fewer than 4 classes
    the DLR-based attacks cannot run and are left out (said in the log).
    """
    from pyautoattack import AutoAttack

    custom = cfg["version"] == "custom"
    aa = AutoAttack(model, norm=NORMS[norm], eps=float(eps), version="standard" if custom else cfg["version"],
                    seed=seed, device=device)
    if custom:  # the chosen attacks with the standard version's settings
        aa.version, aa.attacks_to_run = "custom", list(cfg["attacks"])
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, num_classes - 1)
    if num_classes < 4:
        dropped = [a for a in aa.attacks_to_run if a in NEEDS_4_CLASSES]
        aa.attacks_to_run = [a for a in aa.attacks_to_run if a not in NEEDS_4_CLASSES]
        if dropped:
            log.info("autoattack: %d classes, so %s (DLR losses need 4) are left out", num_classes, dropped)
    aa.logger = log
    return aa


def describe(cfg: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The attacks actually run, for the metrics (the report labels numbers with it)."""
    attacks = list(cfg["attacks"]) if cfg["version"] == "custom" else \
        {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "plus": ["apgd-ce", "apgd-dlr", "fab", "square",
                                                                       "apgd-t", "fab-t"],
         "rand": ["apgd-ce", "apgd-dlr"]}[cfg["version"]]
    if num_classes < 4:
        attacks = [a for a in attacks if a not in NEEDS_4_CLASSES]
    return {"version": cfg["version"], "attacks": attacks}


def _load_progress(path: Path, fingerprint: str) -> dict[int, torch.Tensor]:
    try:
        obj = safe_load(path)
    except CheckpointError:
        return {}  # absent or unreadable: start over
    return obj["done"] if obj.get("fingerprint") == fingerprint else {}


def paired_table(pgd: torch.Tensor, aa: torch.Tensor) -> dict[str, int]:
    """The 2x2 table of two attacks' per-image outcomes on the same images (True: still correct). Its
    discordant cells, `pgd_only` (PGD's overstatement) and `autoattack_only`, give the paired interval."""
    pgd, aa = pgd.bool(), aa.bool()
    return {"both": int((pgd & aa).sum()), "pgd_only": int((pgd & ~aa).sum()),
            "autoattack_only": int((~pgd & aa).sum()), "neither": int((~pgd & ~aa).sum())}


def _autoattack_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                      cfg: dict[str, Any], num_classes: int, seed: int, device: torch.device, fingerprint: str,
                      path: Path | None, log: logging.Logger) -> torch.Tensor:
    """Per image of (x, y), whether AutoAttack at `eps` leaves it correct; the chunks already attacked are
    read from `path`, and each chunk is saved there as it finishes (None: not resumable)."""
    done = _load_progress(path, fingerprint) if path is not None else {}
    aa = make_autoattack(model, norm, eps, cfg, num_classes, seed, device, log)
    for i, start in enumerate(range(0, len(y), CHUNK)):
        if i not in done:
            xb, yb = x[start:start + CHUNK].to(device), y[start:start + CHUNK].to(device)
            _, y_adv = aa.run_standard_evaluation(xb, yb, batch_size=250)
            done[i] = (y_adv == yb).cpu()
            if path is not None:
                atomic_save({"fingerprint": fingerprint, "done": done}, path)
    return torch.cat([done[i] for i in sorted(done)]) if done else torch.zeros(0, dtype=torch.bool)


def autoattack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, evaluation: dict[str, Any],
                        norm: str, device: torch.device, num_classes: int, seed: int = 0,
                        state_dir: str | Path | None = None, log: logging.Logger = logger) -> dict[str, Any]:
    """AutoAttack accuracy (%) of `model` on the first autoattack.max_images of (x, y), per eps.

    Args:
        model: classifier on [0, 1] images, evaluated in eval mode in fp32 (its mode is restored).
        x, y: test images (N, C, H, W) in [0, 1] and int64 labels, on any device.
        evaluation: a schedule's evaluation block (autoattack.eps null = evaluation.eps; PGD settings
            for the same-image comparison).
        norm: "l2" or "linf".
        num_classes: classes of the model's head.
        seed: AutoAttack's seed.
        state_dir: where progress is saved (None: not resumable).
    Returns:
        {"autoattack_acc": {eps: %}, "autoattack_acc_ci": {eps: {n, correct, lo, hi}}, "autoattack": {version,
        attacks, n_images, eps, pgd_acc_same_images, pgd_acc_same_images_ci, paired: {eps: {both, pgd_only,
        autoattack_only, neither}}, cpu_s}} (intervals: 95% Wilson, %).
    """
    cfg = evaluation["autoattack"]
    eps_list = cfg["eps"] if cfg["eps"] is not None else evaluation["eps"]
    n = len(y) if cfg["max_images"] is None else min(cfg["max_images"], len(y))
    x, y = x[:n], y[:n]
    fingerprint = json.dumps({"cfg": cfg, "n": n, "norm": norm, "seed": seed}, sort_keys=True)
    cpu0 = time.process_time()
    robust: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for eps in eps_list:
            path = Path(state_dir) / f"autoattack_eps{eps_str(eps)}.pt" if state_dir is not None else None
            robust[eps_str(eps)] = _autoattack_flags(model, x, y, norm, eps, cfg, num_classes, seed, device,
                                                     fingerprint, path, log)
    accs = {e: 100.0 * float(r.float().sum()) / max(n, 1) for e, r in robust.items()}
    ci = intervals(accs, n)
    for e, acc in accs.items():
        log.info("autoattack (%s) eps %s: %.2f%% robust on %d images (95%% CI %.1f-%.1f)", cfg["version"], e, acc, n,
                 ci[e]["lo"], ci[e]["hi"])
    # PGD (the evaluation's attack) on the same images, per image, for the paired comparison
    pgd = {eps_str(e): pgd_robust_flags(model, x, y, e, evaluation["steps"], evaluation["restarts"], EVAL_BATCH,
                                        device, norm) for e in eps_list}
    pgd_accs = {e: 100.0 * int(r.sum()) / max(n, 1) for e, r in pgd.items()}
    return {"autoattack_acc": accs, "autoattack_acc_ci": ci,
            "autoattack": {**describe(cfg, num_classes), "n_images": n, "eps": [float(e) for e in eps_list],
                           "pgd_acc_same_images": pgd_accs, "pgd_acc_same_images_ci": intervals(pgd_accs, n),
                           "paired": {e: paired_table(pgd[e], robust[e]) for e in accs},
                           "cpu_s": round(time.process_time() - cpu0, 2)}}
