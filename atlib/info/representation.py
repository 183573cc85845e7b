"""Structure of the final representations: t-SNE (Figure 6) and how class-discriminative they are.

The paper's Claim: as the training eps grows, features get less discriminative (more
"entangled"). We measure it two ways on the same test images: the 5-NN cross-validated
accuracy of the features and their silhouette score with the class labels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atlib.core.io import write_json_atomic
from atlib.core.runtime import eval_mode

log = logging.getLogger("atlib")


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """z = model.features(x) in eval mode (each module's mode restored after), batched; returned on
    the CPU as float32. `device`: where each batch is moved first (None: where x is)."""
    with eval_mode(model):
        return torch.cat([model.features(x[i:i + batch_size] if device is None else x[i:i + batch_size].to(device))
                          .float().cpu() for i in range(0, len(x), batch_size)])


def class_separation(features: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5,
                     seed: int = 0) -> dict[str, float]:
    """5-NN cross-validated accuracy (%) and silhouette score of features w.r.t. labels.

    Args:
        features: (N, D) array.
        labels: (N,) integer classes (at least 2 classes, 2 images each).
        k: neighbours of the k-NN classifier.
        folds: stratified folds (reduced to the smallest class size if needed).
        seed: shuffles the folds.
    """
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if len(counts) < 2 or counts.min() < 2:
        raise ValueError(f"need at least 2 classes with 2 images each, got class counts {counts.tolist()}; "
                         "raise representation.n_images")
    if not np.isfinite(features).all():
        raise ValueError("features are not finite (NaN/inf): check the model")
    n_splits = int(min(folds, counts.min()))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=min(k, int(len(labels) * (n_splits - 1) / n_splits)))
    acc = cross_val_score(knn, features, labels, cv=cv).mean()
    return {"knn_acc": float(100 * acc), "silhouette": float(silhouette_score(features, labels))}


def tsne(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE embedding (sklearn, PCA init, seeded). Perplexity is capped below N."""
    from sklearn.manifold import TSNE

    n = len(features)
    if perplexity >= n:
        log.warning("t-SNE perplexity %.3g >= %d images: using %.3g", perplexity, n, (n - 1) / 3)
        perplexity = (n - 1) / 3
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(features, dtype=np.float32))


def plot_tsne(embedding: np.ndarray, labels: np.ndarray, title: str, path: str | Path,
              classes: list[str] | None = None) -> None:
    """Scatter of the embedding, one color per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        sel = labels == c
        name = classes[c] if classes and c < len(classes) else str(c)
        ax.scatter(embedding[sel, 0], embedding[sel, 1], s=6, color=cmap(int(c) % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    if len(np.unique(labels)) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best", frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def representation_report(model_path: str | Path, data_dir: str | Path, cfg_representation: dict, seed: int,
                          out_dir: str | Path, eps: float | None = None, device: str = "auto") -> dict[str, Any]:
    """t-SNE and class separation of one model's test features -> tsne.csv, tsne.png, summary.json.

    Args:
        model_path: a model.pt written by `checkpoint.save_model`.
        data_dir: the source dataset's prepared directory.
        cfg_representation: config["representation"] (n_images, perplexity).
        seed: seeds the image subset, the folds and t-SNE.
        out_dir: where the three files go.
        eps: the model's training eps (default: the checkpoint's meta).
        device: "auto", "cpu" or "cuda".

    Returns:
        {"eps", "knn_acc" (%), "silhouette", "n_images"} (also written to summary.json).
    """
    import pandas as pd

    from atlib.core.runtime import pick_device
    from atlib.data import Prepared, sample_images
    from atlib.models.checkpoint import load_model, model_eps

    out_dir = Path(out_dir)
    dev = pick_device(device)
    model, meta = load_model(model_path)
    model.to(dev)
    eps = model_eps(meta, eps)
    gen = torch.Generator().manual_seed(seed)
    x, y = sample_images(data_dir, "test", cfg_representation["n_images"], meta["image_size"],
                         meta["in_channels"], gen)
    feats = extract_features(model, x.to(dev)).numpy()
    labels = y.numpy()
    log.info("representation of %s: %d test images, feature dim %d", model_path, len(x), feats.shape[1])
    sep = class_separation(feats, labels, seed=seed)
    emb = tsne(feats, cfg_representation["perplexity"], seed=seed % (2**32))
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"x": emb[:, 0], "y": emb[:, 1], "label": labels}).to_csv(out_dir / "tsne.csv", index=False)
    classes = Prepared(data_dir).meta.get("classes")
    plot_tsne(emb, labels, f"t-SNE of features, eps={eps:g} (5-NN acc {sep['knn_acc']:.1f}%)",
              out_dir / "tsne.png", classes)
    summary = {"eps": eps, "knn_acc": sep["knn_acc"], "silhouette": sep["silhouette"], "n_images": len(x)}
    write_json_atomic(out_dir / "summary.json", summary)
    log.info("knn_acc %.2f%%, silhouette %.4f", sep["knn_acc"], sep["silhouette"])
    return summary
