"""Task distances: Cui et al. EMD, domain similarity, the OTDD-style distance, features, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from atlib.distance.measures import (
    FeatureSet,
    dataset_features,
    domain_similarity,
    emd_distance,
    extract_features,
    logme,
    otdd_distance,
    otdd_exact,
    task_distance,
)


def _blobs(n: int, k: int, d: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = rng.normal(size=(k, d)) * 3
    return (centers[y] + rng.normal(size=(n, d)) + shift).astype(np.float32), y


def test_emd_self_is_zero():
    x, y = _blobs(200, 5, 16)
    fs = FeatureSet(x, y, "p", "a", 5)
    m, w = fs.class_means()
    assert emd_distance(m, w, m, w) == 0.0


def test_emd_known_1d_and_brute_force():
    # 1-D: two unit masses at 0 and 1 vs at 2 and 3 -> every unit of mass moves 2
    assert emd_distance([[0.0], [1.0]], [1, 1], [[2.0], [3.0]], [1, 1]) == pytest.approx(2.0)
    # unequal weights: 3/4 at 0, 1/4 at 1 vs all at 1 -> 3/4 moves 1
    assert emd_distance([[0.0], [1.0]], [3, 1], [[1.0]], [4]) == pytest.approx(0.75)
    # equal weights, n vs n: EMD = min over permutations of the mean Euclidean cost
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    brute = min(np.mean([np.linalg.norm(a[i] - b[p[i]]) for i in range(5)])
                for p in itertools.permutations(range(5)))
    assert emd_distance(a, np.ones(5), b, np.ones(5)) == pytest.approx(brute)


def test_domain_similarity():
    assert domain_similarity(0.0, 0.01) == 1.0
    assert domain_similarity(100.0, 0.01) == pytest.approx(np.exp(-1))
    assert domain_similarity(5.0, 0.1) > domain_similarity(10.0, 0.1)


def test_otdd_self_zero_shift_positive_symmetric():
    x, y = _blobs(300, 4, 20)
    assert otdd_distance(x, y, x, y, pca_dim=8, max_points=200) < 1e-6
    xs, ys = _blobs(250, 3, 20, shift=1.5, seed=2)
    d_ab = otdd_distance(x, y, xs, ys, pca_dim=8, max_points=200)
    d_ba = otdd_distance(xs, ys, x, y, pca_dim=8, max_points=200)
    assert d_ab > 1.0
    assert d_ab == pytest.approx(d_ba, rel=1e-6)
    # a larger shift is farther
    xf, yf = _blobs(250, 3, 20, shift=4.0, seed=2)
    assert otdd_distance(x, y, xf, yf, pca_dim=8, max_points=200) > d_ab


def test_otdd_pure_shift_value():
    # Same labelled points shifted by s: every point and every class moves by s, so d^2 = 2 |s|^2
    # (PCA keeps all dimensions here, so nothing is lost).
    x, y = _blobs(120, 3, 4)
    shift = np.array([1.0, 0, 0, 0], np.float32)
    d = otdd_distance(x, y, x + shift, y, pca_dim=4, max_points=120)
    assert d == pytest.approx(np.sqrt(2.0), rel=1e-6)


def test_otdd_exact_self_zero_symmetric_and_brute_force():
    x, y = _blobs(120, 3, 10)
    assert otdd_exact(x, y, x, y, pca_dim=6, max_points=80) == 0.0
    xs, ys = _blobs(100, 2, 10, shift=1.0, seed=3)
    d_ab = otdd_exact(x, y, xs, ys, pca_dim=6, max_points=80)
    assert d_ab == pytest.approx(otdd_exact(xs, ys, x, y, pca_dim=6, max_points=80), rel=1e-9)
    xf, yf = _blobs(100, 2, 10, shift=3.0, seed=3)
    assert otdd_exact(x, y, xf, yf, pca_dim=6, max_points=80) > d_ab
    # 1-D, one point per class, 2 vs 2: the label cost is the squared gap of the single points, and the
    # dataset cost is the best of the two pairings, brute-forced here.
    a, la, b, lb = np.array([[0.0], [1.0]]), np.array([0, 1]), np.array([[0.5], [3.0]]), np.array([0, 1])
    w2 = (a[:, 0][:, None] - b[:, 0][None]) ** 2
    cost = w2 + w2  # ||x - x'||^2 + W2(y, y')^2 with one point per class
    brute = min(cost[0, 0] + cost[1, 1], cost[0, 1] + cost[1, 0]) / 2
    assert otdd_exact(a, la, b, lb, pca_dim=1, max_points=2) == pytest.approx(np.sqrt(brute))


def test_logme_is_the_maximum_evidence():
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    f = rng.normal(size=(60, 4))
    y = (f[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)

    def best(t):  # max over (alpha, beta) of log N(t; 0, F F^T / alpha + I / beta), per sample
        def nll(log_ab):
            return -multivariate_normal.logpdf(t, cov=f @ f.T / np.exp(log_ab[0]) + np.eye(60) / np.exp(log_ab[1]))

        return -minimize(nll, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}).fun / 60

    ref = np.mean([best((y == c).astype(float)) for c in (0, 1)])
    assert logme(f, y, max_iter=100) == pytest.approx(ref, abs=2e-3)
    assert logme(f, y) > logme(f, rng.permutation(y))  # informative labels fit better
    assert logme(f, y * 5 + 2) == logme(f, y)  # class ids do not matter


def test_errors_name_dataset_and_probe():
    x, _ = _blobs(50, 1, 8)
    with pytest.raises(ValueError, match="'one'.*fewer than 2 classes"):
        FeatureSet(x, np.zeros(50, np.int64), "src/resnet8/eps0/s0", "one", 1)
    x2, y2 = _blobs(50, 2, 8)
    x2[3, 1] = np.nan
    with pytest.raises(ValueError, match="'nanset'.*src/resnet8.*NaN"):
        FeatureSet(x2, y2, "src/resnet8/eps0/s0", "nanset", 2)
    with pytest.raises(ValueError, match="probe p1.*no .features"):
        extract_features(torch.nn.Linear(4, 2), torch.zeros(2, 4), name="p1")


def test_extract_features_eval_no_grad():
    from atlib.models.resnet import build_model

    model = build_model("resnet8", 3, 1, width=0.125).train()
    x = torch.rand(5, 1, 8, 8)
    f = extract_features(model, x, batch_size=2)
    assert f.shape == (5, model.feature_dim) and f.dtype == np.float32
    assert not model.training  # eval mode: BatchNorm uses running statistics
    with torch.no_grad():
        ref = model.features(x).numpy()
    np.testing.assert_allclose(f, ref, rtol=1e-5, atol=1e-6)


def test_feature_cache_and_task_distance(tiny_prepared, tmp_path):
    from atlib.data import Prepared
    from atlib.models.resnet import build_model

    model = build_model("resnet8", 3, 1, width=0.125)
    meta = {"image_size": 8, "in_channels": 1}
    data = Prepared(tiny_prepared)
    f1, y1 = dataset_features(model, meta, data, max_images=40, seed=3, batch_size=16)
    f2, y2 = dataset_features(model, meta, data, max_images=40, seed=3, batch_size=16)
    assert f1.shape == (40, model.feature_dim) and np.array_equal(f1, f2) and np.array_equal(y1, y2)
    fs = FeatureSet(f1, y1, "tiny/resnet8/eps0/s0", "tiny", data.num_classes)
    fs.save(tmp_path / "tiny.features.npz")
    back = FeatureSet.load(tmp_path / "tiny.features.npz")
    assert np.array_equal(back.features, f1) and back.probe == fs.probe
    rec = task_distance(back, back, gamma=0.01, pca_dim=8, max_points=40)
    assert set(rec) == {"probe", "source", "dataset", "emd", "similarity", "otdd", "otdd_exact", "logme", "n_images"}
    assert rec["emd"] == 0.0 and rec["otdd"] < 1e-6 and rec["similarity"] == 1.0 and rec["n_images"] == 40
    assert rec["otdd_exact"] == 0.0 and np.isfinite(rec["logme"])
    emb = np.array([1.0, 2.0, 0.5])
    assert task_distance(back, back, 0.01, 8, 40, embeddings=(emb, emb))["task2vec"] == 0.0


def test_corrupt_cache_named(tmp_path):
    bad = tmp_path / "x.features.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="x.features.npz.*rerun"):
        FeatureSet.load(bad)
