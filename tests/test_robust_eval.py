"""AutoAttack evaluation: the reference library's numbers, resumable by chunks, in source and transfer metrics;
the intervals beside every sampled accuracy (Wilson) and beside PGD's overstatement (paired, Newcombe)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from atlib.core.intervals import accuracy_interval, paired_difference_interval, wilson_interval
from atlib.models.resnet import build_model
from atlib.spec.schema import schedule_defaults
from atlib.train import robust_eval
from atlib.train.robust_eval import autoattack_accuracy, paired_table

Z = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval from its formula: (k + z²/2 ± z sqrt(k (n - k) / n + z²/4)) / (n + z²)."""
    center, half = k + Z * Z / 2, Z * math.sqrt(k * (n - k) / n + Z * Z / 4)
    return (center - half) / (n + Z * Z), (center + half) / (n + Z * Z)


class Preempted(Exception):
    """Stands for the job being killed mid-evaluation."""


def evaluation(**aa) -> dict:
    return schedule_defaults({"evaluation": {"eps": [0.5], "steps": 2, "attack": "autoattack",
                                             "autoattack": {"version": "custom", **aa}}})["evaluation"]


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    model = build_model("resnet8", 5, 1, width=0.125).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image clean-correct, so the attacks have work
    return model, x, y


def test_equals_calling_pyautoattack_directly(model_and_data):
    from pyautoattack import AutoAttack

    model, x, y = model_and_data
    got = autoattack_accuracy(model, x, y, evaluation(max_images=10), "l2", torch.device("cpu"), 5, seed=3)
    aa = AutoAttack(model, norm="L2", eps=0.5, version="standard", seed=3)
    aa.attacks_to_run = ["apgd-ce", "apgd-t"]
    aa.apgd_targeted.n_target_classes = 4
    aa.logger.setLevel(logging.WARNING)
    _, y_adv = aa.run_standard_evaluation(x[:10], y[:10], batch_size=250)
    assert got["autoattack_acc"] == {"0.5": 100.0 * float((y_adv == y[:10]).float().mean())}
    info = got["autoattack"]
    assert info["attacks"] == ["apgd-ce", "apgd-t"] and info["n_images"] == 10 and info["version"] == "custom"
    assert set(info["pgd_acc_same_images"]) == {"0.5"} and info["cpu_s"] >= 0
    # the 2x2 table's margins are the two accuracies on the same 10 images
    t = info["paired"]["0.5"]
    assert sum(t.values()) == 10 and t["both"] + t["autoattack_only"] == int((y_adv == y[:10]).sum())
    assert 10 * (t["both"] + t["pgd_only"]) == info["pgd_acc_same_images"]["0.5"]
    assert got["autoattack_acc_ci"]["0.5"] == accuracy_interval(got["autoattack_acc"]["0.5"], 10)
    assert info["pgd_acc_same_images_ci"]["0.5"]["n"] == 10


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(20, 25)
    assert (lo, hi) == pytest.approx(wilson_by_hand(20, 25), abs=1e-9)
    assert (round(lo, 3), round(hi, 3)) == (0.609, 0.911)
    assert wilson_interval(0, 25) == pytest.approx((0.0, Z * Z / (25 + Z * Z)))  # k = 0: upper z²/(n + z²)
    ci = accuracy_interval(80.0, 25)  # the metrics' form: percent, with the sample
    assert ci["n"] == 25 and ci["correct"] == 20 and ci["lo"] == pytest.approx(100 * lo)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_paired_table_counts_discordant_images():
    pgd = torch.tensor([True, True, True, False, False, True])
    aa = torch.tensor([True, False, False, True, False, True])
    assert paired_table(pgd, aa) == {"both": 2, "pgd_only": 2, "autoattack_only": 1, "neither": 1}


def test_paired_difference_interval():
    # Newcombe's interval as published (Fagerland, Lydersen & Laake's `contingencytables`, Cavo et al. 2012):
    # 59 both, 6 first only, 16 second only, 80 neither: -0.0621 (95% CI -0.1186 to -0.0046)
    assert paired_difference_interval(59, 6, 16, 80) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    # A hand-made table with ad - bc = 2*4 - 3*1 = 5 <= n/2: the corrected correlation is 0, so the limits
    # are the square-and-add of the two Wilson intervals' arms: p1 = 5/10, p2 = 3/10
    (l1, u1), (l2, u2) = wilson_by_hand(5, 10), wilson_by_hand(3, 10)
    lo, hi = 0.2 - math.hypot(0.5 - l1, u2 - 0.3), 0.2 + math.hypot(0.3 - l2, u1 - 0.5)
    assert paired_difference_interval(2, 3, 1, 4) == pytest.approx((lo, hi), abs=1e-12)
    # No discordant image among 25 is not "0 points": the interval keeps a width of several points
    lo, hi = paired_difference_interval(12, 0, 0, 13)
    assert lo == pytest.approx(-hi) and 0.05 < hi < 0.1
    assert all(math.isnan(v) for v in paired_difference_interval(0, 0, 0, 0))


def test_dlr_attacks_left_out_below_4_classes():
    torch.manual_seed(0)
    model = build_model("resnet8", 3, 1, width=0.125).eval()
    x = torch.rand(4, 1, 8, 8)
    got = autoattack_accuracy(model, x, model(x).argmax(1), evaluation(), "l2", torch.device("cpu"), 3)
    assert got["autoattack"]["attacks"] == ["apgd-ce"]


def test_resumes_from_the_chunks_already_attacked(model_and_data, tmp_path, monkeypatch):
    model, x, y = model_and_data
    ev = evaluation(eps=[1.0], max_images=None)
    monkeypatch.setattr(robust_eval, "CHUNK", 4)
    ref = autoattack_accuracy(model, x, y, ev, "l2", torch.device("cpu"), 5)
    calls, killed = [], []
    real = robust_eval.make_autoattack

    def flaky(*a, **k):  # the attack of the second chunk is killed (preemption)
        aa = real(*a, **k)
        run = aa.run_standard_evaluation

        def counted(xb, yb, **kw):
            calls.append(len(xb))
            if calls == [4, 4] and not killed:
                killed.append(True)
                raise Preempted("killed")
            return run(xb, yb, **kw)

        aa.run_standard_evaluation = counted
        return aa

    monkeypatch.setattr(robust_eval, "make_autoattack", flaky)
    with pytest.raises(Preempted):
        autoattack_accuracy(model, x, y, ev, "l2", torch.device("cpu"), 5, state_dir=tmp_path)
    calls.clear()
    got = autoattack_accuracy(model, x, y, ev, "l2", torch.device("cpu"), 5, state_dir=tmp_path)
    assert calls == [4, 4]  # the first chunk was kept, the other two attacked
    assert got["autoattack_acc"] == ref["autoattack_acc"]


def test_source_and_transfer_metrics_label_both_attacks(tiny_prepared, tmp_path):
    from atlib.spec.settings import FinetuneSchedule, TrainSchedule
    from atlib.train.source import train_source
    from atlib.transfer.finetune import transfer

    ev = {"eps": [0.5], "steps": 2, "max_images": 12, "attack": "autoattack",
          "autoattack": {"version": "custom", "max_images": 6}}
    out = tmp_path / "models" / "tiny" / "resnet8" / "eps0.5" / "s0"
    m = train_source(tiny_prepared, out, arch="resnet8", width=0.125, eps=0.5, threads=1,
                     schedule=TrainSchedule.from_config({"epochs": 1, "batch_size": 32, "bf16": False,
                                                         "channels_last": False, "attack": {"steps": 1},
                                                         "evaluation": ev}))
    assert m["attack_of_record"] == "autoattack" and set(m["autoattack_acc"]) == {"0.5"}
    assert m["autoattack"]["n_images"] == 6 and set(m["autoattack"]["pgd_acc_same_images"]) == {"0.5"}
    assert m["autoattack_acc_ci"]["0.5"]["n"] == 6 and m["pgd_acc_ci"]["0.5"]["n"] == 12
    assert sum(m["autoattack"]["paired"]["0.5"].values()) == 6
    assert json.loads((out / "metrics.json").read_text()) == m and not (out / "resume").exists()
    t = transfer(out / "model.pt", tiny_prepared, tmp_path / "t", mode=0, threads=1,
                 schedule=FinetuneSchedule.from_config({"epochs": 1, "batch_size": 32, "bf16": False,
                                                        "channels_last": False, "evaluation": ev}))
    assert t["attack_of_record"] == "autoattack" and t["autoattack"]["attacks"] == ["apgd-ce"]  # 3 classes
    assert t["autoattack"]["n_images"] == 6 and 0 <= t["autoattack_acc"]["0.5"] <= 100
