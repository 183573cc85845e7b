"""Inversion: the loss goes down, methods agree where they must, bad inputs are refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import save_tiny_model

from atlib.info.invert import REACH_FRACTIONS, invert, invert_report, speedup_vs_plain, steps_to_reach
from atlib.info.recon import PSNR_CAP, image_quality, load_photos, load_recon
from atlib.models.resnet import build_model
from atlib.spec.schema import section_defaults


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("resnet8", 3, 1, width=0.125).eval()


def _sigma(model, value: float) -> dict:
    return {k: torch.full_like(v, value) for k, v in model.named_parameters()}


def test_plain_inversion_reduces_loss(model):
    x = torch.rand(3, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_hat, curves = invert(model, x, "plain", steps=30, lr=0.05, generator=torch.Generator().manual_seed(0),
                           optimizer="adam")
    assert curves["loss"][-1] < 0.5 * curves["loss"][0]
    assert len(curves["loss"]) == len(curves["loss_noisy"]) == 31
    assert curves["loss"] == curves["loss_noisy"]
    assert x_hat.shape == x.shape and x_hat.min() >= 0 and x_hat.max() <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never modified


def test_sgd_inversion_reduces_loss(model):
    x = torch.rand(2, 1, 8, 8)
    _, curves = invert(model, x, "plain", steps=20, lr=0.5, generator=torch.Generator().manual_seed(0))
    assert curves["loss"][-1] < curves["loss"][0]


def test_variational_with_zero_sigma_equals_plain(model):
    x = torch.rand(2, 1, 8, 8)
    a, ca = invert(model, x, "plain", steps=10, lr=0.1, generator=torch.Generator().manual_seed(5))
    for method in ("variational", "effective"):
        b, cb = invert(model, x, method, steps=10, lr=0.1, sigma_star=_sigma(model, 0.0),
                       generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        assert ca["loss"] == pytest.approx(cb["loss"], rel=1e-6)
        assert ca["loss"] == pytest.approx(cb["loss_noisy"], rel=1e-6)


def test_noise_changes_objective_not_clean_loss_definition(model):
    x = torch.rand(2, 1, 8, 8)
    _, c = invert(model, x, "effective", steps=3, lr=0.1, sigma_star=_sigma(model, 1e-2),
                  generator=torch.Generator().manual_seed(0))
    _, p = invert(model, x, "plain", steps=3, lr=0.1, generator=torch.Generator().manual_seed(0))
    assert c["loss"][0] == pytest.approx(p["loss"][0])  # same start, same clean model
    assert c["loss_noisy"][0] != pytest.approx(c["loss"][0])


def test_bad_inputs_rejected(model):
    with pytest.raises(ValueError, match=r"expects \(1, 8, 8\)"):
        invert(model, torch.rand(2, 3, 16, 16), "plain", steps=1, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="sigma_star"):
        invert(model, torch.rand(1, 1, 8, 8), "variational", steps=1)
    with pytest.raises(ValueError, match="method"):
        invert(model, torch.rand(1, 1, 8, 8), "magic", steps=1)
    with pytest.raises(ValueError, match="lacks parameters"):
        invert(model, torch.rand(1, 1, 8, 8), "effective", steps=1, sigma_star={"conv1.weight": torch.zeros(1)})


def test_photos_are_model_sized():
    gray = load_photos(["astronaut", "coffee", "chelsea"], 8, 1)
    rgb = load_photos(["coffee"], 12, 3)
    assert gray.shape == (3, 1, 8, 8) and rgb.shape == (1, 3, 12, 12)
    assert 0 <= gray.min() and gray.max() <= 1
    with pytest.raises(ValueError, match="unknown scikit-image photo"):
        load_photos(["not_a_photo"], 8, 1)


def test_speedup_and_steps_to_reach():
    plain = [10, 8, 6, 5, 4, 4, 4]
    fast = [10, 5, 3.9, 3]
    out = speedup_vs_plain(plain, fast)
    assert out["plain_steps"] == 4 and out["steps"] == 2 and out["ratio"] == 2.0
    assert steps_to_reach(fast, 1.0) is None
    assert speedup_vs_plain(plain, [10, 9, 9])["ratio"] is None


def test_summary_keys_do_not_depend_on_the_losses(tiny_prepared, tmp_path):
    """The summary's keys become MLflow metric names: two runs whose losses differ (other images, other
    start) have the same keys, steps_to_reach keyed by the fraction, the losses kept as values."""
    from atlib.workflow.tracking.mapping import flatten

    save_tiny_model(tmp_path / "model.pt", eps=0.0)
    cfg = section_defaults({"n_images": 2, "photos": [], "steps": 3, "lr": 0.05, "sigma": 0.1}, "invert")
    a, b = (invert_report(tmp_path / "model.pt", None, tiny_prepared, cfg, "plain", seed, tmp_path / str(seed),
                          device="cpu") for seed in (1, 2))
    assert a["initial_loss"] != b["initial_loss"]
    assert set(flatten(a)) == set(flatten(b))
    assert set(a["steps_to_reach"]) == set(a["reach_loss"]) == {"0.5", "0.2", "0.1", "0.05", "0.02", "0.01"}
    for seed, s in ((1, a), (2, b)):
        assert s["reach_loss"] == pytest.approx({f"{f:g}": s["initial_loss"] * f for f in REACH_FRACTIONS})
        curve = pd.read_csv(tmp_path / str(seed) / "curve.csv")["loss"]
        assert [s["steps_to_reach"][k] for k in s["reach_loss"]] == [
            steps_to_reach(curve, level) for level in s["reach_loss"].values()]


def test_invert_report(tiny_prepared, tmp_path):
    from atlib.models.checkpoint import atomic_save

    model = save_tiny_model(tmp_path / "model.pt", eps=1.0)
    fisher = {k: torch.rand_like(v) for k, v in model.named_parameters()}
    sigma = {k: 1e-4 * torch.rand_like(v) for k, v in model.named_parameters()}
    atomic_save({"fisher": fisher, "sigma": sigma, "prior_var": {k: 1.0 for k in fisher}, "loss_budget": 0.1},
                tmp_path / "fisher.pt")
    cfg = section_defaults({"n_images": 2, "photos": ["coffee"], "steps": 5, "lr": 0.05, "sigma": 0.1,
                            "optimizer": "sgd"}, "invert")
    runs = {}
    for method in ("plain", "variational"):
        out = tmp_path / method
        summary = invert_report(tmp_path / "model.pt", tmp_path / "fisher.pt", tiny_prepared, cfg, method, 3, out,
                                device="cpu")
        disk = json.loads((out / "summary.json").read_text())
        assert json.loads(json.dumps(summary)) == disk  # what the job returns is what it wrote
        assert {"method", "final_loss", "steps", "steps_to_reach"} <= set(disk)
        assert disk["method"] == method and disk["steps"] == 5 and disk["n_images"] == 3
        curve = pd.read_csv(out / "curve.csv")
        assert list(curve.columns) == ["step", "loss", "loss_noisy"] and len(curve) == 6
        assert (out / "images.png").stat().st_size > 0
        # 2 test images + 1 photo, scored separately; the scores are those of the saved recon.npz
        assert len(disk["psnr_per_image"]) == len(disk["ssim_per_image"]) == 2
        assert len(disk["photo_psnr_per_image"]) == 1 and disk["psnr"] == pytest.approx(
            sum(disk["psnr_per_image"]) / 2)
        rec = load_recon(out / "recon.npz")
        assert rec["photo"].tolist() == [False, False, True] and rec["loss"].shape == (6, 3)
        requant = image_quality(torch.from_numpy(rec["original"]), torch.from_numpy(rec["recon"]))
        assert requant["psnr"][:2] == pytest.approx(disk["psnr_per_image"], abs=0.3)
        assert rec["loss"][-1] == pytest.approx(disk["final_loss_per_image"], rel=1e-5)
        runs[method] = curve
    # Same seed: every method starts from the same r_0 (comparable curves).
    assert runs["plain"]["loss"][0] == runs["variational"]["loss"][0]
    with pytest.raises(ValueError, match="fisher.pt"):
        invert_report(tmp_path / "model.pt", None, tiny_prepared, cfg, "effective", 3, tmp_path / "e", device="cpu")


def test_image_quality_by_hand():
    x = torch.full((1, 1, 16, 16), 0.5)
    x[..., :8, :] = 0.3  # some structure, still far from the [0, 1] edges
    q = image_quality(torch.cat([x, x]), torch.cat([x + 0.1, x]))
    # constant offset d: MSE = d^2, PSNR = -10 log10(d^2) = 20 dB for d = 0.1
    assert q["psnr"][0] == pytest.approx(20.0, abs=1e-6)
    # identical images: SSIM 1, PSNR capped (not inf)
    assert q["ssim"][1] == pytest.approx(1.0) and q["psnr"][1] == PSNR_CAP
    # two flat images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * data_range)^2
    a, b = torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), 0.25)
    c1 = 1e-4
    assert image_quality(a, b)["ssim"][0] == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1), rel=1e-6)
    rgb = image_quality(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert len(rgb["psnr"]) == 2 and all(s < 0.5 for s in rgb["ssim"])  # unrelated noise images
    with pytest.raises(ValueError, match="one shape"):
        image_quality(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 9, 9))


def test_layer_inversion(model):
    x = torch.rand(2, 1, 8, 8)
    assert model.features_at(x, "layer1").shape == (2, 8 * 8 * 8)  # width 0.125: 8 planes, no stride
    assert model.features_at(x, "layer3").shape == (2, 32 * 2 * 2)
    _, c = invert(model, x, "plain", steps=20, lr=0.5, generator=torch.Generator().manual_seed(0), layer="layer2")
    assert c["loss"][-1] < c["loss"][0]
    assert c["loss_per_step_image"].shape == (21, 2)
    assert c["loss_per_step_image"].mean(axis=1) == pytest.approx(c["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown layer"):
        invert(model, x, "plain", steps=1, layer="layer9")
