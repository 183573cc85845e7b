"""Your own target: image folders as datasets (layouts, every bad input refused with one message),
the clustered prediction interval, the ranking's honesty rules, and `atlib.workflow.recommend` end to end on
a copy of the tiny finished run (conftest's `tiny_run`)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from atlib.data import Prepared, prepare
from atlib.data.folder import FolderError, check_folder, load_folder
from atlib.report.prediction import Prediction, clustered_prediction
from atlib.spec.config import check_config
from atlib.spec.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
LETTERS = "KLMNO"  # not the registry's A-J letters


def letter_folder(root: Path, classes: str = LETTERS, n: int = 12, split: bool = False, size: int = 24) -> Path:
    """Letters drawn with Pillow's default font at seeded positions, one class folder per letter."""
    from PIL import Image, ImageDraw, ImageFont

    font, rng = ImageFont.load_default(), np.random.default_rng(0)
    for ch in classes:
        for j in range(n):
            part = ("train" if j < n * 3 // 4 else "test") if split else ""
            d = root / part / ch
            d.mkdir(parents=True, exist_ok=True)
            img = Image.new("L", (size, size), int(rng.integers(0, 40)))
            ImageDraw.Draw(img).text((int(rng.integers(1, size // 2)), int(rng.integers(1, size // 3))), ch,
                                     fill=255, font=font)
            img.save(d / f"{j}.png")
    return root


def folder_spec(path: Path, **kw) -> dict:
    return {"base": "folder", "path": str(path), "test_fraction": 0.25, "image_size": 16, "channels": 1,
            "seed": 0, **kw}


@pytest.mark.parametrize("split", [False, True])
def test_folder_is_prepared_like_any_dataset(tmp_path, split):
    folder = letter_folder(tmp_path / "mine", split=split)
    meta = prepare("mine", tmp_path / "out", None, derived=folder_spec(folder))
    data = Prepared(tmp_path / "out")  # checks every sha256 and the row counts
    assert meta["classes"] == list(LETTERS) and data.image_size == 16 and data.channels == 1
    assert set(meta["sha256"]) == {"images.npy", "labels.npy"}
    counts = meta["class_counts"]
    assert counts["train"] == [9] * 5 and counts["test"] == [3] * 5  # stratified: 3 of 12 per class held out
    x, _ = data.arrays("train")
    assert x.shape == (45, 16, 16, 1) and x.max() > 150  # the strokes (255 on a background under 40) survive the resize


def _truncate(folder: Path) -> list[Path]:
    bad = [folder / "K" / "0.png", folder / "M" / "3.png"]
    for p in bad:
        p.write_bytes(p.read_bytes()[:60])
    return bad


def _garbage(folder: Path) -> list[Path]:
    bad = [folder / "L" / "1.png", folder / "N" / "2.png"]
    for p in bad:
        p.write_bytes(b"not an image at all")
    return bad


def _tiny_images(folder: Path) -> list[Path]:
    from PIL import Image

    bad = [folder / "O" / "0.png", folder / "K" / "5.png"]
    for p in bad:
        Image.new("L", (6, 20)).save(p)
    return bad


def _empty_class(folder: Path) -> list[Path]:
    (folder / "Z").mkdir()
    return [folder / "Z"]


def _one_class(folder: Path) -> list[Path]:
    import shutil

    for ch in LETTERS[1:]:
        shutil.rmtree(folder / ch)
    return [folder]


def _mixed(folder: Path) -> list[Path]:
    (folder / "train" / "K").mkdir(parents=True)
    return [folder]


def _test_class_missing(folder: Path) -> list[Path]:
    letter_folder(folder / "split", split=True)
    (folder / "split" / "test" / "Q").mkdir()
    (folder / "split" / "test" / "K" / "9.png").rename(folder / "split" / "test" / "Q" / "9.png")
    return [folder / "split" / "test" / "Q"]


def _missing(folder: Path) -> list[Path]:
    return [folder / "nowhere"]


@pytest.mark.parametrize("defect,message", [
    (_truncate, "truncated"), (_garbage, "unreadable"), (_tiny_images, "smaller than 8"),
    (_empty_class, "empty class folder"), (_one_class, "at least 2"), (_mixed, "mixed layouts"),
    (_test_class_missing, "missing from"), (_missing, "no such folder"),
])
def test_bad_folder_refused_with_every_bad_file_named(tmp_path, defect, message):
    folder = letter_folder(tmp_path / "mine")
    bad = defect(folder)
    root = {_test_class_missing: folder / "split", _missing: folder / "nowhere"}.get(defect, folder)
    with pytest.raises(FolderError) as err:
        check_folder(root)
    text = str(err.value)
    assert message in text and all(str(p) in text for p in bad), text
    # the same message from the config, before any job, naming the key
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["datasets"]["mine"] = {"base": "folder", "path": str(root)}
    cfg["experiments"]["tiny"]["targets"].append("mine")
    with pytest.raises(ConfigError, match="datasets.mine.path") as err:
        check_config(cfg, decode_images=True)
    assert all(str(p) in str(err.value) for p in bad)


def test_failed_preparation_keeps_the_prepared_copy(tmp_path):
    folder = letter_folder(tmp_path / "mine")
    out = tmp_path / "out"
    before = prepare("mine", out, None, derived=folder_spec(folder))
    files = {f: (out / f).read_bytes() for f in ("images.npy", "labels.npy", "meta.json")}
    _truncate(folder)
    with pytest.raises(FolderError, match="truncated"):
        prepare("mine", out, None, derived=folder_spec(folder))
    assert {f: (out / f).read_bytes() for f in files} == files
    assert Prepared(out).meta["sha256"] == before["sha256"]


def test_folder_images_are_resized_to_the_source_input(tmp_path):
    """A folder targeting the tiny run's source (mnist5k: 28x28 gray) is stored at 28x28x1, RGB images too."""
    from PIL import Image

    folder = letter_folder(tmp_path / "mine", n=4)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "K" / "rgb.jpg")
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["datasets"]["mine"] = {"base": "folder", "path": str(folder)}
    cfg["experiments"]["tiny"]["targets"].append("mine")
    spec = check_config(cfg)["datasets"]["mine"]
    assert (spec["image_size"], spec["channels"]) == (28, 1)
    raw = load_folder(folder, 28, 1)
    assert raw.train_x.shape[1:] == (28, 28, 1) and len(raw.train_y) + len(raw.test_y) == 21


# --------------------------------------------------------------------------- the prediction


def _bases_points(rng, n_bases: int, per_base: int):
    x = rng.uniform(0, 10, (n_bases, per_base))
    base_shift = rng.normal(0, 1, (n_bases, 1))
    y = 2 * x + base_shift + rng.normal(0, 0.3, x.shape)
    bases = np.repeat(np.arange(n_bases), per_base).astype(str)
    return x.ravel(), y.ravel(), bases


def test_clustered_prediction_interval_counts_base_sets_not_targets():
    rng = np.random.default_rng(0)
    x, y, bases = _bases_points(rng, 5, 3)
    p = clustered_prediction(x, y, bases, 5.0)
    assert p.n == 5 and p.n_targets == 15 and p.lo < p.value < p.hi
    assert abs(p.value - 10) < p.hi - p.lo  # near the true line 2 * 5
    assert p.slope == pytest.approx(2, abs=0.5)
    # every target copied within its base: more targets, no more information. The interval must not
    # shrink the way an iid OLS interval would (its mean part by 1/sqrt(2)).
    q = clustered_prediction(np.r_[x, x], np.r_[y, y], np.r_[bases, bases], 5.0)
    assert (q.hi - q.lo) > 0.9 * (p.hi - p.lo)


def test_clustered_prediction_gives_no_number_without_three_base_sets():
    rng = np.random.default_rng(1)
    x, y, bases = _bases_points(rng, 2, 6)  # 12 targets, 2 base sets
    p = clustered_prediction(x, y, bases, 5.0)
    assert math.isnan(p.value) and math.isnan(p.lo) and math.isnan(p.hi) and p.n == 2
    assert "no prediction" in p.text()


# --------------------------------------------------------------------------- the ranking's rules


@pytest.fixture
def tiny_setup(tmp_path):
    from atlib.workflow.recommend_inputs import setup

    folder = letter_folder(tmp_path / "mine", n=4)
    s, _ = setup([str(ROOT / "tests/configs/tiny.yaml")], str(tmp_path / "results"), str(folder))
    return s


def _fit(gap: float, lo: float, hi: float, decided: bool = True):
    from atlib.workflow.recommend import Fit

    g = Prediction(gap, lo, hi, 1.0, 3, 6, 1.0, 3.0)
    return Fit(g, Prediction(50 + gap, 40 + gap, 60 + gap, 1.0, 3, 6, 1.0, 3.0), decided, "test")


def _dist() -> pd.DataFrame:
    # eps 0.5 has the lower LogME: the distance-alone ranking puts the standard model first.
    return pd.DataFrame([{"model": "src/resnet8/eps0/s0", "eps": 0.0, "seed": 0, "emd": 2.0, "otdd": 1.0,
                          "otdd_exact": 1.0, "logme": 1.5},
                         {"model": "src/resnet8/eps0.5/s0", "eps": 0.5, "seed": 0, "emd": 2.5, "otdd": 1.0,
                          "otdd_exact": 1.0, "logme": 0.5}])


def test_ranking_follows_the_fit_only_when_decided_and_inside(tiny_setup):
    from atlib.workflow.recommend import rank

    fitted = {0.0: _fit(0, 0, 0), 0.5: _fit(4, 1, 7)}
    df, why = rank(tiny_setup, _dist(), fitted, 2.0)
    assert not why and list(df["eps"]) == [0.5, 0.0] and not df["extrapolated"].any()
    assert (df["basis"] == "fitted relation").all()
    assert (df["predicted_lo"] <= df["predicted_top1"]).all() and (df["predicted_top1"] <= df["predicted_hi"]).all()

    for x0, fitted in ((9.0, fitted), (2.0, {0.0: _fit(0, 0, 0), 0.5: _fit(4, -1, 9, decided=False)})):
        df, why = rank(tiny_setup, _dist(), fitted, x0)
        assert why and df["extrapolated"].all() and (df["basis"] == "distance alone").all()
        assert list(df["eps"]) == [0.0, 0.5]  # by LogME of each candidate's features, not by the fit


# --------------------------------------------------------------------------- end to end


def test_recommend_then_confirm_on_the_tiny_run(tiny_run, tmp_path):
    """Ranking in seconds on a finished run, honest at n = 2 base sets; --confirm then measures it."""
    import shutil

    from atlib.workflow.recommend import main

    run = shutil.copytree(tiny_run, tmp_path / "run", symlinks=True)  # the shared run stays as it was
    folder = letter_folder(tmp_path / "letters_kl", n=20)
    args = ["--target", str(folder), "--config", str(ROOT / "tests/configs/tiny.yaml"), "--results", "results",
            "--workdir", str(run)]
    main(args)  # its time is benchmarks/bench_recommend.py's, not a test's
    out = run / "results" / "recommend" / "letters_kl"
    df = pd.read_csv(out / "ranking.csv")
    assert len(df) == 2 and sorted(df["rank"]) == [1, 2] and set(df["eps"]) == {0, 0.5}
    for col in ("model", "eps", "emd", "logme", "predicted_top1", "predicted_lo", "predicted_hi", "rank"):
        assert col in df
    # The tiny run has 2 base sets (mnist5k, textures): no interval, so no number, and it says so.
    assert df[["predicted_top1", "predicted_lo", "predicted_hi"]].isna().all().all()
    assert df["extrapolated"].all() and (df["basis"] == "distance alone").all()
    text = (out / "summary.md").read_text()
    assert "cannot tell" in text and "extrapolated" in text and (out / "ranking.png").stat().st_size > 0
    # An MLflow run nested under the target's run, with the ranking as an artifact.
    with sqlite3.connect(run / "results" / "mlflow.db") as db:
        runs = dict(db.execute("SELECT name, run_uuid FROM runs WHERE name LIKE '%letters_kl'").fetchall())
        parent = db.execute("SELECT value FROM tags WHERE key = 'mlflow.parentRunId' AND run_uuid = ?",
                            (runs["recommend letters_kl"],)).fetchone()
    assert parent == (runs["target letters_kl"],)

    main(args + ["--confirm", "--top-k", "1"])
    df = pd.read_csv(out / "ranking.csv")
    confirmed = (df["rank"] == 1) | (df["eps"] == 0)  # the first pick and the standard model, fine-tuned
    assert df.loc[confirmed, "measured_top1"].notna().all() and df.loc[~confirmed, "measured_top1"].isna().all()
    assert "Spearman" in (out / "summary.md").read_text() and "regret" in (out / "summary.md").read_text()
    meta = json.loads((run / "results" / "data" / "letters_kl" / "meta.json").read_text())
    assert meta["classes"] == list(LETTERS)


def test_report_has_your_targets_only_when_a_recommendation_exists(tmp_path):
    from atlib.report import _Sections, _targets_section
    from atlib.spec import jobs

    res, out = tmp_path / "results", tmp_path / "report"
    out.mkdir()
    sec = _Sections(out)
    _targets_section(sec, res)
    assert sec.entries == [] and jobs.recommendations(str(res)) == []
    where = res / "recommend" / "mine"
    where.mkdir(parents=True)
    pd.DataFrame([{"rank": 1, "model": "src/resnet8/eps1/s0", "eps": 1.0, "basis": "distance alone",
                   "extrapolated": True}]).to_csv(where / "ranking.csv", index=False)
    (where / "ranking.png").write_bytes(b"png")
    (res / "recommend" / "features").mkdir()  # the candidates' feature caches are not a target
    _targets_section(sec, res)
    assert jobs.recommendations(str(res)) == ["mine"]
    assert {e[0] for e in sec.entries} == {"Your targets"} and (out / "target_mine.png").is_file()
    assert "extrapolated" in (out / "target_mine.html").read_text()
    assert jobs.recommendation_files(str(res)) == [str(where / "ranking.csv"), str(where / "ranking.png")]


def test_predicted_top1_interval_is_cut_at_0_and_100(tiny_setup):
    from atlib.workflow.recommend import Fit, rank

    wide = Prediction(90.0, 60.0, 120.0, 1.0, 3, 6, 1.0, 3.0)
    low = Prediction(5.0, -10.0, 20.0, 1.0, 3, 6, 1.0, 3.0)
    fitted = {0.0: Fit(Prediction(0, 0, 0, 1.0, 3, 6, 1.0, 3.0), low, True, "test"), 0.5: Fit(wide, wide, True, "test")}
    df, _ = rank(tiny_setup, _dist(), fitted, 2.0)
    by_eps = df.set_index("eps")
    assert by_eps.loc[0.5, "predicted_hi"] == 100.0 and by_eps.loc[0.5, "predicted_lo"] == 60.0
    assert by_eps.loc[0.0, "predicted_lo"] == 0.0 and by_eps.loc[0.0, "predicted_hi"] == 20.0
    assert by_eps.loc[0.5, "gap_hi"] == 120.0  # the gap is a difference, not a percentage: not cut
