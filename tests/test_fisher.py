"""Diagonal Fisher (vmap vs loop vs BackPACK), posterior/KL, input-Fisher eigenvalue and trace."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import save_tiny_model
from torch import nn

from atlib.info.fisher import (
    diagonal_fisher,
    diagonal_fisher_loop,
    fisher_report,
    hutchinson_trace,
    input_fisher_summary,
    load_fisher,
    sample_labels,
    top_eigenvalue,
)
from atlib.info.posterior import (
    beta_from_budget,
    information_in_weights,
    log_variance,
    posterior,
    prior_variances,
    weight_posterior,
)
from atlib.models.resnet import build_model
from atlib.spec.schema import section_defaults


class TinyNet(nn.Module):
    """Conv + BN + ReLU + pool: a model with `.features`, small enough for explicit Jacobians."""

    def __init__(self, c: int = 1, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 9, k)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 3), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics, so eval-mode BN is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return model.eval()


def _rel_close(a: dict, b: dict, rel: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        err = (a[k] - b[k]).abs().max().item()
        scale = b[k].abs().max().item()
        assert err <= rel * scale + 1e-12, f"{k}: max err {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("make", [
    lambda: TinyNet(1, 3),
    lambda: build_model("resnet8", 5, 1, width=0.125),
])
@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_vmap_matches_loop(make, kind):
    torch.manual_seed(0)
    model = _randomize_bn(make())
    x = torch.rand(10, 1, 8, 8)
    y = torch.randint(0, 3, (10,))
    fast = diagonal_fisher(model, x, y, kind=kind, chunk=4, generator=torch.Generator().manual_seed(1))
    labels = y if kind == "empirical" else sample_labels(model, x, torch.Generator().manual_seed(1))
    slow = diagonal_fisher_loop(model, x, labels)
    _rel_close(fast, slow, 1e-5)
    assert set(fast) == {k for k, _ in model.named_parameters()}
    assert not model.training


def test_any_model_and_bad_method():
    odd = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(2 * 36, 3))
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 3, (5,))
    _rel_close(diagonal_fisher(odd, x, y, kind="empirical"), diagonal_fisher_loop(odd, x, y), 1e-5)
    with pytest.raises(ValueError, match="method"):
        diagonal_fisher(odd, x, y, kind="empirical", method="fast")


def test_chunk_size_does_not_change_result():
    torch.manual_seed(0)
    model = _randomize_bn(TinyNet())
    x = torch.rand(9, 1, 8, 8)
    a = diagonal_fisher(model, x, chunk=2, generator=torch.Generator().manual_seed(3))
    b = diagonal_fisher(model, x, chunk=9, generator=torch.Generator().manual_seed(3))
    _rel_close(a, b, 1e-5)


def test_mode_restored_and_errors():
    model = TinyNet().train()
    x = torch.rand(3, 1, 8, 8)
    diagonal_fisher(model, x, kind="true")
    assert model.training
    with pytest.raises(ValueError, match="needs the labels"):
        diagonal_fisher(model, x, kind="empirical")
    with pytest.raises(ValueError, match="kind"):
        diagonal_fisher(model, x, kind="fake")


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_empirical_matches_backpack():
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import BatchGrad

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x, y = torch.rand(7, 1, 8, 8), torch.randint(0, 4, (7,))
    ours = {m: diagonal_fisher(net, x, y, kind="empirical", chunk=3, method=m) for m in ("vmap", "loop")}
    bp_net = backpack.extend(net)
    lossf = backpack.extend(nn.CrossEntropyLoss(reduction="sum"))
    with backpack.backpack(BatchGrad()):
        lossf(bp_net(x), y).backward()
    ref = {k: p.grad_batch.pow(2).sum(0) / len(x) for k, p in bp_net.named_parameters()}
    _rel_close(ours["vmap"], ref, 1e-5)
    _rel_close(ours["loop"], ref, 1e-5)


def test_posterior_and_kl_with_zero_fisher():
    fisher = {"a": torch.zeros(5), "b": torch.tensor([0.0, 1.0, 1e3])}
    weights = {"a": torch.randn(5), "b": torch.randn(3)}
    beta, prior = 1e-3, {"a": 0.25, "b": 0.04}
    sigma = posterior(fisher, beta, prior)
    # Zero Fisher -> the layer's prior variance (the beta/(2 lam^2) term regularizes the inverse).
    assert torch.allclose(sigma["a"], torch.full((5,), 0.25))
    assert math.isclose(sigma["b"][0].item(), 0.04, rel_tol=1e-6)
    assert all(torch.isfinite(s).all() for s in sigma.values())
    kl = information_in_weights(fisher, weights, beta, prior)
    assert math.isclose(kl["total"], sum(kl["per_layer"].values()))
    # Q = N(w, lam^2 I) against P = N(0, lam^2 I): KL = ||w||^2 / (2 lam^2).
    assert math.isclose(kl["per_layer"]["a"], weights["a"].pow(2).sum().item() / (2 * 0.25), rel_tol=1e-6)
    lv = log_variance(sigma, prior)
    assert math.isclose(lv["per_layer"]["a"], math.log(0.25), rel_tol=1e-6)
    # log(Sigma*/lam^2) = log(c / (F + c)), c = beta/(2 lam^2) = 0.0125 for "b": 0 for the 6 weights
    # the loss does not see, then F = 1 and F = 1e3.
    assert math.isclose(lv["mean_vs_prior"], (math.log(0.0125 / 1.0125) + math.log(0.0125 / 1000.0125)) / 8,
                        rel_tol=1e-6)


def test_kl_is_the_exact_gaussian_kl():
    torch.manual_seed(0)
    f = {"w": torch.rand(6, dtype=torch.float64) * 10, "v": torch.rand(3, dtype=torch.float64)}
    w = {"w": torch.randn(6, dtype=torch.float64), "v": torch.randn(3, dtype=torch.float64)}
    beta, prior = 0.1, {"w": 4.0, "v": 0.3}
    s = posterior(f, beta, prior)
    ref = 0.0
    for k in f:
        q = torch.distributions.Normal(w[k], s[k].sqrt())
        p = torch.distributions.Normal(torch.zeros_like(w[k]), math.sqrt(prior[k]))
        ref += torch.distributions.kl_divergence(q, p).sum().item()
    assert math.isclose(information_in_weights(f, w, beta, prior)["total"], ref, rel_tol=1e-9)


def test_prior_variances_are_layer_mean_squares():
    weights = {"conv": torch.tensor([[1.0, -3.0], [0.0, 2.0]]), "bias": torch.zeros(4), "fc": torch.tensor([0.5, -0.5])}
    prior = prior_variances(weights)
    assert prior["conv"] == pytest.approx((1 + 9 + 0 + 4) / 4)
    assert prior["fc"] == pytest.approx(0.25)
    # All-zero tensor: the whole model's mean w^2 = (14 + 0 + 0.5) / 10.
    assert prior["bias"] == pytest.approx(14.5 / 10)
    with pytest.raises(ValueError, match="zero"):
        prior_variances({"a": torch.zeros(3)})


def test_beta_from_budget():
    # B = 0.1 nats over k = 2000 weights: beta = 4 * 0.1 / 2000 = 2e-4.
    assert beta_from_budget(0.1, 2000) == pytest.approx(2e-4)
    # With F >> beta/(2 lam^2) the second-order loss increase 1/2 sum F Sigma* is the budget.
    fisher, prior = {"w": torch.full((2000,), 1e3, dtype=torch.float64)}, {"w": 1.0}
    sigma = posterior(fisher, beta_from_budget(0.1, 2000), prior)
    assert 0.5 * (fisher["w"] * sigma["w"]).sum().item() == pytest.approx(0.1, rel=1e-6)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="budget"):
            beta_from_budget(bad, 10)


@pytest.mark.parametrize("beta,prior,name", [(0, 1, "beta"), (-1, 1, "beta"), (1e-3, 0, "prior variance"),
                                             (1e-3, -2, "prior variance"), (1e-3, float("inf"), "prior variance")])
def test_bad_hyperparameters_rejected(beta, prior, name):
    with pytest.raises(ValueError, match=name):
        posterior({"a": torch.ones(2)}, beta, {"a": prior})
    with pytest.raises(ValueError, match=name):
        information_in_weights({"a": torch.ones(2)}, {"a": torch.ones(2)}, beta, {"a": prior})


def test_missing_prior_rejected():
    with pytest.raises(ValueError, match="no prior variance"):
        posterior({"a": torch.ones(2), "b": torch.ones(1)}, 1e-3, {"a": 1.0})


def test_nan_fisher_rejected():
    with pytest.raises(ValueError, match="not finite"):
        posterior({"a": torch.tensor([1.0, float("nan")])}, 1e-3, {"a": 1.0})


class DigitsNet(nn.Module):
    """Conv + BN + ReLU + max-pool + linear on 8x8 sklearn digits (1386 weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2), 1))


def _digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """DigitsNet trained ~1 s with Adam to a training loss ~0.01, and 512 of its training images."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x, y = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)
    torch.manual_seed(1)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(20):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            loss = nn.functional.cross_entropy(model(x[perm[i:i + 128]]), y[perm[i:i + 128]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[:512], y[:512]


def test_measured_loss_increase_matches_budget():
    """The calibration: one draw of Q* raises the training loss by about B (within 2x) for two B 10x apart."""
    model, x, y = _digits_model()
    # 16 sampled labels per image: a confident model's true Fisher is carried by rare labels, and
    # one label per image leaves many entries near 0 (their Sigma* then near the prior).
    fisher = diagonal_fisher(model, x.repeat(16, 1, 1, 1), y.repeat(16), kind="true", chunk=512,
                             generator=torch.Generator().manual_seed(0))
    for budget in (0.01, 0.1):
        # Mean over 8 independent draws: the expected increase of one draw.
        q = weight_posterior(model, fisher, x, y, budget, draws=8, generator=torch.Generator().manual_seed(1))
        assert q["noise"]["clean_loss"] < 0.05
        assert budget / 2 <= q["noise"]["loss_increase"] <= 2 * budget, (budget, q["noise"])
        assert q["beta"] == pytest.approx(4 * budget / 1386)


def _explicit_sensitivity(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(lambda v: model.features(v.unsqueeze(0))[0], x)
    j = jac.reshape(jac.shape[0], -1).double()
    return j.T @ j


def test_power_iteration_and_trace_match_explicit_jacobian():
    torch.manual_seed(0)
    model = _randomize_bn(TinyNet())
    x = torch.rand(3, 1, 6, 6)
    lam = top_eigenvalue(model, x, iters=300, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        s = _explicit_sensitivity(model, x[i])
        eig = torch.linalg.eigvalsh(s)
        assert abs(lam[i].item() - eig[-1].item()) <= 1e-3 * eig[-1].item()
    # Hutchinson: many probes of one image (a batch of copies), loose tolerance.
    s = _explicit_sensitivity(model, x[0])
    copies = x[:1].expand(500, -1, -1, -1).contiguous()
    tr = hutchinson_trace(model, copies, samples=4, generator=torch.Generator().manual_seed(0)).mean().item()
    assert abs(tr - torch.trace(s).item()) <= 0.1 * torch.trace(s).item()


def test_input_fisher_summary_keys_and_bound():
    torch.manual_seed(0)
    model = _randomize_bn(build_model("resnet8", 3, 1, width=0.125))
    out = input_fisher_summary(model, torch.rand(4, 1, 8, 8), iters=20, samples=4,
                               generator=torch.Generator().manual_seed(0), chunk=2)
    assert set(out) == {"lambda1", "trace", "trace_over_n", "n"}
    assert out["n"] == 64
    assert 0 < out["trace_over_n"] <= out["lambda1"]


def test_fisher_report_end_to_end(tiny_prepared, tmp_path):
    model = save_tiny_model(tmp_path / "model.pt", eps=0.5)
    cfg = section_defaults({"n_images": 12, "chunk": 5, "kind": "true", "loss_budget": 0.1, "loss_draws": 2,
                            "budget_factors": [0.1, 1, 10], "input_images": 4, "power_iters": 3,
                            "hutchinson_samples": 2}, "fisher")
    out = tmp_path / "fisher"
    summary = fisher_report(tmp_path / "model.pt", tiny_prepared, cfg, seed=0, out_dir=out, device="cpu")
    disk = json.loads((out / "summary.json").read_text())
    assert set(disk) == {"eps", "kind", "n_images", "log_variance_mean", "log_variance_per_layer", "kl_total",
                         "kl_per_layer", "fisher_trace", "weight_norm", "input_fisher", "posterior", "sweep"}
    assert disk["eps"] == 0.5 and disk["n_images"] == 12 and disk == json.loads(json.dumps(summary))
    post = disk["posterior"]
    k = sum(p.numel() for p in model.parameters())
    assert post["k"] == k and post["loss_budget"] == 0.1 and post["beta"] == pytest.approx(0.4 / k)
    assert len(post["loss_increase_draws"]) == 2 and 0 <= post["clean_acc"] <= 1 and "rule" in post
    assert post["prior_var_per_layer"]["fc.weight"] == pytest.approx(model.fc.weight.pow(2).mean().item())
    assert [s["loss_budget"] for s in disk["sweep"]] == pytest.approx([0.01, 0.1, 1.0])
    # A larger budget is a larger beta: a flatter (higher-variance) posterior closer to the prior.
    lv = [s["log_variance_mean"] for s in disk["sweep"]]
    assert lv[0] < lv[1] < lv[2] and disk["sweep"][1]["log_variance_mean"] == pytest.approx(disk["log_variance_mean"])
    saved = load_fisher(out / "fisher.pt")
    assert set(saved["fisher"]) == set(saved["sigma"]) == set(saved["prior_var"]) == \
        {k for k, _ in model.named_parameters()}
    assert saved["beta"] == post["beta"] and saved["loss_budget"] == 0.1
    # Bit-identical rerun.
    again = fisher_report(tmp_path / "model.pt", tiny_prepared, cfg, seed=0, out_dir=tmp_path / "f2", device="cpu")
    assert again == summary
    with pytest.raises(ValueError, match="budget"):
        fisher_report(tmp_path / "model.pt", tiny_prepared, {**cfg, "loss_budget": 0}, seed=0, out_dir=tmp_path / "f3",
                      device="cpu")


def test_load_fisher_refuses_old_format(tmp_path):
    from atlib.models.checkpoint import CheckpointError, atomic_save

    atomic_save({"fisher": {"a": torch.ones(2)}, "lambda": 1.0}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="rerun the fisher rule"):
        load_fisher(tmp_path / "old.pt")
