"""PGD attacks in pixel space [0, 1]: threat models, Madry's Eq. 1, TRADES (Eq. 2), evaluation;
and `gaussian_noise`, the random perturbation of Gaussian-noise training.

One small class per threat model (after MadryLab `robustness/attack_steps.py`): `step` moves
along the gradient's steepest-ascent direction for the norm, `project` returns to the ball
around the clean image and to the image box, `random_start` draws uniformly INSIDE the ball
(MadryLab starts on the sphere). Nothing here calls `.cuda()`: tensors stay where they are,
and autocast set by the caller applies to the model's forward passes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from atlib.core.runtime import autocast, eval_mode, to_memory_format
from atlib.spec.grid import eps_str

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_example_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped to broadcast against `x` (works for any memory format)."""
    dims = tuple(range(1, x.dim()))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


class AttackStep(ABC):
    """A threat model: the eps-ball of a norm around x0, intersected with the box [0, 1].

    Args:
        eps: radius of the ball.
        step_size: length of one ascent step (in the norm of the threat model).
    """

    def __init__(self, eps: float, step_size: float) -> None:
        self.eps, self.step_size = float(eps), float(step_size)

    @abstractmethod
    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """See the subclasses: one per threat model."""

    @abstractmethod
    def step(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """See the subclasses: one per threat model."""

    @abstractmethod
    def random_start(self, x0: torch.Tensor) -> torch.Tensor:
        """See the subclasses: one per threat model."""


class L2Step(AttackStep):
    """The L2 ball: normalized-gradient steps, radial projection."""

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        delta = x - x0
        scale = (self.eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x0 + delta * scale).clamp_(0.0, 1.0)

    def step(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return x + grad * (self.step_size / _per_example_norm(grad).clamp_min(1e-12))

    def random_start(self, x0: torch.Tensor) -> torch.Tensor:
        # Uniform in the ball: isotropic direction, radius eps * U^(1/d).
        d = x0[0].numel()
        direction = torch.randn_like(x0)
        direction = direction / _per_example_norm(direction).clamp_min(1e-12)
        u = torch.rand((x0.shape[0],) + (1,) * (x0.dim() - 1), device=x0.device, dtype=x0.dtype)
        return (x0 + direction * (self.eps * u.pow(1.0 / d))).clamp_(0.0, 1.0)


class LinfStep(AttackStep):
    """The L-infinity ball: signed-gradient steps, coordinate-wise clipping."""

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (x0 + (x - x0).clamp(-self.eps, self.eps)).clamp_(0.0, 1.0)

    def step(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return x + self.step_size * grad.sign()

    def random_start(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0 + torch.empty_like(x0).uniform_(-self.eps, self.eps)).clamp_(0.0, 1.0)


STEPS: dict[str, type[AttackStep]] = {"l2": L2Step, "linf": LinfStep}


def make_step(norm: str, eps: float, step_size: float) -> AttackStep:
    if norm not in STEPS:
        raise ValueError(f"unknown attack norm {norm!r}: expected one of {sorted(STEPS)}")
    return STEPS[norm](eps, step_size)


def gaussian_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + delta, delta ~ N(0, sigma^2 I) with sigma = eps / sqrt(n), clamped to the box [0, 1].

    n = C*H*W (one example's dimension), so E||delta||^2 = eps^2: noise of L2 norm ~eps, the
    random counterpart of an eps-ball attack (Gaussian-noise training, objective `gaussian`).
    Fresh noise per example and call, drawn from `generator` or else torch's global RNG of
    x's device (the one the trainer seeds and its resume state carries, as for PGD's start).
    The clamp only shortens delta, as the attacks' projection does.

    Args:
        x: clean images (N, ...) in [0, 1]; the memory format is kept.
        eps: expected L2 norm of the noise; 0 returns a copy of `x`.
        generator: a generator on x's device, for reproducible draws outside the trainer.
    """
    x0 = x.detach()
    if eps <= 0:
        return x0.clone()
    sigma = float(eps) / math.sqrt(x0[0].numel())
    noise = torch.empty_like(x0).normal_(0.0, sigma, generator=generator)
    return (x0 + noise).clamp_(0.0, 1.0)


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    norm: str = "l2",
    random_start: bool = True,
    bn_eval: bool = True,
    loss_fn: LossFn | None = None,
    restarts: int = 1,
    x_init: torch.Tensor | None = None,
    clean_first: bool = False,
) -> torch.Tensor:
    """Projected gradient ascent on `loss_fn(model(x'), y)` over the eps-ball around `x`.

    Gradients are taken with `torch.autograd.grad` on the input only, so the parameters'
    `.grad` is untouched (and their gradients are not even computed).

    Args:
        model: maps images in [0, 1] to logits.
        x: clean images (N, C, H, W) in [0, 1].
        y: labels (or any target `loss_fn` takes, e.g. clean probabilities for TRADES).
        eps: radius; 0 returns `x` unchanged.
        steps: ascent steps.
        step_size: per-step length; default 2.5 * eps / steps (MadryLab's rule).
        norm: "l2" or "linf".
        random_start: start uniformly inside the ball (else at `x`).
        bn_eval: run the attack with the model in eval mode (BatchNorm statistics frozen).
        loss_fn: loss to maximize, summed over the batch; default cross-entropy.
        restarts: independent runs; per example the worst case is kept (misclassified
            first, then higher loss).
        x_init: explicit starting point (overrides `random_start`), e.g. TRADES' small noise.
        clean_first: the first run starts at `x`, the other `restarts - 1` at random. With
            few steps a start uniform in the ball (in high dimension: near the sphere) keeps
            a large random component the projection never removes, so the clean start is the
            stronger single run; evaluation uses both.
    Returns:
        Detached adversarial images, same shape as `x`.
    """
    if eps <= 0 or steps <= 0:
        return x.detach().clone()
    loss_fn = loss_fn or _ce_sum
    attack = make_step(norm, eps, step_size if step_size is not None else 2.5 * eps / steps)
    x0 = x.detach()
    best, best_key = None, None
    with eval_mode(model, bn_eval):
        for run in range(restarts):
            if clean_first and run == 0:
                x_adv = x0.clone()
            elif x_init is not None:
                x_adv = attack.project(x_init.detach(), x0)
            elif random_start:
                x_adv = attack.random_start(x0)
            else:
                x_adv = x0.clone()
            for _ in range(steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    loss = loss_fn(model(x_adv), y)
                    (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = attack.project(attack.step(x_adv.detach(), grad), x0)
            if restarts == 1:
                return x_adv.detach()
            key = _worst_case_key(model, x_adv, y, loss_fn)
            if best is None:
                best, best_key = x_adv.detach(), key
            else:
                better = key > best_key
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv.detach(), best)
                best_key = torch.maximum(key, best_key)
    return best


def _worst_case_key(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """Per-example score: misclassified examples rank above any correct one, then by loss."""
    with torch.no_grad():
        logits = model(x_adv).float()
        if y.dim() == 1:  # class labels
            losses = F.cross_entropy(logits, y, reduction="none")
            wrong = (logits.argmax(1) != y).float()
        else:
            losses = torch.stack([loss_fn(logits[i:i + 1], y[i:i + 1]) for i in range(len(x_adv))])
            wrong = torch.zeros_like(losses)
    # Bounded loss transform keeps "wrong" dominant whatever the loss scale.
    return wrong + torch.sigmoid(losses) * 0.5


def _kl_sum(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """sum_i KL(p_clean_i || softmax(logits_adv_i)): TRADES' inner objective."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), p_clean, reduction="sum")


def trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    beta: float,
    norm: str = "l2",
    bn_eval: bool = True,
    reduction: str = "mean",
    return_logits: bool = False,
):
    """TRADES (the paper's Eq. 2): CE(f(x), y) + beta * max_{delta} KL(f(x) || f(x + delta)).

    The inner maximization runs PGD on the KL from a small Gaussian start (as the TRADES
    reference code: at delta = 0 the KL and its gradient vanish). The KL direction follows
    the reference implementation (clean distribution first).

    Args:
        model, x, y, eps, steps, step_size, norm, bn_eval: as in `pgd`.
        beta: weight of the robustness term.
        reduction: "mean" (a scalar) or "none" (per-example losses, for DDP-exact averaging).
        return_logits: also return (clean logits, adversarial logits).
    """
    with torch.no_grad(), eval_mode(model, bn_eval):
        p_clean = F.softmax(model(x).float(), dim=1)
    x_init = (x.detach() + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
    x_adv = pgd(model, x, p_clean, eps, steps, step_size, norm, bn_eval=bn_eval, loss_fn=_kl_sum,
                x_init=x_init)
    logits_nat, logits_adv = model(x).float(), model(x_adv).float()
    ce = F.cross_entropy(logits_nat, y, reduction="none")
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="none").sum(1)
    per_example = ce + beta * kl
    loss = per_example.mean() if reduction == "mean" else per_example
    return (loss, logits_nat, logits_adv) if return_logits else loss


@torch.no_grad()
def correct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                  device: torch.device = torch.device("cpu"), amp: bool = False,
                  channels_last: bool = False) -> torch.Tensor:
    """Per image, whether it is classified correctly (a CPU bool tensor; model in eval mode for the call)."""
    flags = [torch.zeros(0, dtype=torch.bool)]
    with eval_mode(model, True):
        for i in range(0, len(x), batch_size):
            xb = to_memory_format(x[i:i + batch_size].to(device, non_blocking=True), channels_last)
            with autocast(device, amp):
                pred = model(xb).argmax(1)
            flags.append(pred.cpu() == y[i:i + batch_size])
    return torch.cat(flags)


def natural_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                    device: torch.device = torch.device("cpu"), amp: bool = False,
                    channels_last: bool = False) -> int:
    """Number of correctly classified images (model in eval mode for the call)."""
    return int(correct_flags(model, x, y, batch_size, device, amp, channels_last).sum())


def pgd_robust_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
                     restarts: int = 1, batch_size: int = 256, device: torch.device = torch.device("cpu"),
                     norm: str = "l2", amp: bool = False) -> torch.Tensor:
    """Per image of `x`, whether it is still classified correctly under `evaluate`'s PGD at `eps` (a CPU
    bool tensor): per-image outcomes, so that another attack on the same images can be paired with it."""
    flags = [torch.zeros(0, dtype=torch.bool)]
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with autocast(device, amp):
            xa = pgd(model, xb, yb, eps, steps, norm=norm, restarts=restarts, clean_first=True)
        flags.append(correct_flags(model, xa, yb.cpu(), batch_size, device))
    return torch.cat(flags)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: list[float],
    steps: int = 20,
    restarts: int = 1,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    max_images: int | None = None,
    norm: str = "l2",
    amp: bool = False,
) -> dict:
    """Natural accuracy on all of `x` and PGD accuracy on its first `max_images`, in percent.

    PGD uses 2.5 * eps / steps step size and BatchNorm in eval mode; the first run starts at
    the clean image, each further restart uniformly in the ball, and the worst case over runs
    is kept per example.

    Args:
        model: classifier on [0, 1] images (its mode is restored after).
        x, y: test images (N, C, H, W) in [0, 1] on any device, and int64 labels.
        eps_list: attack radii; keys of "pgd_acc" are `eps_str(eps)`.
        steps, restarts, norm: the attack.
        batch_size: images per forward/attack batch.
        device: where the model runs.
        max_images: images attacked (None = all).
        amp: bf16 autocast for the attack (faster; fp32 is the reference).
    Returns:
        {"natural_acc": %, "pgd_acc": {"<eps>": %}}.
    """
    model = model.to(device)
    n = len(y)
    out = {"natural_acc": 100.0 * natural_correct(model, x, y, batch_size, device) / max(n, 1), "pgd_acc": {}}
    m = n if max_images is None else min(max_images, n)
    for eps in eps_list:
        robust = pgd_robust_flags(model, x[:m], y[:m], eps, steps, restarts, batch_size, device, norm, amp)
        out["pgd_acc"][eps_str(eps)] = 100.0 * int(robust.sum()) / max(m, 1)
    return out


def default_step_size(eps: float, steps: int, factor: float = 2.5) -> float:
    """MadryLab's step size rule: factor * eps / steps."""
    return factor * eps / max(steps, 1)


__all__ = [
    "AttackStep", "L2Step", "LinfStep", "STEPS", "make_step", "pgd", "trades_loss", "evaluate",
    "natural_correct", "correct_flags", "pgd_robust_flags", "default_step_size",
]
