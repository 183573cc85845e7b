"""Task distance between a source and a target dataset, in a probe model's feature space.

Task distances and a transferability score, all computed on features z = f_w(x) of a probe
model (by default the experiment's standard, eps 0, model):

- `emd_distance`: Cui et al. (CVPR 2018), the paper's reference [7]. Each dataset is its set
  of class-mean features weighted by class frequency; the distance is the exact Earth
  Mover's Distance with a Euclidean ground cost. `domain_similarity = exp(-gamma * EMD)`.
- `otdd_distance`: a label-aware optimal-transport dataset distance in the spirit of OTDD
  (Alvarez-Melis & Fusi, 2020). Each class is a Gaussian N(mu_c, Sigma_c) in a PCA space
  fitted on both datasets (shrinkage covariances keep them well conditioned); points are
  compared by ||x - x'||^2 + W2(class, class')^2 and transported with uniform weights.
  Identical inputs give exactly 0 (OTDD's own implementation does not, see `_bures2`).
- `otdd_exact`: OTDD itself, with exact OT between class-conditional point clouds as the
  label-to-label cost, on a seeded subsample.
- `logme`: You et al.'s LogME of the target (a score, higher = easier; not a distance).
- Task2Vec (`atlib.info.task2vec`): the normalized cosine distance between diagonal-Fisher embeddings
  of the probe with a head trained on each task.

Features are extracted once per (probe, dataset) into an `.npz` cache (rule `features`);
rule `task_distance` combines the probe's source cache with a dataset's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import ot
import torch
from scipy.spatial.distance import cdist
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from tqdm import tqdm

from atlib.core.io import atomic_write
from atlib.data import Prepared, adapt
from atlib.data.tensors import split_dataset
from atlib.info import representation
from atlib.info.task2vec import distance as task2vec_distance

# --------------------------------------------------------------------------- features


def extract_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256,
                     device: str | torch.device = "cpu", name: str = "probe") -> np.ndarray:
    """Pooled representations `model.features(x)` as a float32 array
    (`representation.extract_features`), after checking the probe has them.

    Args:
        model: a model with a `.features` method (atlib ResNets).
        x: float images (N, C, H, W) in [0, 1], already adapted to the model's input.
        batch_size: images per forward pass.
        device: where the forward passes run.
        name: the probe's name in error messages.
    """
    if not callable(getattr(model, "features", None)):
        raise ValueError(f"probe {name}: model {type(model).__name__} has no .features(x) method; "
                         "task distances need an atlib ResNet (atlib.models.resnet.build_model)")
    device = torch.device(device)
    model = model.to(device).eval()  # and left in eval mode: the probe is only ever evaluated
    if len(x) == 0:
        return np.zeros((0, getattr(model, "feature_dim", 0)), dtype=np.float32)
    return representation.extract_features(model, x, batch_size, device).numpy()


def _batches(data: Prepared, idx: np.ndarray, image_size: int, channels: int,
             batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Images `idx` of the train split, adapted one batch at a time (ImageNet-sized inputs
    would not fit in memory all at once)."""
    if data.meta["format"] == "arrays":
        images, labels = data.arrays("train")
        for i in range(0, len(idx), batch_size):
            j = idx[i:i + batch_size]
            x = torch.from_numpy(np.ascontiguousarray(images[j])).permute(0, 3, 1, 2).float().div_(255)
            yield adapt(x, image_size, channels), labels[j]
    else:
        ds = split_dataset(data, "train", image_size, None)
        for i in range(0, len(idx), batch_size):
            items = [ds[int(k)] for k in idx[i:i + batch_size]]
            x = torch.stack([a for a, _ in items])
            yield adapt(x, image_size, channels), np.array([b for _, b in items], dtype=np.int64)


def dataset_features(model: torch.nn.Module, model_meta: dict, data: Prepared, max_images: int | None,
                     seed: int, batch_size: int = 256, device: str | torch.device = "cpu",
                     name: str = "probe") -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of up to `max_images` training images (a seeded random subset).

    Args:
        model, model_meta: the probe and its checkpoint meta (image_size, in_channels).
        data: the prepared dataset.
        max_images: images used (None = the whole train split).
        seed: seed of the subset (use the same for every probe: same images everywhere).
    """
    n = data.split_size("train")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, max_images, replace=False)) if max_images and max_images < n else np.arange(n)
    feats, labels = [], []
    batches = _batches(data, idx, model_meta["image_size"], model_meta["in_channels"], batch_size)
    for x, y in tqdm(batches, total=-(-len(idx) // batch_size), desc=f"features {data.name}", leave=False):
        feats.append(extract_features(model, x, batch_size, device, name))
        labels.append(y)
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64)


@dataclass
class FeatureSet:
    """Features of one dataset under one probe (the content of a `.features.npz` cache)."""

    features: np.ndarray  # (n, d) float32
    labels: np.ndarray  # (n,) int64
    probe: str
    dataset: str
    num_classes: int

    def __post_init__(self) -> None:
        where = f"dataset {self.dataset!r} (probe {self.probe})"
        if self.features.ndim != 2 or len(self.features) != len(self.labels):
            raise ValueError(f"{where}: expected (n, d) features and n labels, got "
                             f"{self.features.shape} and {self.labels.shape}")
        if not np.isfinite(self.features).all():
            raise ValueError(f"{where}: features contain NaN or inf; the probe model is broken "
                             "(retrain it or check its checkpoint)")
        if len(np.unique(self.labels)) < 2:
            raise ValueError(f"{where}: features of fewer than 2 classes; a task distance needs a "
                             "classification task (raise distance.max_images or check the dataset)")

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def class_means(self) -> tuple[np.ndarray, np.ndarray]:
        """(class means (K, d) float64, class counts (K,)) over the classes present."""
        classes, inv, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        sums = np.zeros((len(classes), self.features.shape[1]))
        np.add.at(sums, inv, self.features.astype(np.float64))
        return sums / counts[:, None], counts

    def save(self, path: str | Path) -> None:
        """Write the cache atomically (a killed job leaves no half-written file)."""
        means, counts = self.class_means()
        with atomic_write(path) as tmp:
            np.savez(tmp, features=self.features.astype(np.float32), labels=self.labels, class_ids=self.classes,
                     class_means=means, class_counts=counts, probe=self.probe, dataset=self.dataset,
                     num_classes=self.num_classes)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        try:
            with np.load(path) as z:
                parts = (z["features"], z["labels"], str(z["probe"]), str(z["dataset"]), int(z["num_classes"]))
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a readable feature cache ({err}); delete it and rerun "
                             "rule features") from None
        return cls(*parts)


# --------------------------------------------------------------------------- EMD (Cui et al.)


def emd_distance(means_a: np.ndarray, weights_a: np.ndarray, means_b: np.ndarray,
                 weights_b: np.ndarray) -> float:
    """Exact EMD between two sets of class means with class-frequency weights (normalized).

    Args:
        means_a, means_b: (Ka, d), (Kb, d) class-mean features.
        weights_a, weights_b: (Ka,), (Kb,) non-negative class weights (e.g. counts).
    """
    wa = np.asarray(weights_a, dtype=np.float64)
    wb = np.asarray(weights_b, dtype=np.float64)
    if wa.sum() <= 0 or wb.sum() <= 0:
        raise ValueError("emd_distance: class weights must have a positive sum")
    # cdist subtracts directly: identical means cost exactly 0 (ot.dist's expansion does not).
    cost = cdist(np.asarray(means_a, dtype=np.float64), np.asarray(means_b, dtype=np.float64))
    return float(ot.emd2(wa / wa.sum(), wb / wb.sum(), cost))


def domain_similarity(emd: float, gamma: float) -> float:
    """Cui et al.'s domain similarity exp(-gamma * EMD), in (0, 1]."""
    return float(np.exp(-gamma * emd))


# --------------------------------------------------------------------------- OTDD-style


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _bures2(covs_a: np.ndarray, covs_b: np.ndarray) -> np.ndarray:
    """Squared Bures distances between every pair of PSD matrices, (Ka, Kb).

    B^2 = tr A + tr B - 2 tr (A^1/2 B A^1/2)^1/2. Bitwise-identical pairs are set to exactly 0:
    the eigen-decompositions leave ~1e-8 of rounding that the final square root would amplify,
    which is how OTDD ends up with a non-zero distance of a dataset to itself.
    """
    out = np.zeros((len(covs_a), len(covs_b)))
    tr_b = np.trace(covs_b, axis1=1, axis2=2)
    for i, a in enumerate(covs_a):
        s = _psd_sqrt(a)
        ev = np.linalg.eigvalsh(s @ covs_b @ s)  # batched over b
        out[i] = np.trace(a) + tr_b - 2 * np.sqrt(np.clip(ev, 0, None)).sum(axis=1)
        same = np.array([np.array_equal(a, b) for b in covs_b])
        out[i, same] = 0.0
    return np.clip(out, 0, None)


def _class_gaussians(z: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = z.shape[1]
    means, covs = np.zeros((len(classes), d)), np.zeros((len(classes), d, d))
    for k, c in enumerate(classes):
        zc = z[labels == c]
        means[k] = zc.mean(axis=0)
        if len(zc) >= 2:  # one point has no spread: a Dirac (zero covariance)
            covs[k] = LedoitWolf().fit(zc).covariance_
    return means, covs


def _subsample(n: int, m: int, seed: int) -> np.ndarray:
    # A fresh generator per side: identical inputs get identical subsamples.
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False)) if n > m else np.arange(n)


def _pca_space(feat_a: np.ndarray, feat_b: np.ndarray, pca_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets in one PCA space of at most `pca_dim` dimensions, fitted on their union."""
    za_all, zb_all = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    k = max(1, min(pca_dim, za_all.shape[1], len(za_all) + len(zb_all) - 1))
    # covariance_eigh: the fit depends on the union, not on the order of the two datasets.
    pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(np.concatenate([za_all, zb_all]))
    return pca.transform(za_all), pca.transform(zb_all)


def otdd_distance(feat_a: np.ndarray, labels_a: np.ndarray, feat_b: np.ndarray, labels_b: np.ndarray,
                  pca_dim: int = 64, max_points: int = 500, seed: int = 0) -> float:
    """Label-aware OT distance between two labelled feature sets (OTDD-style, p = 2).

    Args:
        feat_a, labels_a, feat_b, labels_b: (n, d) features and (n,) labels of each dataset.
        pca_dim: dimension of the PCA space (fitted on both datasets together).
        max_points: points per dataset in the transport problem (seeded subsample);
            the class Gaussians use every point.
        seed: seed of the subsamples.
    """
    za, zb = _pca_space(feat_a, feat_b, pca_dim)
    ca, cb = np.unique(labels_a), np.unique(labels_b)
    mu_a, cov_a = _class_gaussians(za, labels_a, ca)
    mu_b, cov_b = _class_gaussians(zb, labels_b, cb)
    w2 = cdist(mu_a, mu_b, "sqeuclidean") + _bures2(cov_a, cov_b)  # (Ka, Kb) squared W2 of classes
    ia, ib = _subsample(len(za), max_points, seed), _subsample(len(zb), max_points, seed)
    ya, yb = np.searchsorted(ca, labels_a[ia]), np.searchsorted(cb, labels_b[ib])
    cost = cdist(za[ia], zb[ib], "sqeuclidean") + w2[ya][:, yb]
    u, v = np.full(len(ia), 1 / len(ia)), np.full(len(ib), 1 / len(ib))
    return float(np.sqrt(max(ot.emd2(u, v, cost, numItermax=1_000_000), 0.0)))


def otdd_exact(feat_a: np.ndarray, labels_a: np.ndarray, feat_b: np.ndarray, labels_b: np.ndarray,
               pca_dim: int = 64, max_points: int = 500, seed: int = 0) -> float:
    """Exact OTDD (Alvarez-Melis & Fusi, 2020, p = 2) between two labelled feature sets.

    On a seeded subsample of `max_points` per dataset (in the shared PCA space): the label-to-label
    cost is the exact squared W2 between the two class-conditional point clouds, then the dataset
    distance is the exact OT over (feature, label) pairs with cost ||x - x'||^2 + W2(y, y')^2.
    Identical inputs give exactly 0 (the same subsample, a zero-cost diagonal plan).
    """
    za, zb = _pca_space(feat_a, feat_b, pca_dim)
    ia, ib = _subsample(len(za), max_points, seed), _subsample(len(zb), max_points, seed)
    xa, xb, la, lb = za[ia], zb[ib], np.asarray(labels_a)[ia], np.asarray(labels_b)[ib]
    ca, cb = np.unique(la), np.unique(lb)
    w2 = np.zeros((len(ca), len(cb)))
    for i, c in enumerate(ca):
        pa = xa[la == c]
        for j, c2 in enumerate(cb):
            pb = xb[lb == c2]
            w2[i, j] = ot.emd2(np.full(len(pa), 1 / len(pa)), np.full(len(pb), 1 / len(pb)),
                               cdist(pa, pb, "sqeuclidean"))
    cost = cdist(xa, xb, "sqeuclidean") + w2[np.searchsorted(ca, la)][:, np.searchsorted(cb, lb)]
    u, v = np.full(len(xa), 1 / len(xa)), np.full(len(xb), 1 / len(xb))
    return float(np.sqrt(max(ot.emd2(u, v, cost, numItermax=1_000_000), 0.0)))


# --------------------------------------------------------------------------- LogME


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 11) -> float:
    """LogME (You et al., ICML 2021): the log maximum evidence per sample of a Bayesian linear
    model from the features to each one-hot label column, averaged over classes. A transferability
    score of the target alone (higher = the features fit the task better), not a distance.

    Closed form per class after one eigendecomposition of F^T F; alpha (prior precision) and beta
    (noise precision) by the MacKay fixed point, as in the authors' reference code.
    """
    f = np.asarray(features, np.float64)
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0, None)  # d eigenvalues (zeros beyond rank when d > n)
    out = []
    for c in np.unique(labels):
        y = (np.asarray(labels) == c).astype(np.float64)
        proj = v.T @ (f.T @ y)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            gamma = (beta * s / (alpha + beta * s)).sum()
            m = v @ (proj * beta / (alpha + beta * s))
            m2, res2 = float(m @ m), float(((y - f @ m) ** 2).sum())
            lam = alpha / beta
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - lam) / lam < 0.01:
                break
        out.append((d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * s).sum()
                    - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n)
    return float(np.mean(out))


# --------------------------------------------------------------------------- the rule


def task_distance(source: FeatureSet, target: FeatureSet, gamma: float, pca_dim: int = 64,
                  max_points: int = 500, seed: int = 0,
                  embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The distance record of `target` from the probe's `source` (the `distance/...json` contract).

    embeddings: the Task2Vec embeddings of source and target (`atlib.info.task2vec.task_embedding`);
    without them the record has no "task2vec" key.
    """
    if source.probe != target.probe:
        raise ValueError(f"feature caches come from different probes: {source.probe} and {target.probe}")
    ma, wa = source.class_means()
    mb, wb = target.class_means()
    emd = emd_distance(ma, wa, mb, wb)
    otdd = otdd_distance(source.features, source.labels, target.features, target.labels,
                         pca_dim=pca_dim, max_points=max_points, seed=seed)
    exact = otdd_exact(source.features, source.labels, target.features, target.labels,
                       pca_dim=pca_dim, max_points=max_points, seed=seed)
    record = {"probe": source.probe, "source": source.dataset, "dataset": target.dataset, "emd": emd,
              "similarity": domain_similarity(emd, gamma), "otdd": otdd, "otdd_exact": exact,
              "logme": logme(target.features, target.labels), "n_images": int(len(target.labels))}
    if embeddings is not None:
        record["task2vec"] = task2vec_distance(*embeddings)
    return record
