"""Task2Vec: self-distance, symmetry, hand-checkable orderings; the diagonal Fisher against peers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atlib.distance.measures import extract_features
from atlib.info.fisher import diagonal_fisher
from atlib.info.task2vec import distance, embedding, fit_head, task_embedding
from atlib.models.resnet import build_model


def _task(n: int = 120, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Images whose class is a bright square in one of k places, on noise: a task a probe can see."""
    g = torch.Generator().manual_seed(seed)
    y = np.arange(n) % k
    x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
    for i, c in enumerate(y):
        x[i, 0, 2 + 4 * c:6 + 4 * c, 4:12] += 0.6
    return x.clamp(0, 1), y


def _probe() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet8", 3, 1, width=0.25).eval()


def _embed(probe: nn.Module, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
    return embedding(probe, fit_head(extract_features(probe, x), y), x, seed=1)


def test_task2vec_self_zero_symmetric_and_orderings():
    probe = _probe()
    x, y = _task()
    base = _embed(probe, x, y)
    assert distance(base, base) == 0.0 and not probe.training  # the probe's mode is left as it was
    # label-permuted copy: the same task up to class names -> ~0
    permuted = _embed(probe, x, (y + 1) % 3)
    inverted = _embed(probe, 1 - x, y)
    blurred = _embed(probe, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), y)
    d_perm, d_inv, d_blur = distance(base, permuted), distance(base, inverted), distance(base, blurred)
    assert distance(base, inverted) == pytest.approx(distance(inverted, base))
    assert d_perm < 0.05 and d_perm < d_blur < d_inv
    assert 0 <= d_inv <= 1


def test_fit_head_binary_matches_sklearn_probabilities():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(80, 5)).astype(np.float32)
    y = (f[:, 0] > 0).astype(int) * 7  # class ids need not be 0..K-1
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(max_iter=300, random_state=0).fit(f, y).predict_proba(f)
    got = torch.softmax(fit_head(f, y)(torch.from_numpy(f)), 1).detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_task_embedding_errors_name_job(tiny_prepared):
    with pytest.raises(ValueError, match="job T.*no .features"):
        task_embedding(nn.Linear(2, 2), {"image_size": 8, "in_channels": 1}, np.zeros((4, 2)), np.array([0, 1, 0, 1]),
                       tiny_prepared, 4, 0, "job T")
    probe = build_model("resnet8", 3, 1, width=0.125)
    with torch.no_grad():
        probe.conv1.weight.fill_(float("nan"))
    f = np.random.default_rng(0).normal(size=(6, probe.feature_dim))
    with pytest.raises(ValueError, match="job T: Task2Vec Fisher failed"):
        task_embedding(probe, {"image_size": 8, "in_channels": 1}, f, np.array([0, 1, 2] * 2), tiny_prepared, 4, 0,
                       "job T")


def test_distance_zero_embeddings_is_an_error():
    with pytest.raises(ValueError, match="both embeddings are zero"):
        distance(np.zeros(3), np.zeros(3))


# ------------------------------------------------------------------ peer agreement (BackPACK, nngeometry)


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 5 * 5, 5))


@pytest.fixture
def cnn_and_images() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    m = _cnn()
    with torch.no_grad():  # non-trivial BN statistics: eval mode must use them
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval(), torch.randn(64, 1, 14, 14)


def _flat(d) -> torch.Tensor:
    return torch.cat([v.flatten() for v in d])


def _backpack(model: nn.Module, x: torch.Tensor, ext, attr: str, labels: torch.Tensor | None = None) -> torch.Tensor:
    from backpack import backpack, extend

    m = extend(_cnn())
    m.load_state_dict(model.state_dict())
    m.eval()
    loss = extend(nn.CrossEntropyLoss(reduction="sum"))
    with backpack(ext):
        out = m(x)
        loss(out, out.argmax(1).detach() if labels is None else labels).backward()
    return _flat(getattr(p, attr) for p in m.parameters()) / len(x)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_fisher_agrees_with_backpack_and_nngeometry(cnn_and_images):
    from backpack.extensions import DiagGGNExact, DiagGGNMC, SumGradSquared
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag

    model, x = cnn_and_images
    # Exact expected Fisher (= GGN for softmax cross-entropy): the two peers agree to rounding.
    exact = _backpack(model, x, DiagGGNExact(), "diag_ggn_exact")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                         batch_size=16)
    nng = FIM(model, loader, PMatDiag, variant="classif_logits").get_diag()
    torch.testing.assert_close(nng, exact, rtol=1e-4, atol=1e-6)
    # Our Monte Carlo Fisher (50 label samples per image) is as close to it as BackPACK's DiagGGNMC.
    ours = _flat(diagonal_fisher(model, x.repeat(50, 1, 1, 1), kind="true",
                                 generator=torch.Generator().manual_seed(0)).values())
    mc = _backpack(model, x, DiagGGNMC(mc_samples=50), "diag_ggn_mc")
    err = lambda f: float((f - exact).abs().sum() / exact.sum())  # noqa: E731
    assert err(ours) < 0.06 and err(mc) < 0.06
    # Given labels: our empirical Fisher is BackPACK's sum of squared per-sample gradients, exactly.
    y = torch.arange(len(x)) % 5
    sq = _backpack(model, x, SumGradSquared(), "sum_grad_squared", y)
    torch.testing.assert_close(_flat(diagonal_fisher(model, x, y, kind="empirical").values()), sq,
                               rtol=1e-4, atol=1e-7)
