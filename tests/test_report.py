"""Aggregation on a synthetic results tree: tables, missing cells, correlations, paper
comparison and the claims check. The files written here are test data, never pipeline output."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from atlib.info.recon import save_recon
from atlib.report import aggregate, check_claims, inversion_table, load_results
from atlib.report.claims import load_claims
from atlib.report.stats import mean_test, verdict
from atlib.spec.config import check_config

DATASETS = {"cifar10", "cifar100", "mnist", "svhn", "fashion_mnist"}
TARGETS = ["mnist", "svhn", "cifar100", "cifar10"]  # cifar10 is the source: a reference, never a target
SEEDS = [0, 1, 2]
EMD = {"cifar10": 0.0, "cifar100": 1.0, "svhn": 3.0, "mnist": 5.0}
TASK2VEC = {"cifar10": 0.0, "cifar100": 0.5, "svhn": 0.2, "mnist": 0.9}  # svhn and cifar100 swapped
# Real noise with a known effect, so verdicts go through the intervals they advertise (never through a
# zero-width one): natural accuracy of the resnet50 models per (eps, seed): paired differences eps 1 -
# eps 0 of -7.1, -9.0, -7.5 points (mean -7.87, t-interval [-10.3, -5.4]: holds).
NAT_NOISE = {(0, 0): 0.0, (0, 1): 0.4, (0, 2): -0.3, (1, 0): 0.9, (1, 1): -0.6, (1, 2): 0.2}
# PGD accuracy gain of transferred models per unit eps, per target: robust - standard differences of
# +12, -10, +3 points over three independent base sets (mean +1.67, t-interval [-25.7, +29.0]: inconclusive).
PGD_GAIN = {"mnist": 12.0, "svhn": -10.0, "cifar100": 3.0, "cifar10": 30.0}
# top1 per (eps, target, mode); seed s adds s (so the gap is seed-independent; std 0) except noted.
TOP1 = {
    (0.0, "mnist", 0): 64.0, (1.0, "mnist", 0): 88.0,
    (0.0, "svhn", 0): 40.0, (1.0, "svhn", 0): 55.0,
    (0.0, "cifar100", 0): 40.0, (1.0, "cifar100", 0): 37.0,
    (0.0, "mnist", 1): 97.0, (1.0, "mnist", 1): 98.0,
    (0.0, "svhn", 1): 90.0, (1.0, "svhn", 1): 91.0,
    (0.0, "cifar100", 1): 58.0, (1.0, "cifar100", 1): 57.0,
    (0.0, "cifar10", 0): 90.0, (1.0, "cifar10", 0): 80.0,
    (0.0, "cifar10", 1): 95.0, (1.0, "cifar10", 1): 70.0,
}


def _config(root: Path) -> dict:
    cfg = {
        "results": str(root),
        "experiments": {
            "c10": {"source": "cifar10", "arch": "resnet50", "eps": [0, 1], "seeds": SEEDS,
                    "targets": TARGETS, "modes": [0, 1], "near": ["cifar100"], "far": ["mnist", "svhn"]},
            "sweep": {"source": "cifar10", "arch": "resnet18", "eps": [0, 0.5, 1], "seeds": [0],
                      "analyses": ["fisher", "representation", "invert"]},
            # Gaussian-noise models at the sweep's eps: their trends are the opposite of the PGD
            # ones (GN_*), so mixing them into the paper's frames would flip claims checked below.
            "gn": {"source": "cifar10", "arch": "resnet18", "eps": [0.5, 1], "seeds": [0], "train": "gn",
                   "analyses": ["fisher"]},
        },
        "train_schedules": {"default": {}, "gn": {"objective": "gaussian"}},
        "report": {"bootstrap": 200},
    }
    return check_config(cfg, known_datasets=DATASETS)


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, pd.DataFrame):
        obj.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(obj))


def write_tree(root: Path) -> dict:
    """Fake-but-well-formed result files for every job of `_config`."""
    cfg = _config(root)
    for arch, eps_list, seeds in (("resnet50", [0, 1], SEEDS), ("resnet18", [0, 0.5, 1], [0])):
        for eps in eps_list:
            for seed in seeds:
                path = f"cifar10/{arch}/eps{eps:g}/s{seed}"
                norm = 100.0 - (10.0 * eps if eps > 1 else 0.0) + seed
                noise = NAT_NOISE.get((eps, seed), 0.0)
                _write(root / f"models/{path}/metrics.json", {
                    "natural_acc": 94.0 - 8 * eps + seed + noise,
                    "pgd_acc": {"0.5": 10 + 50 * eps - 2 * noise, "1": 2 + 30 * eps - 2 * noise},
                    "weight_norm": norm, "epochs": 3, "train_time_s": 1.0, "eps": float(eps),
                    "source": "cifar10", "arch": arch, "seed": seed, **(AUTOATTACK(eps, seed) if arch == "resnet50"
                                                                        else {})})
                _write(root / f"models/{path}/history.csv", pd.DataFrame({
                    "epoch": [1, 2, 3], "lr": 0.1, "train_loss": [2.0, 1.5, 1.0], "train_acc": 50.0,
                    "train_adv_acc": np.nan, "test_acc": 60.0, "test_adv_acc": np.nan,
                    "weight_norm": [norm + 2, norm + 1, norm], "time_s": 1.0}))
    for (eps, target, mode), top1 in TOP1.items():
        for seed in SEEDS:
            path = f"cifar10/resnet50/eps{eps:g}/s{seed}/{target}/mode{mode}"
            _write(root / f"transfer/{path}/metrics.json", {
                "top1": top1 + seed, "pgd_acc": {"0.5": 5 + PGD_GAIN[target] * eps}, "mode": mode, "target": target,
                "source_model": path, "eps": eps, "seed": seed, "epochs": 3, "cached": False,
                "train_time_s": 1.0})
            _write(root / f"transfer/{path}/history.csv", pd.DataFrame({
                "epoch": [1, 2, 3], "lr": 0.01, "train_loss": 1.0, "train_acc": 50.0,
                "test_top1": [top1 - 10 + seed, top1 - 5 + seed, top1 + seed], "time_s": 1.0}))
    for seed in SEEDS:
        for ds, emd in EMD.items():
            _write(root / f"distance/cifar10/resnet50/eps0/s{seed}/{ds}.json", {
                "probe": f"cifar10/resnet50/eps0/s{seed}", "source": "cifar10", "dataset": ds, "emd": emd,
                "similarity": float(np.exp(-0.01 * emd)), "otdd": 2 * emd, "n_images": 100,
                # no otdd_exact: a record written before it existed; LogME falls with EMD (a score)
                "task2vec": TASK2VEC[ds], "logme": -emd})
    for eps in (0, 0.5, 1):
        path = f"cifar10/resnet18/eps{eps:g}/s0"
        _write(root / f"fisher/{path}/summary.json", {
            "eps": eps, "kind": "true", "n_images": 16, "log_variance_mean": -5 + 2 * eps,
            "log_variance_per_layer": {}, "kl_total": 1.0, "kl_per_layer": {}, "fisher_trace": 1.0,
            "weight_norm": 100.0, "input_fisher": {"lambda1": 2.0 - eps, "trace": 10.0, "trace_over_n": 0.5,
                                                   "n": 100}})
        _write(root / f"representation/{path}/summary.json",
               {"eps": eps, "knn_acc": 90 - 20 * eps, "silhouette": 0.5 - 0.3 * eps, "n_images": 40})
        _write(root / f"representation/{path}/tsne.csv",
               pd.DataFrame({"x": np.arange(6.0), "y": np.arange(6.0) ** 2, "label": [0, 1, 2] * 2}))
        steps = np.arange(101)
        # variational reaches plain's final loss in 10, 10 and 9 of 100 steps: a real interval
        for method, rate in (("plain", 0.01), ("variational", 0.1 + 0.02 * eps), ("effective", 0.05)):
            _write(root / f"invert/{path}/{method}/curve.csv",
                   pd.DataFrame({"step": steps, "loss": np.exp(-rate * steps), "loss_noisy": np.exp(-rate * steps)}))
            # 2 test images + 1 photo; PSNR peaks at eps 0.5 (Figure 9's optimal eps) and rises per method.
            psnr = [20 - 10 * abs(eps - 0.5) + rate * 100, 21 - 10 * abs(eps - 0.5) + rate * 100]
            _write(root / f"invert/{path}/{method}/summary.json",
                   {"method": method, "final_loss": float(np.exp(-rate * 100)), "steps": 100, "steps_to_reach": {},
                    "psnr": float(np.mean(psnr)), "ssim": 0.5, "psnr_per_image": psnr, "ssim_per_image": [0.4, 0.6],
                    "photo_psnr": 8.0, "photo_ssim": 0.1, "photo_psnr_per_image": [8.0],
                    "photo_ssim_per_image": [0.1], "final_loss_per_image": [0.1, 0.2, 0.3]})
            x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            save_recon(root / f"invert/{path}/{method}/recon.npz", x, (x + 0.1 * eps).clamp(0, 1),
                       np.array([False, False, True]), np.exp(-rate * steps)[:, None].repeat(3, 1))
    for eps in (0.5, 1):
        path = f"cifar10/resnet18/gn{eps:g}/s0"
        _write(root / f"models/{path}/metrics.json", {
            "natural_acc": GN_NATURAL + eps, "pgd_acc": {"0.5": 1.0, "1": 0.5}, "weight_norm": 300.0 * eps,
            "epochs": 3, "train_time_s": 1.0, "eps": float(eps), "source": "cifar10", "arch": "resnet18", "seed": 0})
        _write(root / f"fisher/{path}/summary.json", {
            "eps": eps, "kind": "true", "n_images": 16, "log_variance_mean": -5 - 4 * eps, "log_variance_per_layer": {},
            "kl_total": 1.0, "kl_per_layer": {}, "fisher_trace": 1.0, "weight_norm": 300.0,
            "input_fisher": {"lambda1": GN_LAMBDA1 * eps, "trace": 10.0, "trace_over_n": 0.5, "n": 100}})
    return cfg


GN_NATURAL, GN_LAMBDA1 = 99.0, 50.0


def AUTOATTACK(eps: float, seed: int) -> dict:
    """AutoAttack on 100 images at eps 1: PGD on the same images overstates by seed + 1 images = points
    (robust models; seed 2 has 4 images robust to PGD only and 1 to AutoAttack only) and by 5 points for
    the standard ones. The 2x2 table of per-image outcomes is `PAIRED`."""
    pgd = 40.0 if eps else 5.0
    return {"autoattack_acc": {"1": pgd - (seed + 1 if eps else 5)}, "attack_of_record": "autoattack",
            "autoattack": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_images": 100, "eps": [1.0],
                           "pgd_acc_same_images": {"1": pgd}, "paired": {"1": PAIRED(eps, seed)}, "cpu_s": 1.0}}


def PAIRED(eps: float, seed: int) -> dict:
    """Cells of AUTOATTACK's 2x2 table: images robust to both, to PGD only, to AutoAttack only, to neither."""
    if not eps:
        return {"both": 0, "pgd_only": 5, "autoattack_only": 0, "neither": 95}
    pgd_only, aa_only = (4, 1) if seed == 2 else (seed + 1, 0)
    return {"both": 40 - pgd_only, "pgd_only": pgd_only, "autoattack_only": aa_only, "neither": 60 - aa_only}


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "results")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The complete synthetic tree aggregated once (figures take most of the time)."""
    root = tmp_path_factory.mktemp("full")
    cfg = write_tree(root / "results")
    return root / "report", aggregate(cfg, root / "report")


def test_tables_and_gap_by_hand(report):
    out, files = report
    assert (out / "summary.md") == files[-1] and (out / "summary.md").exists()
    gap = pd.read_csv(out / "table_gap_cifar10_resnet50.csv")
    row = gap[(gap["mode"] == 0) & (gap["eps"] == 1)].iloc[0]
    # by hand: seed s: (88 + s) - (64 + s) = 24
    assert row["mnist"] == pytest.approx(24.0) and row["mnist_std"] == pytest.approx(0.0)
    assert row["cifar100"] == pytest.approx(-3.0)
    top = pd.read_csv(out / "table_transfer_cifar10_resnet50.csv")
    st = top[(top["mode"] == 0) & (top["model"] == "st")].iloc[0]
    assert st["mnist"] == pytest.approx(65.0) and st["mnist_std"] == pytest.approx(np.std([64, 65, 66], ddof=1))
    md = (out / "table_transfer_cifar10_resnet50.md").read_text()
    assert "65.00 ± 1.00" in md
    tidy = pd.read_csv(out / "transfers.csv")
    assert len(tidy) == 2 * 3 * 4 * 2 and {"distance", "similarity", "pgd_acc_0.5"} <= set(tidy.columns)
    assert tidy[tidy["target"] == "mnist"]["distance"].eq(5.0).all()
    sources = pd.read_csv(out / "sources.csv")
    assert len(sources) == 6 + 3 and "pgd_acc_1" in sources
    for name in ["gap_vs_distance.png", "gap_vs_distance_cifar10_resnet50_mode0.pdf",
                 "gap_vs_distance_cifar10_resnet50_mode1.png", "mode_comparison_cifar10_resnet50.png",
                 "learning_curves_cifar10_resnet50.png", "source_tradeoff.png", "fisher_vs_eps.png",
                 "weight_norm_vs_eps.png", "input_fisher_vs_eps.png", "tsne_grid.png", "inversion_curves.png",
                 "inversion_grid.png", "inversion_grid.pdf",
                 "inversion.csv", "information.csv", "claims.md", "claims.csv", "paper_comparison.md"]:
        assert (out / name).exists(), name
    assert "![" in (out / "summary.md").read_text()


def test_gaussian_models_only_in_their_frames(tree):
    res = load_results(tree)
    gs, gf = res.gaussian_sources, res.gaussian_fisher
    assert list(gs["eps"]) == [0.5, 1.0] and set(gs["objective"]) == {"gaussian"} and (gs["arch"] == "resnet18").all()
    assert list(gs["natural_acc"]) == [GN_NATURAL + 0.5, GN_NATURAL + 1] and "pgd_acc_0.5" in gs
    assert list(gf["lambda1"]) == [GN_LAMBDA1 * 0.5, GN_LAMBDA1] and set(gf["objective"]) == {"gaussian"}
    assert list(gs.columns[:5]) == list(res.sources.columns[:5]) == ["source", "arch", "eps", "seed", "objective"]
    assert set(gf.columns) == set(res.fisher.columns)
    frames = [res.sources, res.histories, res.transfers, res.transfer_histories, res.fisher, res.representation,
              res.tsne, res.invert, res.invert_curves]
    for df in frames:
        assert "objective" in df and not df.empty and "gaussian" not in set(df["objective"])
    assert (res.sources["natural_acc"] < GN_NATURAL).all() and (res.fisher["lambda1"] < GN_LAMBDA1 / 2).all()
    objective = res.sources.set_index(["arch", "eps", "seed"])["objective"]
    assert objective[("resnet18", 0.0, 0)] == "standard" and objective[("resnet18", 0.5, 0)] == "madry"
    assert set(res.distances["probe_objective"]) == {"standard"}
    assert not any("/gn" in m for m in res.missing)
    (Path(tree["results"]) / "fisher/cifar10/resnet18/gn1/s0/summary.json").unlink()
    res = load_results(tree)
    assert any(m.endswith("fisher/cifar10/resnet18/gn1/s0/summary.json") for m in res.missing)
    assert np.isnan(res.gaussian_fisher.set_index("eps").loc[1.0, "lambda1"])


def test_missing_cell_is_nan_and_logged(tree, tmp_path, caplog):
    root = Path(tree["results"])
    gone = [root / f"transfer/cifar10/resnet50/eps1/s{s}/svhn/mode1/metrics.json" for s in SEEDS]
    for p in gone:
        p.unlink()
    with caplog.at_level(logging.WARNING, logger="atlib.report"):
        aggregate(tree, tmp_path / "report")
    assert all(str(p) in caplog.text for p in gone)
    top = pd.read_csv(tmp_path / "report" / "table_transfer_cifar10_resnet50.csv")
    rob = top[(top["mode"] == 1) & (top["model"] == "rob")].iloc[0]
    assert np.isnan(rob["svhn"]) and rob["mnist"] == pytest.approx(99.0)
    gap = pd.read_csv(tmp_path / "report" / "table_gap_cifar10_resnet50.csv")
    assert np.isnan(gap[gap["mode"] == 1].iloc[0]["svhn"])
    md = (tmp_path / "report" / "table_transfer_cifar10_resnet50.md").read_text().splitlines()
    assert any(line.startswith("| 1 | Rob |") and "| — |" in line for line in md)
    assert "are missing" in (tmp_path / "report" / "summary.md").read_text()


def test_summary_names_the_machines_the_result_jobs_ran_on(tree, report):
    from atlib.report import _numerics_lines
    from atlib.spec import provenance

    assert "## Machine and numerics" in (report[0] / "summary.md").read_text()
    root = Path(tree["results"])
    assert "No result job recorded" in "\n".join(_numerics_lines(tree, root))
    paths = [root / f"models/cifar10/resnet50/eps{e}/s0" for e in (0, 1)]
    recs = [provenance.record([], [p / "metrics.json", p / "history.csv"], tree) for p in paths]
    text = "\n".join(_numerics_lines(tree, root))
    assert "2 recorded their numerics, all on this report's setup" in text and "torch" in text
    other = json.loads(recs[1].read_text())
    other["numerics"]["cpu"]["isa"].append("avx512_bf16")  # a run on another CPU
    other["numerics"]["cpu"]["model"] = "Other CPU"
    recs[1].write_text(json.dumps(other))
    text = "\n".join(_numerics_lines(tree, root))
    assert "on **2 setups**" in text and "  - 1 job: Other CPU (" in text


def test_correlations(report):
    corr = pd.read_csv(report[0] / "correlations.csv")
    r = corr[(corr["mode"] == 0) & (corr["distance"] == "emd")].iloc[0]
    # gaps by EMD: cifar100 (1) -3, svhn (3) 15, mnist (5) 24: perfectly monotone
    assert r["n"] == 3 and r["spearman"] == pytest.approx(1.0)
    assert np.isfinite(r["pearson"]) and r["spearman_lo"] <= r["spearman"] <= r["spearman_hi"]


def test_distance_ranking(report):
    corr = pd.read_csv(report[0] / "correlations.csv")
    g = corr[(corr["mode"] == 0) & (corr["eps"] == 1)].set_index("distance")
    # gaps rise with EMD and OTDD and fall with LogME: sign-aligned rho 1, tied first; Task2Vec orders
    # the three targets (cifar100, svhn, mnist) as 2, 1, 3: rho 0.5; exact OTDD has no values: last
    assert g.loc[["emd", "otdd", "logme"], "rank"].tolist() == [1, 1, 1]
    assert g.loc["logme", "spearman"] == pytest.approx(-1.0) and g.loc["logme", "expect"] == -1
    assert g.loc["task2vec", "spearman"] == pytest.approx(0.5) and g.loc["task2vec", "rank"] == 4
    assert g.loc["otdd_exact", "rank"] == 5 and np.isnan(g.loc["otdd_exact", "spearman"])
    assert g["primary"].sum() == 1 and g.loc["emd", "primary"]
    assert (report[0] / "distance_grid_cifar10_resnet50_mode0.png").exists()
    c4 = pd.read_csv(report[0] / "claims.csv").set_index("claim").loc[4, "evidence"]
    assert "decided on EMD (Cui et al.), the pre-declared primary" in c4 and "ρ(gap, Task2Vec) +0.5" in c4


def test_paper_comparison_matches(report):
    cmp = pd.read_csv(report[0] / "paper_comparison.csv")
    row = cmp[(cmp["target"] == "mnist") & (cmp["mode"] == 0) & (cmp["model"] == "rob")].iloc[0]
    assert row["paper_top1"] == pytest.approx(88.11) and row["our_top1"] == pytest.approx(89.0)
    assert row["diff"] == pytest.approx(89.0 - 88.11) and row["table"] == 6


def test_paper_comparison_no_match_still_written(tmp_path):
    cfg = check_config({"results": str(tmp_path / "r"), "experiments": {"x": {
        "source": "mnist", "arch": "resnet8", "eps": [0, 1], "targets": ["svhn"]}}}, known_datasets=DATASETS)
    aggregate(cfg, tmp_path / "report")
    cmp = pd.read_csv(tmp_path / "report" / "paper_comparison.csv")
    assert list(cmp.columns)[:3] == ["table", "source", "arch"]
    assert "no setting" in cmp["note"].iloc[0]
    assert "No setting" in (tmp_path / "report" / "paper_comparison.md").read_text()
    claims = pd.read_csv(tmp_path / "report" / "claims.csv")
    assert len(claims) == 15 and set(claims["verdict"]) == {"not testable here"}
    assert claims["evidence"].str.len().gt(0).all()  # every "not testable here" says why


def test_claims_every_claim_judged(report):
    claims = pd.read_csv(report[0] / "claims.csv").set_index("claim")
    assert list(claims.index) == list(range(1, 16)) and len(load_claims()) == 15
    md = (report[0] / "claims.md").read_text()
    assert "The verdict rule" in md.split("| # |")[0]
    assert sum(line.startswith("| ") and line[2:4].strip().isdigit() for line in md.splitlines()) == 15
    v = claims["verdict"]
    # natural accuracy -7.87 [-10.3, -5.4] over 3 noisy paired seeds: decided by a real t-interval
    assert v[1] == "holds" and claims.loc[1, "lo"] < claims.loc[1, "hi"] < 0 < claims.loc[1, "hi"] - claims.loc[1, "lo"]
    assert claims.loc[1, "effect"] == pytest.approx(-23.6 / 3, abs=1e-9)
    assert v[2] == "inconclusive" and "n=2 base sets (2 targets)" in claims.loc[2, "evidence"]  # 2 far bases
    assert v[3] == "inconclusive"  # 1 near target
    # rho = 1 over 3 base sets, but permuting 3 base means gives p = 2/3! = 0.33
    assert v[4] == "inconclusive"
    line = claims.loc[4, "evidence"].split("; ")[0]
    assert "ρ(gap, EMD (Cui et al.)) +1 " in line and "n=3 base sets (3 targets)" in line
    p4 = float(re.search(r"p=([0-9.]+)", line).group(1))
    assert p4 == pytest.approx(1 / 3, abs=0.02)  # the source (4th transfer target) is not counted
    assert v[5] == "not testable here" and "both directions" in claims.loc[5, "evidence"]
    assert v[8] == "not testable here"  # one architecture transferred
    # GN vs AT at eps 0.5 and 1, one seed each: the direction is right (AT's lambda1 is lower) but n = 1
    assert v[12] == "inconclusive" and "n=1 seeds" in claims.loc[12, "evidence"]
    assert "linear algebra" in claims.loc[12, "evidence"]
    # variational reaches plain's final loss in 10, 10 and 9 of 100 steps: a real interval above 0
    assert v[13] == "holds" and 0 < claims.loc[13, "lo"] < claims.loc[13, "hi"]
    assert v[14] == "not testable here"
    # PGD robust - standard of +12, -10, +3 points over 3 base sets: n is enough, the interval decides
    assert v[15] == "inconclusive" and claims.loc[15, "lo"] < 0 < claims.loc[15, "hi"]
    assert claims.loc[15, "n"] == 3 and claims.loc[15, "unit"] == "base sets (3 targets)"
    assert claims.loc[15, "effect"] == pytest.approx(5 / 3)
    # every testable verdict carries its stability; the seed claims lose nothing when a seed is left
    # out only because a 2-seed draw cannot decide them (those draws are not counted)
    testable = claims[claims["verdict"] != "not testable here"]
    assert testable["stability"].between(0, 1).all() and (claims["draws"] == 3 + 10).all()
    assert np.isnan(claims.loc[1, "stability_loso"]) and claims.loc[1, "stability"] == claims.loc[1, "stability_boot"]
    assert "stable" in (report[0] / "claims.md").read_text()
    summary = (report[0] / "summary.md").read_text()
    assert "effect [95% CI]" in summary and "| 15 |" in summary


def test_no_holds_beside_an_interval_with_zero(report):
    """Every evidence line obeys the rule: no [holds]/[does not hold] beside an interval that
    contains 0 or with fewer than 3 units."""
    import re

    md = (report[0] / "claims.md").read_text()
    pat = re.compile(r"\[95% CI ([-+0-9.e]+), ([-+0-9.e]+)\], n=(\d+)[^\[]*\[(holds|does not hold)\]")
    found = pat.findall(md)
    assert found  # the synthetic tree has decided lines
    for lo, hi, n, _ in found:
        assert int(n) >= 3 and (float(lo) > 0 or float(hi) < 0)


def test_verdict_rule():
    assert mean_test([5.0], +1, "seeds", "x").verdict == "inconclusive"  # n = 1: no interval
    t2 = mean_test([3.0, 30.0], +1, "seeds", "x")
    assert t2.verdict == "inconclusive" and t2.lo < 0 < t2.hi  # n = 2 (the old rule said "holds")
    assert mean_test([3.0, 4.0, 5.0], +1, "seeds", "x").verdict == "holds"
    assert mean_test([3.0, 4.0, 5.0], -1, "seeds", "x").verdict == "does not hold"
    assert mean_test([-3.0, -4.0, -5.0], -1, "seeds", "x").verdict == "holds"
    assert mean_test([10.0, -8.0, 5.0], +1, "seeds", "x").verdict == "inconclusive"  # CI straddles 0
    assert mean_test([-3.0, -4.0, -5.0], 0, "seeds", "x").verdict == "holds"  # two-sided claim
    # by hand: mean 4, sd 1, t(0.975, 2) = 4.3027 -> half-width 4.3027 / sqrt(3) = 2.484
    t = mean_test([3.0, 4.0, 5.0], +1, "seeds", "x")
    assert t.lo == pytest.approx(4 - 2.4842, abs=1e-3) and t.hi == pytest.approx(4 + 2.4842, abs=1e-3)
    assert verdict(0.5, 2.0, 3, +1, p=0.2) == "inconclusive"  # a correlation needs p < 0.05 too
    assert verdict(0.5, 2.0, 3, +1, p=0.01) == "holds"


def test_corrupt_result_named(tree, tmp_path):
    bad = Path(tree["results"]) / "models/cifar10/resnet50/eps0/s0/metrics.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        load_results(tree)


def test_check_claims_direct(tree):
    res = load_results(tree)
    c = check_claims(res, n_boot=50)
    assert len(c) == 15 and {"claim", "verdict", "effect", "lo", "hi", "n", "unit", "test", "evidence"} <= set(c.columns)


def test_invert_per_image_quality_and_recon_loaded(tree):
    res = load_results(tree)
    im = res.invert_images
    assert len(im) == 3 * 3 * 3  # 3 eps x 3 methods x (2 test images + 1 photo)
    row = im[(im["eps"] == 1.0) & (im["method"] == "variational") & (im["image"] == 1)].iloc[0]
    # 21 - 10 |1 - 0.5| + 100 * (0.1 + 0.02 * 1): the variational rate grows with eps
    assert row["kind"] == "test" and row["psnr"] == pytest.approx(28.0) and row["ssim"] == pytest.approx(0.6)
    photo = im[(im["eps"] == 0.5) & (im["method"] == "plain") & (im["kind"] == "photo")].iloc[0]
    assert photo["image"] == 2 and photo["psnr"] == 8.0 and photo["final_loss"] == pytest.approx(0.3)
    rec = res.invert_recon[("cifar10", "resnet18", 1.0, 0, "effective")]
    assert rec["recon"].shape == (3, 1, 8, 8) and rec["photo"].tolist() == [False, False, True]
    assert rec["loss"].shape == (101, 3)
    # uint8 storage: within half a grey level of the +0.1 shift written above
    shifted = np.clip(rec["original"] + 0.1, 0, 1)
    assert np.abs(rec["recon"] - shifted).max() <= 1.0 / 255 + 1e-6
    table = inversion_table(res)
    plain0 = table[(table["eps"] == 0.0) & (table["method"] == "plain")].iloc[0]
    assert plain0["psnr"] == pytest.approx(16.5) and plain0["ssim"] == pytest.approx(0.5)


def test_ladder_table_and_findings_by_hand():
    """Gaps and EMD per ladder level, with the gap's t-interval over seeds (hand values)."""
    from types import SimpleNamespace

    from atlib.report.ladders import ladder_findings, ladder_table

    cfg = {"ladders": {"lad": {"base": "mnist", "transform": "blur", "strengths": [1, 2, 3]}}}
    rows = []
    for k, gap in ((1, -2.0), (2, 1.0), (3, 4.0)):
        for seed, noise in ((0, -1.0), (1, 0.0), (2, 1.0)):
            for eps, top1 in ((0.0, 70.0), (1.0, 70.0 + gap + noise)):
                rows.append({"source": "src", "arch": "resnet8", "eps": eps, "seed": seed, "target": f"lad_{k}",
                             "mode": 0, "top1": top1})
    dist = pd.DataFrame({"probe_source": "src", "probe_arch": "resnet8", "probe_eps": 0.0, "probe_seed": 0,
                         "dataset": ["lad_1", "lad_2", "lad_3"], "emd": [1.0, 2.0, 3.0]})
    table = ladder_table(SimpleNamespace(config=cfg, transfers=pd.DataFrame(rows), distances=dist))
    assert list(table["strength"]) == [1, 2, 3] and list(table["emd"]) == [1.0, 2.0, 3.0]
    assert list(table["gap"]) == pytest.approx([-2.0, 1.0, 4.0]) and (table["n_seeds"] == 3).all()
    # seeds -1, 0, +1 around the gap: sd 1, half-width t(0.975, 2) / sqrt(3) = 2.484
    assert table["gap_hi"].iloc[0] - table["gap"].iloc[0] == pytest.approx(2.4842, abs=1e-3)
    (finding,) = ladder_findings(table)
    assert "EMD rises (1 → 3)" in finding and "the gap rises (-2.00 → +4.00 points)" in finding


def test_pgd_overstatement_against_autoattack_by_hand(report):
    out, _ = report
    t = pd.read_csv(out / "robustness.csv")
    assert len(t) == 6 and set(t["attack_eps"]) == {1.0} and (t["n_images"] == 100).all()
    robust = t[t["eps"] == 1].sort_values("seed")
    assert robust["pgd_overstatement"].tolist() == [1.0, 2.0, 3.0]
    assert robust["autoattack_acc"].tolist() == [39.0, 38.0, 37.0] and (robust["pgd_acc"] == 40).all()
    assert robust["pgd_only"].tolist() == [1, 2, 4] and robust["autoattack_only"].tolist() == [0, 0, 1]
    # Wilson beside each accuracy: 40/100 by hand, center (40 + z^2/2) / (100 + z^2), half-width
    # z sqrt(100 * 0.4 * 0.6 + z^2 / 4) / (100 + z^2)
    z = 1.959963984540054
    center, half = (40 + z * z / 2) / (100 + z * z), z * np.sqrt(24 + z * z / 4) / (100 + z * z)
    assert robust["pgd_lo"].tolist() == pytest.approx([100 * (center - half)] * 3)
    assert robust["pgd_hi"].tolist() == pytest.approx([100 * (center + half)] * 3)
    assert (robust["autoattack_lo"] < robust["autoattack_acc"]).all()
    # the paired interval holds the overstatement, and never claims a sign it cannot: each is
    # 1-4 discordant images out of 100
    assert (robust["overstatement_lo"] < robust["pgd_overstatement"]).all()
    assert (robust["pgd_overstatement"] < robust["overstatement_hi"]).all()
    text = (out / "robustness.md").read_text()
    # by hand over models 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.4842
    assert text.startswith("AutoAttack (custom: apgd-ce, apgd-t) against PGD on the same images: on the robust "
                           "models PGD overstated robust accuracy at eps 1 by 2.00 points on average (95% t-interval "
                           "over 3 models [-0.48, +4.48]; per model 1.00 to 3.00, each model's paired 95% interval "
                           f"(Newcombe) inside [{robust['overstatement_lo'].min():+.1f}, "
                           f"{robust['overstatement_hi'].max():+.1f}]; at least 100 images each: one image is 1.0 "
                           "points).")
    standard = t[t["eps"] == 0]["pgd_overstatement"]
    # three standard models at 5 points each: a t-interval of zero width, so the paired intervals carry it
    assert (f"On the standard models it overstated it at eps 1 by {standard.mean():.2f} points on average "
            "(t-interval over 3 models: all equal, zero width;") in text
    assert "| 40.00 [" in text and " [95% paired] |" in text and "| 4 / 1 |" in text
    assert text.splitlines()[0] in (out / "summary.md").read_text()
    assert "autoattack_acc_1" in pd.read_csv(out / "sources.csv").columns


def _inversion_results(plain_end: int, var_ends: list[int | None], budget: int = 100):
    """Results with only inversion curves: per model, plain's loss falls linearly to 0 at `plain_end`
    (then stays), variational's at its entry of `var_ends` (None: never below 0.5, right-censored)."""
    from types import SimpleNamespace

    steps = np.arange(budget + 1)
    rows = []
    for seed, end in enumerate(var_ends):
        var = np.full(budget + 1, 0.5) if end is None else np.maximum(1 - steps / end, 0.0)
        for method, loss in (("plain", np.maximum(1 - steps / plain_end, 0.0)), ("variational", var)):
            rows.append(pd.DataFrame({"source": "s", "arch": "resnet8", "eps": 1.0, "seed": seed,
                                      "objective": "madry", "method": method, "step": steps, "loss": loss}))
    return SimpleNamespace(invert_curves=pd.concat(rows, ignore_index=True), config={"invert": {"steps": budget}},
                           invert=pd.DataFrame(columns=["source", "arch", "eps", "seed", "method"]))


def test_claim13_censored_models_honest_both_ways():
    from atlib.report.claims import Ctx, claim13

    # 6 models x10 faster and one never there: at its most favourable bound (100 / 101) the test
    # holds, as the old rule said; at the least favourable one it is arbitrarily slow: inconclusive
    f = claim13(Ctx(_inversion_results(100, [10, 10, 11, 12, 9, 10, None]), 0))
    assert f.verdict == "inconclusive" and f.test.verdict == "holds" and f.test.n == 7
    assert "1 of 7 models never reach" in f.lines[-1] and "least favourable bound" in f.lines[-1]
    # all 7 reach it: the observed ratios, both bounds agree
    f = claim13(Ctx(_inversion_results(100, [10, 10, 11, 12, 9, 10, 10]), 0))
    assert f.verdict == "holds" and "no model censored" in f.lines[-1]
    # plain plateaus at step 50, variational gets there at 70-90 or never: slower even when the censored
    # model is counted at its most favourable bound (50 / 101): does not hold
    f = claim13(Ctx(_inversion_results(50, [70, 80, 90, 75, None]), 0))
    assert f.verdict == "does not hold" and f.test.hi < 0
    assert "does not hold even at the most favourable bound" in f.lines[-1]
