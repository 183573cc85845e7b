"""Offline datasets, the prepared format, derived datasets and the missing-data message."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atlib.data import AcquireContext, DatasetMissing, Prepared, adapt, prepare
from atlib.data.derived import apply_transform
from atlib.data.offline import IDX_FILES, SYSTEM_FASHION, read_idx
from atlib.data.store import sha256
from atlib.data.tensors import split_tensors


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = (0x08 << 8 | arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_fashion_fixture(d: Path, n_train: int = 20, n_test: int = 10) -> None:
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(d / f"{IDX_FILES[split + '_x']}.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(d / f"{IDX_FILES[split + '_y']}.gz", np.arange(n) % 10)


def test_idx_roundtrip_and_truncation(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())[:-3]
    (tmp_path / "b").write_bytes(raw)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b")


def test_fashion_from_staged_dir_checks_paper_size(tmp_path):
    write_fashion_fixture(tmp_path / "fashion_mnist")
    ctx = AcquireContext(tmp_path)
    # A staged copy that is not the full dataset is refused against the paper's Table 4 ...
    with pytest.raises(ValueError, match="Table 4"):
        prepare("fashion_mnist", tmp_path / "out", ctx)


@pytest.mark.skipif(not SYSTEM_FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_from_debian_package(tmp_path):
    meta = prepare("fashion_mnist", tmp_path / "fm", AcquireContext(tmp_path / "nothing"))
    assert meta["splits"] == {"train": 60000, "test": 10000}
    assert meta["class_counts"]["test"] == [1000] * 10


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setattr("atlib.data.offline.SYSTEM_FASHION", tmp_path / "no_system")
    with pytest.raises(DatasetMissing) as err:
        prepare("fashion_mnist", tmp_path / "out", AcquireContext(tmp_path / "root"))
    msg = str(err.value)
    assert "'fashion_mnist' not found" in msg and str(tmp_path / "root" / "fashion_mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "allow_download" in msg


@pytest.mark.parametrize("name,train,test,size,k", [
    ("digits", 1297, 500, 8, 10), ("mnist5k", 3000, 2000, 28, 10), ("textures", 2000, 500, 28, 5),
    ("photos", 2400, 600, 28, 6), ("letters", 3000, 1000, 28, 10), ("shapes", 1800, 600, 28, 6)])
def test_offline_datasets(tmp_path, name, train, test, size, k):
    meta = prepare(name, tmp_path / name, AcquireContext(tmp_path))
    assert meta["splits"] == {"train": train, "test": test}
    assert meta["image_size"] == size and meta["channels"] == 1 and meta["num_classes"] == k
    assert all(c > 0 for c in meta["class_counts"]["test"])
    assert meta["sha256"]["images.npy"] == sha256(tmp_path / name / "images.npy")
    x, y = split_tensors(Prepared(tmp_path / name), "test", image_size=32, channels=3)
    assert x.shape == (test, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and y.max() == k - 1


def test_textures_train_and_test_do_not_overlap():
    from atlib.data.offline import TEXTURES, photo_crops

    a = photo_crops(TEXTURES, n_train=50, n_test=50)
    train = {r.tobytes() for r in a.train_x}
    assert not any(r.tobytes() in train for r in a.test_x)


def arrays_sha256(a) -> str:
    """One sha256 over a dataset's four arrays (bytes, in split order)."""
    h = hashlib.sha256()
    for arr in (a.train_x, a.train_y, a.test_x, a.test_y):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def test_textures_arrays_pinned():
    """photo_crops generalised texture_crops: textures (and the texture transform) must not change."""
    from atlib.data.offline import TEXTURES, photo_crops

    a = photo_crops(TEXTURES)
    assert a.train_x.shape == (2000, 28, 28) and a.test_x.shape == (500, 28, 28)
    # Computed with texture_crops() before it became photo_crops (scikit-image 0.26).
    assert arrays_sha256(a) == "dcacaf39e57db8bd8e4e8138dea30c8970f0efbd0825e7d9ad122a129b493554"


def nearest_mean_accuracy(a) -> float:
    """Test accuracy of the nearest class mean (raw pixels, train means): a floor any real set should pass."""
    xtr, xte = (x.reshape(len(x), -1).astype(np.float64) for x in (a.train_x, a.test_x))
    means = np.stack([xtr[a.train_y == c].mean(0) for c in range(int(a.train_y.max()) + 1)])
    dist = (xte ** 2).sum(1)[:, None] - 2 * xte @ means.T + (means ** 2).sum(1)[None]
    return float((dist.argmin(1) == a.test_y).mean())


@pytest.mark.parametrize("name,per_train,per_test,k", [("photos", 400, 100, 6), ("letters", 300, 100, 10),
                                                       ("shapes", 300, 100, 6)])
def test_new_offline_sets_balanced_disjoint_learnable(tmp_path, name, per_train, per_test, k):
    from atlib.data import get_spec

    a = get_spec(name).load(AcquireContext(tmp_path))
    assert a.train_x.shape == (per_train * k, 28, 28) and a.test_x.shape == (per_test * k, 28, 28)
    assert a.train_x.dtype == a.test_x.dtype == np.uint8 and a.train_y.dtype == a.test_y.dtype == np.int64
    assert np.bincount(a.train_y).tolist() == [per_train] * k and np.bincount(a.test_y).tolist() == [per_test] * k
    assert len(a.classes) == k
    train = {r.tobytes() for r in a.train_x}
    assert not any(r.tobytes() in train for r in a.test_x)  # no test image is a training image
    # Classes are told apart from raw pixels well above chance (measured: photos .44, letters .59, shapes .32).
    assert nearest_mean_accuracy(a) > 1.5 / k


@pytest.mark.parametrize("make", ["letter_images", "shape_images"])
def test_rendered_sets_deterministic(make):
    import atlib.data.rendered as rendered

    a, b = (getattr(rendered, make)(n_train=20, n_test=10) for _ in range(2))
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert not np.array_equal(getattr(rendered, make)(n_train=20, n_test=10, seed=1).train_x, a.train_x)


def test_letter_fonts_exist_and_split():
    from atlib.data.rendered import LETTERS, TEST_FONTS, TRAIN_FONTS, font_dir, glyph

    assert set(TRAIN_FONTS).isdisjoint(TEST_FONTS)
    for font in TRAIN_FONTS + TEST_FONTS:
        inks = [np.asarray(glyph(font_dir() / font, c, px=32)) for c in LETTERS]
        assert len({(i.shape, i.tobytes()) for i in inks}) == len(LETTERS), font  # ten different glyphs


def test_photos_offline_deterministic_and_not_textures(monkeypatch):
    import socket

    from atlib.data.offline import PHOTOS, TEXTURES, photo_crops

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert not set(PHOTOS) & set(TEXTURES)
    a, b = (photo_crops(PHOTOS, n_train=5, n_test=5) for _ in range(2))  # a photo fetched through pooch fails here
    assert a.classes == PHOTOS and len(a.test_y) == 5 * len(PHOTOS)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_x, b.test_x)


def test_preparing_offline_data_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from atlib.data import AcquireContext, prepare; "
            "heavy = [m for m in ('PIL', 'matplotlib', 'skimage', 'sklearn', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy; "
            f"prepare('shapes', Path({str(tmp_path / 'shapes')!r}), AcquireContext(Path({str(tmp_path)!r}))); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_derived_subset_relabels_in_given_order(tmp_path, tiny_prepared):
    meta = prepare("sub", tmp_path / "sub", AcquireContext(tmp_path),
                   derived={"base": "tiny", "classes": [2, 0], "max_train": 10}, base_dir=tiny_prepared)
    assert meta["num_classes"] == 2 and meta["splits"]["train"] == 10 and meta["classes"] == ["c", "a"]
    base_x, base_y = Prepared(tiny_prepared).arrays("test")
    x, y = Prepared(tmp_path / "sub").arrays("test")
    assert np.array_equal(x[y == 0], base_x[base_y == 2])  # class 2 became label 0


@pytest.mark.parametrize("kind,strength", [("invert", 1), ("rot90", 1), ("blur", 1.0), ("texture", 0.6),
                                           ("rotate", 30), ("invert_mix", 0.3)])
def test_transforms_change_images_and_keep_dtype(kind, strength):
    x = np.random.default_rng(0).integers(0, 80, (4, 28, 28, 1)).astype(np.uint8)
    out = apply_transform(x, kind, strength, seed=0)
    assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(out, x)
    assert np.array_equal(apply_transform(x, kind, strength, seed=0), out)  # deterministic


def test_invert_mix_values():
    x = np.array([0, 10, 100, 200, 255], np.uint8).reshape(1, 5, 1, 1)
    assert np.abs(apply_transform(x, "invert_mix", 0.5, 0).astype(float) - 127.5).max() <= 0.5  # all grey
    assert np.array_equal(apply_transform(x, "invert_mix", 1.0, 0), 255 - x)  # full inversion
    assert np.array_equal(apply_transform(x, "invert_mix", 0.0, 0), x)
    assert apply_transform(x, "invert_mix", 0.25, 0).ravel().tolist() == [64, 69, 114, 164, 191]  # 0.75x + 0.25(255-x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_transform(x, "invert_mix", 1.5, 0)


@pytest.mark.parametrize("size", [9, 28])
def test_rotate_90_equals_rot90(size):
    x = np.random.default_rng(1).integers(0, 256, (3, size, size, 1)).astype(np.uint8)
    assert np.array_equal(apply_transform(x, "rotate", 90, 0), apply_transform(x, "rot90", 1, 0))
    assert np.array_equal(apply_transform(x, "rotate", 0, 0), x)
    # 45 degrees: the corners rotate out of the image and are filled with 0.
    r = apply_transform(np.full((1, size, size, 1), 200, np.uint8), "rotate", 45, 0)
    assert r[0, 0, 0, 0] == 0 and r[0, size // 2, size // 2, 0] == 200


def test_blur_smooths_more_with_larger_sigma():
    x = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)

    def variation(a: np.ndarray) -> float:  # total variation: sum of neighbour differences
        a = a.astype(float)
        return float(np.abs(np.diff(a, axis=1)).sum() + np.abs(np.diff(a, axis=2)).sum())

    tv = [variation(apply_transform(x, "blur", s, 0)) for s in (0.5, 1.0, 2.0, 4.0)]
    assert variation(x) > tv[0] and all(a > b for a, b in zip(tv, tv[1:])), tv


def test_ladder_level_prepares_from_digits(tmp_path):
    from atlib.spec.config import check_config
    from atlib.spec.grid import ladder_levels

    cfg = check_config({"ladders": {"drot": {"base": "digits", "transform": "rotate", "strengths": [10, 45, 90],
                                             "classes": [3, 1], "max_train": 40, "max_test": 20}},
                        "experiments": {"e": {"source": "digits", "arch": "resnet8", "eps": [0], "ladders": ["drot"]}}},
                       {"digits"})
    (name, strength), = [lv for lv in ladder_levels(cfg)["drot"] if lv[0] == "drot_3"]
    base = tmp_path / "digits"
    prepare("digits", base, AcquireContext(tmp_path))
    meta = prepare(name, tmp_path / name, AcquireContext(tmp_path), derived=cfg["datasets"][name], base_dir=base)
    assert strength == 90 and meta["num_classes"] == 2 and meta["splits"] == {"train": 40, "test": 20}
    x, y = Prepared(tmp_path / name).arrays("test")
    bx, by = Prepared(base).arrays("test")
    # Every level-3 image is a base image of its class (3 -> label 0, 1 -> label 1) turned by 90 degrees.
    base_of = {lab: {im.tobytes() for im in bx[by == c]} for lab, c in enumerate([3, 1])}
    assert all(np.ascontiguousarray(np.rot90(im, -1)).tobytes() in base_of[lab] for im, lab in zip(x, y))


def test_adapt_resizes_and_refuses_rgb_to_gray():
    x = torch.rand(2, 1, 8, 8)
    assert adapt(x, 28, 3).shape == (2, 3, 28, 28)
    with pytest.raises(ValueError, match="3-channel images to a 1-channel model"):
        adapt(torch.rand(2, 3, 8, 8), 8, 1)


def test_empty_split_refused(tmp_path):
    from atlib.data import Arrays, write_prepared

    x = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="test split is empty"):
        write_prepared(Arrays(x, np.zeros(4, np.int64), x[:0], np.zeros(0, np.int64)), tmp_path, "e", 2, 8, 1, "t")


def test_meta_json_fields(tiny_prepared):
    meta = json.loads((tiny_prepared / "meta.json").read_text())
    assert {"name", "num_classes", "image_size", "channels", "splits", "class_counts", "sha256", "source"} <= set(meta)
