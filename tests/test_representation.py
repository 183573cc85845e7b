"""Class separation metrics, t-SNE and the representation report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_tiny_model

from atlib.info.representation import class_separation, extract_features, representation_report, tsne
from atlib.models.resnet import build_model
from atlib.spec.schema import section_defaults


def test_separation_orders_separable_above_random():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    separable = rng.normal(size=(60, 5)) + 10 * np.eye(5)[labels]
    random = rng.normal(size=(60, 5))
    a, b = class_separation(separable, labels), class_separation(random, labels)
    assert a["knn_acc"] == pytest.approx(100.0)
    assert a["silhouette"] > 0.5 > b["silhouette"]
    assert b["knn_acc"] < 70


def test_separation_errors():
    with pytest.raises(ValueError, match="2 classes"):
        class_separation(np.zeros((4, 2)), np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="not finite"):
        class_separation(np.full((4, 2), np.nan), np.array([0, 0, 1, 1]))


def test_tsne_is_seeded_and_caps_perplexity(monkeypatch):
    import sklearn.manifold

    used, real = [], sklearn.manifold.TSNE

    def recording_tsne(**kw):  # sklearn's TSNE, recording the perplexity it is given
        used.append(kw["perplexity"])
        return real(**kw)

    monkeypatch.setattr(sklearn.manifold, "TSNE", recording_tsne)
    x = np.random.default_rng(0).normal(size=(20, 4))
    a, b = tsne(x, perplexity=50, seed=1), tsne(x, perplexity=50, seed=1)
    assert a.shape == (20, 2) and np.array_equal(a, b)
    tsne(x, perplexity=5, seed=1)
    assert used == [pytest.approx(19 / 3)] * 2 + [5]  # 50 >= 20 images: capped to (n - 1) / 3; 5 kept


def test_extract_features_restores_mode():
    model = build_model("resnet8", 3, 1, width=0.125).train()
    z = extract_features(model, torch.rand(5, 1, 8, 8), batch_size=2)
    assert z.shape == (5, model.feature_dim) and model.training


def test_representation_report(tiny_prepared, tmp_path):
    save_tiny_model(tmp_path / "model.pt")
    out = tmp_path / "rep"
    summary = representation_report(tmp_path / "model.pt", tiny_prepared,
                                    section_defaults({"n_images": 24, "perplexity": 5}, "representation"), 0,
                                    out, eps=0.5, device="cpu")
    disk = json.loads((out / "summary.json").read_text())
    assert set(disk) == {"eps", "knn_acc", "silhouette", "n_images"}
    assert disk == summary and disk["n_images"] == 24 and disk["eps"] == 0.5
    assert 0 <= disk["knn_acc"] <= 100 and -1 <= disk["silhouette"] <= 1
    emb = pd.read_csv(out / "tsne.csv")
    assert list(emb.columns) == ["x", "y", "label"] and len(emb) == 24
    assert (out / "tsne.png").stat().st_size > 0
    with pytest.raises(ValueError, match="eps"):
        representation_report(tmp_path / "model.pt", tiny_prepared, section_defaults({"n_images": 24}, "representation"),
                              0, out, device="cpu")
