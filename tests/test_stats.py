"""The claims check's statistics on synthetic data with known structure: clustered intervals that
keep their coverage where the flat ones lose it, a permutation test that holds its level under
cluster effects, verdict stability, and the comparison with a committed reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from atlib.report.reference import (
    CHECK_COLUMNS,
    COLUMNS,
    LAYOUT,
    check_frame,
    compare,
    config_identity,
    crosscheck_summary,
    reference_frame,
)
from atlib.report.stability import Draw, resample, seed_draws, stability
from atlib.report.stats import (
    Nested,
    _rank_corr,
    clustered_mean_test,
    correlation,
    correlation_test,
    mean_test,
    two_level_permutation_p,
)

SIZES = [1, 2, 3, 1, 4, 2]  # targets per base set: unbalanced, as the demo's are


def _clustered(rng: np.random.Generator, mu: float = 1.0, sd_base: float = 2.0, sd_target: float = 0.5,
               sd_seed: float = 1.0, seeds: int = 3) -> Nested:
    """value = mu + base effect + target effect + seed noise, nested base > target > seed."""
    bases, values = [], []
    for b, n in enumerate(SIZES):
        eb = rng.normal(0, sd_base)
        for _ in range(n):
            bases.append(f"b{b}")
            values.append(mu + eb + rng.normal(0, sd_target) + rng.normal(0, sd_seed, seeds))
    return Nested(bases, values)


def test_clustered_interval_keeps_its_coverage_where_the_flat_one_loses_it():
    rng = np.random.default_rng(0)
    hits = {"clustered": 0, "flat": 0}
    widths = {"clustered": [], "flat": []}
    sims = 400
    for _ in range(sims):
        data = _clustered(rng)
        c = clustered_mean_test(data, +1, "x")
        f = mean_test(data.target_means, +1, "targets", "x")  # every target an independent unit
        for name, t in (("clustered", c), ("flat", f)):
            hits[name] += t.lo <= 1.0 <= t.hi
            widths[name].append(t.hi - t.lo)
    # 95% nominal: the base-set interval covers the true mean (binomial sd over 400 runs ~1.1 points)
    assert 0.92 <= hits["clustered"] / sims <= 0.985
    assert hits["flat"] / sims < 0.85  # 13 targets counted as independent: far too narrow
    assert np.mean(widths["clustered"]) > 1.5 * np.mean(widths["flat"])
    assert c.n == len(SIZES) and c.unit == f"base sets ({sum(SIZES)} targets)"


def test_clustered_mean_by_hand():
    df = pd.DataFrame({"base": ["a", "a", "a", "a", "b", "c"], "target": ["a1", "a1", "a2", "a2", "b", "c"],
                       "seed": [0, 1, 0, 1, 0, 0], "value": [1.0, 3.0, 5.0, 7.0, 2.0, 9.0]})
    t = clustered_mean_test(Nested.from_frame(df, "value"), +1, "x")
    # base means: a = mean(2, 6) = 4, b = 2, c = 9 -> the t-interval over (4, 2, 9)
    ref = stats.ttest_1samp([4.0, 2.0, 9.0], 0).confidence_interval(0.95)
    assert t.effect == pytest.approx(5.0) and (t.lo, t.hi) == pytest.approx((ref.low, ref.high))
    assert t.n == 3 and "base-set means" in t.method


def test_fewer_than_three_bases_is_inconclusive_whatever_the_targets():
    df = pd.DataFrame({"base": ["a"] * 6 + ["b"] * 6, "target": [f"t{i}" for i in range(12)], "seed": 0,
                       "value": np.linspace(5, 6, 12)})
    t = clustered_mean_test(Nested.from_frame(df, "value"), +1, "x")
    assert t.n == 2 and t.verdict == "inconclusive"
    assert mean_test(df["value"], +1, "targets", "x").verdict == "holds"  # what counting targets would say


def _null_correlated_clusters(rng: np.random.Generator) -> Nested:
    """No relation between x and y, but both carry a strong base-set effect: a cluster of similar
    targets sits at one distance with one gap, which a flat test mistakes for many agreeing points."""
    bases, y, x = [], [], []
    for b, n in enumerate([1, 1, 1, 1, 10]):
        xb, yb = rng.normal(0, 3), rng.normal(0, 3)
        bases += [f"b{b}"] * n
        y += [np.array([v]) for v in yb + rng.normal(0, 0.3, n)]
        x += list(xb + rng.normal(0, 0.3, n))
    return Nested(bases, y, np.array(x))


def test_two_level_permutation_holds_its_level_under_cluster_effects():
    rng = np.random.default_rng(1)
    sims, rejected = 300, {"two-level": 0, "flat": 0}
    for i in range(sims):
        data = _null_correlated_clusters(rng)
        flat = Nested([f"t{k}" for k in range(len(data.values))], data.values, data.x)  # each target its own base
        rejected["two-level"] += two_level_permutation_p(data, _rank_corr, seed=i, n=499) < 0.05
        rejected["flat"] += two_level_permutation_p(flat, _rank_corr, seed=i, n=499) < 0.05
    assert rejected["two-level"] / sims <= 0.08  # the nominal 5%, within Monte Carlo error
    assert rejected["flat"] / sims >= 0.12  # the flat permutation test finds what is not there


def test_permutation_p_singleton_clusters_is_the_plain_test():
    # one target per base, one seed: the exact permutation p of rho = 1 over 4 points is 2/24
    data = Nested(["a", "b", "c", "d"], [np.array([v]) for v in (1.0, 2.0, 3.0, 4.0)], np.array([1.0, 2, 3, 4]))
    assert two_level_permutation_p(data, _rank_corr) == pytest.approx(2 / 24, abs=0.01)
    c = correlation(data, n_boot=200)
    assert c["spearman"] == pytest.approx(1.0) and c["n"] == 4 and c["n_targets"] == 4


def test_hierarchical_correlation_interval_wider_than_flat():
    rng = np.random.default_rng(2)
    data = _clustered(rng, sd_base=2.0)
    x = np.array([float(b[1:]) for b in data.bases]) + 0.1 * np.arange(len(data.bases)) / len(data.bases)
    nested = Nested(data.bases, data.values, x)
    flat = Nested(list(range(len(nested.values))), nested.values, nested.x)
    c, f = correlation_test(nested, +1, "x", n_boot=500), correlation_test(flat, +1, "x", n_boot=500)
    assert c.effect == pytest.approx(f.effect)  # the same point estimate: the targets' mean values
    assert (c.hi - c.lo) > (f.hi - f.lo) and c.n == len(SIZES) and f.n == sum(SIZES)


# ----------------------------------------------------------------------------- stability


def test_seed_draws_enumerate_the_bootstrap():
    draws = seed_draws([0, 1, 2])
    boot = [d for d in draws if d.kind == "boot"]
    assert len(boot) == 10 and sum(d.weight for d in boot) == pytest.approx(1.0)
    assert next(d.weight for d in boot if d.seeds == (0, 0, 0)) == pytest.approx(1 / 27)
    assert next(d.weight for d in boot if d.seeds == (0, 1, 2)) == pytest.approx(6 / 27)
    assert [d.seeds for d in draws if d.kind == "loso"] == [(1, 2), (0, 2), (0, 1)]
    assert seed_draws([0]) == []


class _Res:
    """The part of Results that stability() and resample() touch."""

    def __init__(self, sources: pd.DataFrame) -> None:
        self.sources, self.transfers, self.distances = sources, sources.iloc[0:0], sources.iloc[0:0]
        self.invert_recon = {}


def _claim1_judge(res) -> pd.DataFrame:
    s = res.sources
    diff = s[s["eps"] == 1].set_index("seed")["acc"] - s[s["eps"] == 0].set_index("seed")["acc"]
    t = mean_test(diff, -1, "seeds", "acc")
    return pd.DataFrame([{"claim": 1, "verdict": t.verdict, "n": t.n, "unit": t.unit}])


def _sources(diffs: list[float]) -> pd.DataFrame:
    return pd.DataFrame([{"eps": e, "seed": s, "acc": 90.0 + (d if e else 0.0)} for s, d in enumerate(diffs)
                         for e in (0, 1)])


@pytest.fixture
def plain_resample(monkeypatch):
    """resample() on the minimal _Res (a dataclass replace needs the real Results)."""
    import atlib.report.stability as st

    def fake(res, seeds):
        from atlib.report.stability import _relabel

        return _Res(_relabel(res.sources, seeds))

    monkeypatch.setattr(st, "resample", fake)


def test_a_verdict_built_to_flip_is_fragile(plain_resample):
    res = _Res(_sources([-6.0, -6.5, -3.0]))  # holds on all three seeds, by a narrow margin
    full = _claim1_judge(res)
    assert full["verdict"].iloc[0] == "holds"
    s = stability(res, _claim1_judge, full).iloc[0]
    assert s["stability"] < 0.95 and s["stability"] == s["stability_boot"]  # (2, 2, 0) draws are inconclusive
    assert np.isnan(s["stability_loso"])  # two seeds cannot decide a claim on seeds: not counted


def test_a_clear_verdict_is_stable(plain_resample):
    res = _Res(_sources([-6.0, -6.5, -5.5]))
    s = stability(res, _claim1_judge, _claim1_judge(res)).iloc[0]
    assert s["stability"] == pytest.approx(1.0) and s["draws"] == 13


def test_resample_relabels_drawn_seeds():
    from atlib.report.stability import _relabel

    df = _sources([-1.0, -2.0, -3.0])
    out = _relabel(df, (2, 2, 0))
    assert sorted(out["seed"].unique()) == [0, 1, 2]
    assert out[out["eps"] == 1].set_index("seed")["acc"].tolist() == [87.0, 87.0, 89.0]
    assert callable(resample) and Draw("boot", (0,), 1.0).weight == 1.0


# ----------------------------------------------------------------------------- the reference


def _claims(verdicts: list[str], stab: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"claim": range(1, len(verdicts) + 1), "verdict": verdicts, "effect": 1.0, "lo": 0.5,
                         "hi": 1.5, "n": 3, "unit": "seeds", "stability": stab})


@pytest.fixture
def demo_config(tmp_path):
    p = tmp_path / "demo.yaml"
    p.write_text("results: results\nreport: {bootstrap: 1000}\n")
    return [str(p)]


def test_reference_reports_a_planted_difference(demo_config):
    ref = reference_frame(_claims(["holds", "inconclusive", "holds"], [1.0, 1.0, 0.5]), "machine A", demo_config)
    assert list(ref.columns) == COLUMNS and (ref["layout"] == LAYOUT).all()
    run = _claims(["holds", "holds", "inconclusive"], [1.0, 1.0, 0.6])
    lines, warnings = compare(run, ref, "machine B", demo_config)
    assert len(warnings) == 1 and "claim  2" in warnings[0]  # stable in the reference: a warning
    assert "machine A" in warnings[0] and "machine B" in warnings[0]
    assert any("claim  3" in line and "fragile" in line for line in lines)  # fragile there: expected
    assert any("claim  1: same verdict" in line for line in lines)


def test_reference_of_another_config_or_layout_is_named_not_compared(demo_config, tmp_path):
    ref = reference_frame(_claims(["holds"], [1.0]), "machine A", demo_config)
    other = tmp_path / "other.yaml"
    other.write_text("results: elsewhere\nreport: {bootstrap: 200}\n")
    lines, warnings = compare(_claims(["inconclusive"], [1.0]), ref, "machine B", [str(other)])
    assert not lines and f"reference made with config {demo_config[0]}" in warnings[0]
    assert f"this run used {other}" in warnings[0]
    old = ref.drop(columns=["stability", "layout"])
    lines, warnings = compare(_claims(["holds"], [1.0]), old, "machine B", demo_config)
    assert not lines and "another layout" in warnings[0] and "stability" in warnings[0]


def test_check_frame_and_its_summary_count_a_planted_difference(demo_config):
    ref = reference_frame(_claims(["holds", "inconclusive", "holds"], [1.0, 1.0, 0.5]), "machine A", demo_config)
    run = _claims(["holds", "holds", "inconclusive"], [1.0, 0.9, 1.0])
    check = check_frame(run, ref, "machine B (x86)", 612.0, 2783.0)
    assert list(check.columns) == CHECK_COLUMNS
    assert check["same"].tolist() == [True, False, False]
    line = crosscheck_summary(check)
    assert line.startswith("machine B (x86): the same verdict on 1 of 3 claims (1 of 2 the reference calls stable)")
    assert "different: claim 2, claim 3" in line and "612 s" in line and "2.78 GB" in line


def test_a_crosscheck_is_kept_per_machine_and_shown_in_the_readme(demo_config, tmp_path):
    """`make demo-crosscheck`: the check lands under crosscheck/ and in the README's generated block;
    a check against another reference, or from the reference's own machine, is refused."""
    from atlib.report.reference import BEGIN, END, record_crosscheck

    into = tmp_path / "bench"
    into.mkdir()
    ref = reference_frame(_claims(["holds", "inconclusive"], [1.0, 1.0]), "machine A", demo_config)
    ref.to_csv(into / "demo_claims.csv", index=False)
    (into / "demo.json").write_text('{"wall_s": 700, "peak_rss_mb": 2800}')
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\nrest\n")
    check = tmp_path / "reference_check.csv"
    check_frame(_claims(["holds", "holds"], [1.0, 1.0]), ref, "machine A", 1.0, 1.0).to_csv(check, index=False)
    with pytest.raises(ValueError, match="reference's own machine"):
        record_crosscheck(check, into, readme)
    check_frame(_claims(["holds", "holds"], [1.0, 1.0]), ref, "Xeon (x86) B", 600.0, 2700.0).to_csv(check, index=False)
    dest = record_crosscheck(check, into, readme)
    assert dest.parent == into / "crosscheck" and dest.name.startswith("xeon-")
    text = readme.read_text()
    assert "Xeon (x86) B: the same verdict on 1 of 2 claims (1 of 2 the reference calls stable); different: claim 2" \
        in text and text.startswith("intro\n") and text.endswith(f"{END}\nrest\n")
    reference_frame(_claims(["holds", "inconclusive"], [1.0, 1.0]), "machine A",
                    [str(demo_config[0]), str(demo_config[0])]).assign(config_hash="other").to_csv(
                        into / "demo_claims.csv", index=False)
    with pytest.raises(ValueError, match="another reference"):
        record_crosscheck(check, into, readme)


def test_config_identity_ignores_the_results_directory_and_the_numerics(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("results: r1\nseeds: [0, 1]\nnumerics: {isa: avx2}\n")
    b.write_text("results: r2\nseeds: [0, 1]\n")
    assert config_identity([str(a)])[1] == config_identity([str(b)])[1]
    b.write_text("results: r2\nseeds: [0, 2]\n")
    assert config_identity([str(a)])[1] != config_identity([str(b)])[1]


def test_readme_table_is_the_committed_reference():
    """The README's claims table is generated from benchmarks/results (never copied by hand): the
    block in the README equals the block made from the committed reference and demo.json."""
    import json
    from pathlib import Path

    from atlib.report.claims import load_claims
    from atlib.report.reference import BEGIN, END, readme_block

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    claims = load_claims()
    checks = [pd.read_csv(f) for f in sorted((root / "benchmarks/results/crosscheck").glob("*.csv"))]
    made = readme_block(pd.read_csv(root / "benchmarks/results/demo_claims.csv"),
                        json.loads((root / "benchmarks/results/demo.json").read_text()),
                        dict(zip(claims["claim"], claims["statement"])), checks)
    assert block == made
    ref = pd.read_csv(root / "benchmarks/results/demo_claims.csv")
    assert list(ref.columns) == COLUMNS and ref["stability"].notna().any()
