"""Task2Vec (Achille et al., ICCV 2019): a task embedded by the diagonal Fisher of a fixed probe.

The recipe: keep the probe's feature extractor fixed, train a linear head on the task (here a
multinomial logistic regression on the task's cached probe features, so no image passes through
the network for training), take the Monte Carlo diagonal Fisher of the probe's weights with labels
sampled from the model (`atlib.info.fisher.diagonal_fisher`, kind "true"), and average it over each
filter's weights: one number per filter. Two embeddings are compared by the cosine distance of
F_a / (F_a + F_b) and F_b / (F_a + F_b), which is 0 for identical embeddings and symmetric.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from atlib.data import sample_images
from atlib.info.fisher import diagonal_fisher


class ProbeWithHead(nn.Module):
    """The probe's features followed by a task head: logits = head(probe.features(x))."""

    def __init__(self, probe: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.probe, self.head = probe, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.probe.features(x))


def fit_head(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> nn.Linear:
    """A linear head over the classes present, fitted on cached features (L2-regularized
    multinomial logistic regression, scikit-learn's lbfgs)."""
    classes = np.unique(labels)
    with warnings.catch_warnings():  # a few hundred lbfgs steps suffice for an embedding
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr = LogisticRegression(max_iter=300, random_state=seed).fit(features, labels)
    w, b = lr.coef_, lr.intercept_
    if len(classes) == 2:  # sklearn keeps one logit for two classes; softmax([0, z]) is the same model
        w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    head = nn.Linear(features.shape[1], len(classes))
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return head


def embedding(probe: nn.Module, head: nn.Linear, x: torch.Tensor, seed: int = 0,
              chunk: int = 64) -> np.ndarray:
    """Task2Vec embedding: the Monte Carlo diagonal Fisher of the probe's filters, averaged per
    filter (weights with >= 2 dims: conv filters and linear rows; BN and biases left out, as in
    Task2Vec). The probe's own classifier `fc` is not part of the network and is skipped."""
    net = ProbeWithHead(probe, head).train(probe.training)  # the Fisher restores this mode on the probe
    fisher = diagonal_fisher(net, x, kind="true", chunk=chunk, generator=torch.Generator().manual_seed(seed))
    parts = [v.flatten(1).mean(1) for k, v in fisher.items()
             if k.startswith("probe.") and not k.startswith("probe.fc.") and v.dim() >= 2]
    return torch.cat(parts).double().numpy()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Task2Vec's normalized cosine distance between two embeddings, in [0, 1]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s = a + b
    keep = s > 0  # a filter with no Fisher on either task carries no information
    if not keep.any():
        raise ValueError("Task2Vec: both embeddings are zero (a dead probe?); no distance")
    if np.array_equal(a, b):  # rounding in the cosine would leave ~1e-16 of a task from itself
        return 0.0
    ua, ub = a[keep] / s[keep], b[keep] / s[keep]
    return float(np.clip(1 - ua @ ub / (np.linalg.norm(ua) * np.linalg.norm(ub)), 0.0, 1.0))


def task_embedding(probe: nn.Module, meta: dict, features: np.ndarray, labels: np.ndarray,
                   data_dir: str | Path, n_images: int, seed: int, job: str,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """The Task2Vec embedding of one dataset under a probe: the head from its cached features,
    the Fisher on `n_images` of its training images (a seeded subset). Errors name `job`."""
    if not callable(getattr(probe, "features", None)):
        raise ValueError(f"{job}: probe {type(probe).__name__} has no .features(x) method; Task2Vec needs "
                         "an atlib ResNet (atlib.models.resnet.build_model)")
    device = torch.device(device)
    head = fit_head(features, labels, seed).to(device)
    x, _ = sample_images(data_dir, "train", n_images, meta["image_size"], meta["in_channels"],
                         torch.Generator().manual_seed(seed))
    try:
        return embedding(probe.to(device), head, x.to(device), seed)
    except ValueError as err:  # a NaN Fisher or prediction: say which job and what to do
        raise ValueError(f"{job}: Task2Vec Fisher failed ({err}); check the probe checkpoint") from None
