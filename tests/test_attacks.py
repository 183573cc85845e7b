"""PGD threat models, Madry/TRADES objectives, Gaussian noise and robust evaluation (tiny models, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atlib.core.runtime import autocast
from atlib.models.resnet import build_model
from atlib.train.attacks import L2Step, LinfStep, evaluate, gaussian_noise, pgd, trades_loss


def _norms(d: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(d.flatten(1), dim=1)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny ResNet fitted for a few steps on a learnable 3-class problem, and a batch."""
    torch.manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.rand(48, 3, 8, 8) * 0.3
    for c in range(3):
        x[y == c, :, c * 2:c * 2 + 3, :] += 0.6  # a bright band whose position is the class
    model = build_model("resnet8", 3, 3, width=0.125)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def test_l2_pgd_stays_in_ball_and_box(trained):
    model, x, y = trained
    for eps in (0.1, 0.5, 2.0):
        xa = pgd(model, x, y, eps, steps=5)
        assert _norms(xa - x).max() <= eps * (1 + 1e-5)
        assert xa.min() >= 0 and xa.max() <= 1
        assert xa.shape == x.shape and not xa.requires_grad


def test_linf_pgd_stays_in_ball_and_box(trained):
    model, x, y = trained
    xa = pgd(model, x, y, 0.03, steps=5, norm="linf")
    assert (xa - x).abs().max() <= 0.03 + 1e-6
    assert xa.min() >= 0 and xa.max() <= 1


def test_l2_random_start_is_uniform_inside_the_ball():
    torch.manual_seed(1)
    x0 = torch.full((4000, 1, 2, 2), 0.5)  # d = 4: radii visibly spread; 0.5 +- eps stays in the box
    eps = 0.2
    r = _norms(L2Step(eps, 0.1).random_start(x0) - x0)
    assert r.max() < eps and not torch.allclose(r, torch.full_like(r, eps))
    # Uniform in a d-ball: P(r < t * eps) = t^d; so E[r] = eps * d / (d + 1).
    assert abs(float(r.mean()) - eps * 4 / 5) < 0.01
    assert abs(float((r < eps / 2).float().mean()) - 0.5**4) < 0.02


def test_linf_random_start_inside_the_box():
    torch.manual_seed(2)
    x0 = torch.full((100, 3, 4, 4), 0.5)
    d = LinfStep(0.1, 0.01).random_start(x0) - x0
    assert d.abs().max() <= 0.1 and d.abs().max() > 0.09 and d.std() > 0.04


def test_pgd_restores_modes_and_leaves_param_grads(trained):
    model, x, y = trained
    model.train()
    model.layer1[0].bn1.eval()  # a mixed mode must survive the attack
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, y, 0.5, steps=3, bn_eval=True)
    assert model.training and not model.layer1[0].bn1.training and model.layer2[0].bn1.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    model.eval()


def test_pgd_under_bf16_autocast(trained):
    model, x, y = trained
    with autocast(torch.device("cpu"), True):
        xa = pgd(model, x, y, 0.5, steps=3)
    assert xa.dtype == torch.float32 and _norms(xa - x).max() <= 0.5 * (1 + 1e-5)


def test_our_pgd_is_at_least_as_strong_as_torchattacks(trained):
    """Same eps, steps and step size; ours as `evaluate` runs it (clean start first).

    A single run from a start uniform in the ball is weaker than torchattacks (whose start
    radius is U(0, 1) * eps, concentrated near the center): with few steps the random part
    of a start near the sphere survives the projections. See `pgd(clean_first=...)`.
    """
    from atlib.core.compat import import_torchvision

    import_torchvision()  # torchattacks imports torchvision
    import torchattacks

    model, x, y = trained
    steps = 5
    for eps in (1.5, 2.0, 2.5):
        alpha = 2.5 * eps / steps
        torch.manual_seed(3)
        theirs = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
        for restarts in (1, 2):
            torch.manual_seed(3)
            ours = pgd(model, x, y, eps, steps, step_size=alpha, restarts=restarts, clean_first=True)
            with torch.no_grad():
                fooled_theirs = (model(theirs).argmax(1) != y).float().mean()
                fooled_ours = (model(ours).argmax(1) != y).float().mean()
            assert fooled_ours >= fooled_theirs, (eps, restarts)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all() and fooled_theirs > 0.5  # the comparison is not vacuous


def test_trades_loss_finite_and_above_natural_ce(trained):
    model, x, y = trained
    torch.manual_seed(4)
    loss = trades_loss(model, x, y, eps=0.5, steps=3, step_size=0.4, beta=6.0)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
    assert torch.isfinite(loss) and loss >= ce - 1e-6
    per_example, nat, adv = trades_loss(model, x, y, 0.5, 3, 0.4, 6.0, reduction="none", return_logits=True)
    assert per_example.shape == (len(y),) and nat.shape == adv.shape == (len(y), 3)
    assert all(p.grad is None for p in model.parameters())


def test_evaluate_keys_and_worst_case(trained):
    model, x, y = trained
    torch.manual_seed(5)
    out = evaluate(model, x, y, [0.0, 0.5, 2.0], steps=5, restarts=2, batch_size=20, max_images=30)
    assert set(out) == {"natural_acc", "pgd_acc"} and set(out["pgd_acc"]) == {"0", "0.5", "2"}
    with torch.no_grad():
        nat_30 = 100.0 * float((model(x[:30]).argmax(1) == y[:30]).float().mean())
    assert out["pgd_acc"]["0"] == pytest.approx(nat_30)  # eps 0 = natural accuracy of the attacked subset
    assert out["pgd_acc"]["2"] <= out["pgd_acc"]["0.5"] <= nat_30
    assert 0 <= out["natural_acc"] <= 100


def test_gaussian_noise_sigma_and_norm():
    """sigma = eps / sqrt(n): per-coordinate std eps/sqrt(n), per-example L2 norm ~eps (no clamp here)."""
    x = torch.full((64, 3, 32, 32), 0.5)  # n = 3072; 0.5 +- 6 sigma stays inside [0, 1]
    eps = 2.0
    g = torch.Generator().manual_seed(0)
    d = gaussian_noise(x, eps, g) - x
    sigma = eps / 3072 ** 0.5
    assert float(d.std()) == pytest.approx(sigma, rel=0.01) and abs(float(d.mean())) < 0.01 * sigma
    norms = _norms(d)
    # ||d||^2 / sigma^2 ~ chi^2_n: the norm concentrates at eps within a few 1/sqrt(2n)
    assert float(norms.mean()) == pytest.approx(eps, rel=0.01) and float(norms.std()) < 0.03 * eps
    assert float(d.abs().max()) < 0.5  # so nothing was clamped and the numbers above are the noise's


def test_gaussian_noise_clamps_to_the_box_and_keeps_layout():
    x = torch.cat([torch.zeros(4, 3, 8, 8), torch.ones(4, 3, 8, 8)]).contiguous(memory_format=torch.channels_last)
    out = gaussian_noise(x, 8.0, torch.Generator().manual_seed(1))  # sigma ~0.5: half of the noise leaves the box
    assert out.min() >= 0 and out.max() <= 1
    assert out.is_contiguous(memory_format=torch.channels_last) and out.shape == x.shape
    # at a pixel on the box's edge about half the draws point outside and are clamped onto it
    at_edge = torch.cat([(out[:4] == 0).flatten(), (out[4:] == 1).flatten()]).float().mean()
    assert 0.4 < float(at_edge) < 0.6
    assert torch.equal(gaussian_noise(x, 0.0), x)


def test_gaussian_noise_is_fresh_but_seeded():
    x = torch.rand(8, 1, 8, 8)
    a = gaussian_noise(x, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, gaussian_noise(x, 1.0, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, gaussian_noise(x, 1.0, torch.Generator().manual_seed(6)))
    torch.manual_seed(2)  # without a generator: torch's global RNG, which the trainer seeds and resumes
    b1, b2 = gaussian_noise(x, 1.0), gaussian_noise(x, 1.0)
    torch.manual_seed(2)
    assert torch.equal(b1, gaussian_noise(x, 1.0)) and not torch.equal(b1, b2)
    d = b1 - x
    assert not torch.equal(d[0], d[1])  # a fresh draw per example
