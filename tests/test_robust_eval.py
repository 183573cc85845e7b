"""AutoAttack evaluation: the reference library's numbers, resumable by chunks, in source and transfer metrics."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from atlib import robust_eval
from atlib.config import schedule_defaults
from atlib.models import build_model
from atlib.robust_eval import autoattack_accuracy


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
    from atlib.train import train_source
    from atlib.transfer import transfer

    ev = {"eps": [0.5], "steps": 2, "max_images": 12, "attack": "autoattack",
          "autoattack": {"version": "custom", "max_images": 6}}
    out = tmp_path / "models" / "tiny" / "resnet8" / "eps0.5" / "s0"
    m = train_source(tiny_prepared, out, arch="resnet8", width=0.125, eps=0.5, threads=1,
                     schedule={"epochs": 1, "batch_size": 32, "bf16": False, "channels_last": False,
                               "attack": {"steps": 1}, "evaluation": ev})
    assert m["attack_of_record"] == "autoattack" and set(m["autoattack_acc"]) == {"0.5"}
    assert m["autoattack"]["n_images"] == 6 and set(m["autoattack"]["pgd_acc_same_images"]) == {"0.5"}
    assert json.loads((out / "metrics.json").read_text()) == m and not (out / "resume").exists()
    t = transfer(out / "model.pt", tiny_prepared, tmp_path / "t", mode=0, threads=1,
                 schedule={"epochs": 1, "batch_size": 32, "bf16": False, "channels_last": False, "evaluation": ev})
    assert t["attack_of_record"] == "autoattack" and t["autoattack"]["attacks"] == ["apgd-ce"]  # 3 classes
    assert t["autoattack"]["n_images"] == 6 and 0 <= t["autoattack_acc"]["0.5"] <= 100
