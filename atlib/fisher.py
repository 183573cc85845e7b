"""Information in the weights (Prop. A.1, Eq. 12) and in the activations (Prop. 3.2).

Weights: the diagonal Fisher F = E[g * g] from exact per-sample gradients g of log p_w(y|x)
(torch.func: vmap over grad of functional_call), the optimal posterior covariance
Sigma* = beta/2 (F + beta/(2 lambda^2))^-1 of the information Lagrangian (Eq. 6), its
log-variance (the paper's Figure 4 "flatness") and KL(Q* || P), the Information in the Weights.

Activations: for z = model.features(x) with Jacobian J = dz/dx, the sensitivity S = J^T J.
AT penalizes its top eigenvalue lambda1 (Eq. 5), Gaussian-noise regularization only tr(S)/n,
and tr(S)/n <= lambda1. Both come from Jacobian-vector products, never an explicit Jacobian.

The Fisher is the *mean* over samples (the paper's L_D is an empirical expectation), so
Sigma* for a given beta is that of one sample's worth of evidence. beta and the prior are not
free knobs (POSTERIOR_RULE): the prior variance of each parameter tensor is its mean w^2
(empirical Bayes), and beta = 4 B / k is set by a loss budget B, the training-loss increase (nats)
one draw of Q* may cost to second order; `loss_under_noise` measures the actual increase.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from tqdm import tqdm

from .models import weight_norm
from .runtime import eval_mode

log = logging.getLogger("atlib")

KINDS = ("true", "empirical")


# ---------------------------------------------------------------------------------------------
# Diagonal Fisher of the weights
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_labels(model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None,
                  chunk: int = 256) -> torch.Tensor:
    """Labels y ~ p_w(y|x), one per image: what the *true* Fisher averages over.

    Sampled on the CPU with `generator`, so the labels do not depend on the device or chunk.
    """
    with eval_mode(model):
        probs = torch.cat([F.softmax(model(x[i:i + chunk]).float(), dim=1).cpu()
                           for i in range(0, len(x), chunk)])
    if not torch.isfinite(probs).all():
        raise ValueError("the model's predictions are not finite (NaN/inf weights?); cannot sample labels")
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(x.device)


METHODS = ("vmap", "loop")


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "true",
                    chunk: int = 64, generator: torch.Generator | None = None, progress: bool = False,
                    method: str = "vmap") -> dict[str, torch.Tensor]:
    """Diagonal Fisher E_x[g * g], g = grad_w log p_w(y|x), from exact per-sample gradients.

    "vmap" batches per-sample gradients with torch.func (vmap over grad of functional_call);
    "loop" runs one backward pass per sample. Both are exact. Measured on 2 CPU threads of a
    quiet machine, ms per image: demo resnet8 width 0.25, 28x28: vmap 0.5, loop 1.3; CIFAR
    ResNet-18: vmap 51, loop 27; CIFAR ResNet-50: vmap 98, loop 67 (benchmarks/bench_fisher.py
    times the first two). On CPU
    vmap's per-sample convolution gradients run as grouped convolutions, which do not beat
    oneDNN's single-image kernels for wide layers. On GPU batching should pay (not measured
    here: no GPU was available).

    Args:
        model: a classifier; evaluated in eval mode (BatchNorm uses its running statistics,
            so samples do not interact and per-sample gradients are well defined).
        x: inputs (N, C, H, W) on the model's device.
        y: labels (N,); required for kind "empirical", ignored for "true".
        kind: "true" samples y from the model's predictive distribution (the Fisher of
            Prop. A.1); "empirical" uses the given labels.
        chunk: samples per vmap call; memory grows as chunk x number of parameters.
        generator: CPU generator for the sampled labels.
        progress: show a tqdm bar over chunks.
        method: "vmap" or "loop".

    Returns:
        {parameter name: tensor of the parameter's shape}, averaged over the N samples.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if kind == "empirical":
        if y is None:
            raise ValueError("kind='empirical' needs the labels y")
        if len(y) != len(x):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    else:
        y = sample_labels(model, x, generator)
    per_chunk = _vmap_chunk(model) if method == "vmap" else _loop_chunk
    total = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    with eval_mode(model):
        for i in tqdm(range(0, len(x), chunk), desc=f"fisher ({method})", disable=not progress, leave=False):
            for k, sq in per_chunk(model, x[i:i + chunk], y[i:i + chunk]).items():
                total[k] += sq
    out = {k: v / len(x) for k, v in total.items()}
    _check_finite(out, "diagonal Fisher")
    return out


def _vmap_chunk(model: nn.Module):
    """Per-chunk sum of squared per-sample gradients with torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def log_lik(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return -F.cross_entropy(logits, yi.unsqueeze(0))  # log p(y|x), vmap-safe (no indexing)

    per_sample = vmap(grad(log_lik), in_dims=(None, 0, 0))

    def run(model: nn.Module, xc: torch.Tensor, yc: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: g.pow(2).sum(0) for k, g in per_sample(params, xc, yc).items()}

    return run


def _loop_chunk(model: nn.Module, xc: torch.Tensor, yc: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-chunk sum of squared per-sample gradients, one backward pass per sample."""
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    with torch.enable_grad():
        for i in range(len(xc)):
            logp = -F.cross_entropy(model(xc[i:i + 1]), yc[i:i + 1])
            for k, g in zip(params, torch.autograd.grad(logp, list(params.values()), allow_unused=True)):
                if g is not None:
                    total[k] += g.pow(2)
    return total


def diagonal_fisher_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The empirical diagonal Fisher for given labels, one backward pass per sample (the reference)."""
    return diagonal_fisher(model, x, y, kind="empirical", chunk=max(len(x), 1), method="loop")


# ---------------------------------------------------------------------------------------------
# Optimal posterior and Information in the Weights (Prop. A.1)
# ---------------------------------------------------------------------------------------------

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


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
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
    _check_finite(fisher, "the Fisher")
    out = {k: (beta / 2) / (f.double().clamp_min(0) + beta / (2 * prior_var[k])) for k, f in fisher.items()}
    _check_finite(out, "Sigma*")
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
    from .invert import _noise  # the inversion's weight-noise draw: the same Q* sample

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
            noise = _noise(sigma, params, generator)
            noisy.append(evaluate({k: p + noise[k] for k, p in params.items()}))
    increases = [loss - clean_loss for loss, _ in noisy]
    return {"clean_loss": clean_loss, "clean_acc": clean_acc, "noisy_loss": [loss for loss, _ in noisy],
            "noisy_acc": [acc for _, acc in noisy], "loss_increase_draws": increases,
            "loss_increase": sum(increases) / draws}


# ---------------------------------------------------------------------------------------------
# Input Fisher / sensitivity of the representation (Prop. 3.2)
# ---------------------------------------------------------------------------------------------

def _per_image_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def top_eigenvalue(model: nn.Module, x: torch.Tensor, iters: int = 20,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Top eigenvalue lambda1 of S = J^T J, J = d features / d x, for every image (power iteration).

    Each iteration is one jvp (J v) and one vjp (J^T J v). In eval mode images do not
    interact, so one batched call does every image's power iteration at once.

    Returns:
        (N,) tensor: ||J v||^2 at the final unit vector v (a Rayleigh quotient, <= lambda1).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    with eval_mode(model):
        x = x.detach()
        v = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        v = v / _per_image_norm(v)
        _, pullback = vjp(model.features, x)
        for _ in range(iters):
            _, jv = jvp(model.features, (x,), (v,))
            sv = pullback(jv)[0]
            v = sv / _per_image_norm(sv).clamp_min(1e-30)
        _, jv = jvp(model.features, (x,), (v,))
    lam = jv.flatten(1).pow(2).sum(1).detach()
    if not torch.isfinite(lam).all():
        raise ValueError("top eigenvalue of the input Fisher is not finite; check the model")
    return lam


def hutchinson_trace(model: nn.Module, x: torch.Tensor, samples: int = 16,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """tr(J^T J) = E_v ||J v||^2 with Rademacher probes v, for every image.

    Returns:
        (N,) tensor of per-image trace estimates (mean over `samples` probes).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    with eval_mode(model):
        x = x.detach()
        for _ in range(samples):
            v = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype)
            _, jv = jvp(model.features, (x,), (v,))
            total += jv.detach().flatten(1).pow(2).sum(1).double()
    tr = total / samples
    if not torch.isfinite(tr).all():
        raise ValueError("trace of the input Fisher is not finite; check the model")
    return tr


def input_fisher_summary(model: nn.Module, x: torch.Tensor, iters: int = 20, samples: int = 16,
                         generator: torch.Generator | None = None, chunk: int = 64) -> dict[str, Any]:
    """lambda1 and tr(S) of S = J^T J averaged over images, with tr/n (n = input dimension).

    Args:
        chunk: images per batched call (bounds memory of the jvp/vjp graphs).
    """
    lams, trs = [], []
    for i in range(0, len(x), chunk):
        lams.append(top_eigenvalue(model, x[i:i + chunk], iters, generator))
        trs.append(hutchinson_trace(model, x[i:i + chunk], samples, generator))
    n = int(x[0].numel())
    lam1, trace = torch.cat(lams).double().mean().item(), torch.cat(trs).mean().item()
    return {"lambda1": lam1, "trace": trace, "trace_over_n": trace / n, "n": n}


# ---------------------------------------------------------------------------------------------
# The fisher rule
# ---------------------------------------------------------------------------------------------

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


def _posterior_summary(q: dict[str, Any], budget: float) -> dict[str, Any]:
    """summary.json's "posterior" entry for a `weight_posterior` result."""
    noise = q["noise"]
    return {"rule": POSTERIOR_RULE, "loss_budget": budget, "beta": q["beta"], "k": q["k"],
            "prior_var_per_layer": q["prior_var"], "loss_increase": noise["loss_increase"],
            "loss_increase_draws": noise["loss_increase_draws"], "clean_loss": noise["clean_loss"],
            "clean_acc": noise["clean_acc"], "noisy_acc": sum(noise["noisy_acc"]) / len(noise["noisy_acc"]),
            "noisy_acc_draws": noise["noisy_acc"], "log_variance_vs_prior_mean": q["log_variance"]["mean_vs_prior"]}


def _sweep(model: nn.Module, fisher: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, budget: float,
           factors: list[float], generator: torch.Generator) -> list[dict[str, float]]:
    """The posterior at budgets B * f (one draw each): how beta, flatness, KL and loss move with B."""
    out = []
    for f in factors:
        q = weight_posterior(model, fisher, x, y, budget * f, 1, generator)
        out.append({"loss_budget": budget * f, "beta": q["beta"], "log_variance_mean": q["log_variance"]["mean"],
                    "kl_total": q["kl"]["total"], "loss_increase": q["noise"]["loss_increase"],
                    "noisy_acc": q["noise"]["noisy_acc"][0]})
    return out


def fisher_report(model_path: str | Path, data_dir: str | Path, cfg_fisher: dict, seed: int,
                  out_dir: str | Path, eps: float | None = None, device: str = "auto") -> dict:
    """Weight and input Fisher of one model -> out_dir/fisher.pt and out_dir/summary.json.

    Args:
        model_path: a model.pt written by `checkpoint.save_model`.
        data_dir: the source dataset's prepared directory (results/data/{source}).
        cfg_fisher: config["fisher"] (n_images, chunk, kind, method, loss_budget, loss_draws,
            budget_factors, input_images, power_iters, hutchinson_samples).
        seed: seeds the image subsets, sampled labels, weight-noise draws and random probes.
        out_dir: where fisher.pt and summary.json go.
        eps: the model's training eps (default: the checkpoint's meta).
        device: "auto", "cpu" or "cuda".

    Returns:
        The summary dict (also written to summary.json).
    """
    from .checkpoint import atomic_save, load_model, model_eps
    from .data import sample_images
    from .runtime import pick_device

    out_dir = Path(out_dir)
    dev = pick_device(device)
    model, meta = load_model(model_path)
    model.to(dev)
    eps = model_eps(meta, eps)
    budget, kind = cfg_fisher["loss_budget"], cfg_fisher["kind"]
    beta_from_budget(budget, 1)  # refuse a bad budget before the expensive part
    gen = torch.Generator().manual_seed(seed)
    size, ch = meta["image_size"], meta["in_channels"]
    x, y = sample_images(data_dir, "train", cfg_fisher["n_images"], size, ch, gen)
    x, y = x.to(dev), y.to(dev)
    log.info("fisher (%s) of %s over %d training images", kind, model_path, len(x))
    fisher = diagonal_fisher(model, x, y, kind=kind, chunk=cfg_fisher["chunk"],
                             generator=gen, progress=True, method=cfg_fisher["method"])
    fisher = {k: v.cpu() for k, v in fisher.items()}
    q = weight_posterior(model, fisher, x, y, budget, cfg_fisher["loss_draws"], gen)
    sweep = _sweep(model, fisher, x, y, budget, cfg_fisher["budget_factors"], gen)

    xt, _ = sample_images(data_dir, "test", cfg_fisher["input_images"], size, ch, gen)
    log.info("input Fisher over %d test images", len(xt))
    inp = input_fisher_summary(model, xt.to(dev), cfg_fisher["power_iters"], cfg_fisher["hutchinson_samples"],
                               gen, chunk=cfg_fisher["chunk"])
    summary = {
        "eps": eps, "kind": kind, "n_images": len(x),
        "log_variance_mean": q["log_variance"]["mean"], "log_variance_per_layer": q["log_variance"]["per_layer"],
        "kl_total": q["kl"]["total"], "kl_per_layer": q["kl"]["per_layer"],
        "fisher_trace": float(sum(f.double().sum().item() for f in fisher.values())),
        "weight_norm": weight_norm(model, torch.float64), "input_fisher": inp,
        "posterior": _posterior_summary(q, budget), "sweep": sweep,
    }
    atomic_save({"fisher": fisher, "sigma": q["sigma"], "beta": q["beta"], "prior_var": q["prior_var"],
                 "loss_budget": float(budget), "kind": kind, "n_images": len(x), "eps": eps,
                 "model": str(model_path)}, out_dir / "fisher.pt")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("budget %.3g nats: beta %.3g, measured loss increase %.3g, acc %.3f -> %.3f; kl_total %.4g, "
             "log_variance_mean %.4g, lambda1 %.4g, trace/n %.4g", budget, q["beta"],
             summary["posterior"]["loss_increase"], summary["posterior"]["clean_acc"],
             summary["posterior"]["noisy_acc"], summary["kl_total"], summary["log_variance_mean"],
             inp["lambda1"], inp["trace_over_n"])
    return summary


def load_fisher(path: str | Path) -> dict:
    """Read a fisher.pt written by `fisher_report` (checked: has the Fisher and the calibrated Sigma*)."""
    from .checkpoint import CheckpointError, safe_load

    obj = safe_load(path)
    missing = {"fisher", "sigma", "prior_var", "loss_budget"} - set(obj)
    if missing:
        raise CheckpointError(f"{path}: not a fisher.pt written by the current fisher rule (lacks "
                              f"{sorted(missing)}; rerun the fisher rule)")
    return obj
