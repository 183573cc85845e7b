"""The weight posterior Q* = N(w, Sigma*) of the information Lagrangian (Prop. A.1, Eq. 6), calibrated
by POSTERIOR_RULE, its KL to the prior (the Information in the Weights), its log-variance, and draws
from it. Shared by the fisher rule (atlib.info.fisher) and the variational inversion (atlib.info.invert),
which draw the same Q* sample from the same generator.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from atlib.core.runtime import eval_mode

POSTERIOR_RULE = ("Prior N(0, lambda_l^2) per parameter tensor l with lambda_l^2 = mean w^2 of that tensor "
                  "(the whole model's mean w^2 for an all-zero tensor), and beta = 4 B / k for a loss budget "
                  "B (nats) and k weights, so that one draw of Q* = N(w, Sigma*), Sigma* = beta/2 "
                  "(F + beta/(2 lambda^2))^-1, raises the training loss by 1/2 sum F Sigma* <= beta k / 4 = B "
                  "to second order.")


def prior_variances(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Empirical-Bayes prior variance per parameter tensor: lambda_l^2 = mean(w^2) over the tensor.

    A tensor that is all zeros (BatchNorm biases at initialization) would get a zero-variance
    prior; it gets the mean w^2 over the whole model instead. Computed in float64.
    """
    if not weights:
        raise ValueError("no weights to set a prior for")
    sq = {k: float(w.detach().double().pow(2).mean().item()) for k, w in weights.items()}
    k_total = sum(w.numel() for w in weights.values())
    overall = sum(v * weights[k].numel() for k, v in sq.items()) / max(k_total, 1)
    if not (math.isfinite(overall) and overall > 0):
        raise ValueError(f"the model's mean w^2 is {overall!r}: every weight is zero or not finite")
    return {k: (v if v > 0 else overall) for k, v in sq.items()}


def beta_from_budget(budget: float, k: int) -> float:
    """beta = 4 B / k: the beta whose Sigma* bounds one draw's second-order loss increase by B nats.

    1/2 sum_i F_i Sigma*_i = beta/4 sum_i F_i / (F_i + beta/(2 lambda_i^2)) <= beta k / 4, with near
    equality when every F_i >> beta/(2 lambda_i^2); weights the loss does not see spend less.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"loss budget must be a finite number > 0 (nats), got {budget!r}")
    if k < 1:
        raise ValueError(f"need k >= 1 weights, got {k}")
    return 4.0 * budget / k


def _check_hyper(beta: float, prior_var: dict[str, float], names) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    missing = sorted(set(names) - set(prior_var))
    if missing:
        raise ValueError(f"no prior variance (lambda^2) for {missing[:5]}")
    bad = {k: v for k, v in prior_var.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"prior variance lambda^2 must be a finite number > 0, got {dict(list(bad.items())[:5])}")


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what} is not finite (NaN/inf) for {bad[:5]}: the model's weights or outputs "
                         "are not finite; check the checkpoint")


def posterior(fisher: dict[str, torch.Tensor], beta: float,
              prior_var: dict[str, float]) -> dict[str, torch.Tensor]:
    """Diagonal Sigma* = beta/2 * (F + beta/(2 lambda_l^2))^-1, elementwise, lambda_l^2 = prior_var[l].

    The prior term beta/(2 lambda^2) > 0 IS the regularization of the inverse: a weight with zero
    Fisher (one the loss does not see) gets the prior's variance lambda^2, never a division by 0.
    """
    out = _posterior64(fisher, beta, prior_var)
    return {k: v.to(fisher[k].dtype) for k, v in out.items()}


def _posterior64(fisher: dict[str, torch.Tensor], beta: float,
                 prior_var: dict[str, float]) -> dict[str, torch.Tensor]:
    _check_hyper(beta, prior_var, fisher)
    check_finite(fisher, "the Fisher")
    out = {k: (beta / 2) / (f.double().clamp_min(0) + beta / (2 * prior_var[k])) for k, f in fisher.items()}
    check_finite(out, "Sigma*")
    return out


def information_in_weights(fisher: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], beta: float,
                           prior_var: dict[str, float]) -> dict[str, Any]:
    """KL(Q* || P) of Eq. 12 with H ~ F (diagonal, so log|.| is a sum of logs), per layer and total.

    Per tensor l with prior N(0, lam^2 I), lam^2 = prior_var[l], c = beta/(2 lam^2):
    KL_l = 1/2 sum log(F + c) + k_l/2 log(2 lam^2/beta) - k_l/2 + (||w||^2 + tr Sigma*) / (2 lam^2).
    This is the exact KL between N(w, Sigma*) and N(0, lam^2 I); the paper prints "- k" for the
    constant, which would make the KL of a zero Fisher (Sigma* = lam^2 I) ||w||^2/(2 lam^2) - k/2 < 0.
    The difference is a constant per architecture, so comparisons across eps are unaffected.
    Computed in float64.

    Returns:
        {"total": float, "per_layer": {parameter name: float}} (per_layer sums to total).
    """
    _check_hyper(beta, prior_var, fisher)
    missing = sorted(set(fisher) - set(weights))
    if missing:
        raise ValueError(f"no weights for Fisher entries {missing[:5]}")
    sigma = _posterior64(fisher, beta, prior_var)
    per_layer = {}
    for k, f in fisher.items():
        f64, w64, lam2 = f.double().clamp_min(0), weights[k].detach().double().cpu(), prior_var[k]
        n = f64.numel()
        kl = (0.5 * torch.log(f64 + beta / (2 * lam2)).sum().item() + 0.5 * n * math.log(2 * lam2 / beta)
              - 0.5 * n + (w64.pow(2).sum().item() + sigma[k].sum().item()) / (2 * lam2))
        if not math.isfinite(kl):
            raise ValueError(f"KL of {k} is not finite; check the Fisher and weights")
        per_layer[k] = kl
    return {"total": float(sum(per_layer.values())), "per_layer": per_layer}


def log_variance(sigma: dict[str, torch.Tensor], prior_var: dict[str, float] | None = None) -> dict[str, Any]:
    """Mean log-variance of the posterior: per parameter tensor and over all weights.

    Flat directions (small Fisher) have large variance; the paper's Figure 4 shows the mean
    growing with the training eps. With `prior_var`, also "mean_vs_prior": the mean of
    log(Sigma*_i / lambda_l^2) <= 0, how far the data shrank the posterior below the prior
    (0 for weights the loss does not see); unlike "mean" it does not move with the weights' scale.
    """
    per_layer = {k: s.double().log().mean().item() for k, s in sigma.items()}
    count = max(sum(s.numel() for s in sigma.values()), 1)
    out = {"mean": sum(s.double().log().sum().item() for s in sigma.values()) / count, "per_layer": per_layer}
    if prior_var is not None:
        out["mean_vs_prior"] = sum((s.double().log() - math.log(prior_var[k])).sum().item()
                                   for k, s in sigma.items()) / count
    return out


@torch.no_grad()
def loss_under_noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: dict[str, torch.Tensor],
                     draws: int, generator: torch.Generator | None = None, chunk: int = 256) -> dict[str, Any]:
    """Cross-entropy and accuracy on (x, y) of the weights w and of `draws` independent w + n, n ~ N(0, Sigma*).

    The model is evaluated in eval mode through `functional_call` and never modified; the noise
    is drawn on the CPU with `generator` (as the inversion draws it), so results do not depend on
    the device.

    Returns:
        {"clean_loss", "clean_acc", "noisy_loss": [...], "noisy_acc": [...], "loss_increase_draws": [...],
        "loss_increase": mean of the draws' increases}.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def evaluate(p: dict[str, torch.Tensor]) -> tuple[float, float]:
        loss = correct = 0.0
        for i in range(0, len(x), chunk):
            logits = functional_call(model, (p, buffers), (x[i:i + chunk],)).float()
            loss += F.cross_entropy(logits, y[i:i + chunk], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + chunk]).sum().item()
        return loss / len(x), correct / len(x)

    with eval_mode(model):
        clean_loss, clean_acc = evaluate(params)
        noisy = []
        for _ in range(draws):
            noise = draw_noise(sigma, params, generator)
            noisy.append(evaluate({k: p + noise[k] for k, p in params.items()}))
    increases = [loss - clean_loss for loss, _ in noisy]
    return {"clean_loss": clean_loss, "clean_acc": clean_acc, "noisy_loss": [loss for loss, _ in noisy],
            "noisy_acc": [acc for _, acc in noisy], "loss_increase_draws": increases,
            "loss_increase": sum(increases) / draws}

def draw_noise(sigma_star: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
           generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """n ~ N(0, diag Sigma*), drawn on the CPU (reproducible on any device)."""
    return {k: (sigma_star[k].sqrt() * torch.randn(p.shape, generator=generator)).to(p.device, p.dtype)
            for k, p in params.items()}

def check_sigma(sigma_star: dict[str, torch.Tensor] | None, params: dict[str, torch.Tensor],
                 method: str) -> dict[str, torch.Tensor]:
    if sigma_star is None:
        raise ValueError(f"method {method!r} needs sigma_star (Sigma* from the fisher rule's fisher.pt)")
    missing = sorted(set(params) - set(sigma_star))
    if missing:
        raise ValueError(f"sigma_star lacks parameters {missing[:5]}: is fisher.pt from another architecture?")
    out = {}
    for k, p in params.items():
        s = sigma_star[k].detach().float().cpu()
        if s.shape != p.shape:
            raise ValueError(f"sigma_star[{k!r}] has shape {tuple(s.shape)}, parameter has {tuple(p.shape)}")
        if not torch.isfinite(s).all() or (s < 0).any():
            raise ValueError(f"sigma_star[{k!r}] has negative or non-finite variances")
        out[k] = s
    return out


def weight_posterior(model: nn.Module, fisher: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     budget: float, draws: int, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Q* at a loss budget (POSTERIOR_RULE): Sigma*, its KL and log-variance, and the measured loss increase.

    Args:
        model: the classifier whose weights are the posterior mean.
        fisher: its diagonal Fisher (CPU tensors by parameter name).
        x, y: images and dataset labels the training loss is measured on (the Fisher's images).
        budget: B, nats of expected second-order loss increase under one draw of Q*.
        draws: independent draws of Q* the measured increase is averaged over.
        generator: CPU generator for the draws.

    Returns:
        {"beta", "k", "prior_var", "sigma", "kl", "log_variance", "noise"}: kl from
        `information_in_weights`, log_variance from `log_variance`, noise from `loss_under_noise`.
    """
    weights = {k: v.detach().cpu() for k, v in model.named_parameters()}
    prior_var = prior_variances(weights)
    k = sum(w.numel() for w in weights.values())
    beta = beta_from_budget(budget, k)
    sigma = posterior(fisher, beta, prior_var)
    return {"beta": beta, "k": k, "prior_var": prior_var, "sigma": sigma,
            "kl": information_in_weights(fisher, weights, beta, prior_var),
            "log_variance": log_variance(sigma, prior_var),
            "noise": loss_under_noise(model, x, y, sigma, draws, generator)}


def posterior_summary(q: dict[str, Any], budget: float) -> dict[str, Any]:
    """summary.json's "posterior" entry for a `weight_posterior` result."""
    noise = q["noise"]
    return {"rule": POSTERIOR_RULE, "loss_budget": budget, "beta": q["beta"], "k": q["k"],
            "prior_var_per_layer": q["prior_var"], "loss_increase": noise["loss_increase"],
            "loss_increase_draws": noise["loss_increase_draws"], "clean_loss": noise["clean_loss"],
            "clean_acc": noise["clean_acc"], "noisy_acc": sum(noise["noisy_acc"]) / len(noise["noisy_acc"]),
            "noisy_acc_draws": noise["noisy_acc"], "log_variance_vs_prior_mean": q["log_variance"]["mean_vs_prior"]}


def budget_sweep(model: nn.Module, fisher: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, budget: float,
           factors: list[float], generator: torch.Generator) -> list[dict[str, float]]:
    """The posterior at budgets B * f (one draw each): how beta, flatness, KL and loss move with B."""
    out = []
    for f in factors:
        q = weight_posterior(model, fisher, x, y, budget * f, 1, generator)
        out.append({"loss_budget": budget * f, "beta": q["beta"], "log_variance_mean": q["log_variance"]["mean"],
                    "kl_total": q["kl"]["total"], "loss_increase": q["noise"]["loss_increase"],
                    "noisy_acc": q["noise"]["noisy_acc"][0]})
    return out
