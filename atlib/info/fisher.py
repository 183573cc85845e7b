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
free knobs (atlib.info.posterior.POSTERIOR_RULE): the prior variance of each parameter tensor is its mean w^2
(empirical Bayes), and beta = 4 B / k is set by a loss budget B, the training-loss increase (nats)
one draw of Q* may cost to second order; `posterior.loss_under_noise` measures the actual increase.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from tqdm import tqdm

from atlib.core.io import write_json_atomic
from atlib.core.runtime import eval_mode
from atlib.info.posterior import beta_from_budget, budget_sweep, check_finite, posterior_summary, weight_posterior
from atlib.models.resnet import weight_norm

log = logging.getLogger("atlib")

FISHER_KINDS = ("true", "empirical")


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
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
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
    check_finite(out, "diagonal Fisher")
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
    from atlib.core.runtime import pick_device
    from atlib.data import sample_images
    from atlib.models.checkpoint import atomic_save, load_model, model_eps

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
    sweep = budget_sweep(model, fisher, x, y, budget, cfg_fisher["budget_factors"], gen)

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
        "posterior": posterior_summary(q, budget), "sweep": sweep,
    }
    atomic_save({"fisher": fisher, "sigma": q["sigma"], "beta": q["beta"], "prior_var": q["prior_var"],
                 "loss_budget": float(budget), "kind": kind, "n_images": len(x), "eps": eps,
                 "model": str(model_path)}, out_dir / "fisher.pt")
    write_json_atomic(out_dir / "summary.json", summary)
    log.info("budget %.3g nats: beta %.3g, measured loss increase %.3g, acc %.3f -> %.3f; kl_total %.4g, "
             "log_variance_mean %.4g, lambda1 %.4g, trace/n %.4g", budget, q["beta"],
             summary["posterior"]["loss_increase"], summary["posterior"]["clean_acc"],
             summary["posterior"]["noisy_acc"], summary["kl_total"], summary["log_variance_mean"],
             inp["lambda1"], inp["trace_over_n"])
    return summary


def load_fisher(path: str | Path) -> dict:
    """Read a fisher.pt written by `fisher_report` (checked: has the Fisher and the calibrated Sigma*)."""
    from atlib.models.checkpoint import CheckpointError, safe_load

    obj = safe_load(path)
    missing = {"fisher", "sigma", "prior_var", "loss_budget"} - set(obj)
    if missing:
        raise CheckpointError(f"{path}: not a fisher.pt written by the current fisher rule (lacks "
                              f"{sorted(missing)}; rerun the fisher rule)")
    return obj
