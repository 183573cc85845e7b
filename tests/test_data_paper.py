"""The paper's datasets read from tiny copies in their real on-disk formats (see fixtures_data.py)."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures_data import WRITERS, write_birds, write_cifar10, write_flowers, write_svhn
from scipy.io import loadmat

import atlib
from atlib.data import REGISTRY, AcquireContext, DatasetMissing, Prepared, get_spec, prepare
from atlib.data.registry import check_paper_sizes
from atlib.data.tensors import split_dataset, split_tensors

# The brief's table: classes, stored image size, channels, Table 4 (train, test).
TABLE = {
    "cifar10": (10, 32, 3, (50000, 10000)), "cifar100": (100, 32, 3, (50000, 10000)),
    "mnist": (10, 28, 1, (60000, 10000)), "svhn": (10, 32, 3, (73257, 26032)),
    "flowers": (102, 224, 3, (2040, 6149)), "aircraft": (100, 224, 3, (6667, 3333)),
    "cars": (196, 224, 3, (8144, 8041)), "birds": (200, 224, 3, (5994, 5794)),
    "dogs": (120, 224, 3, (12000, 8580)), "indoor67": (67, 224, 3, (5360, 1340)),
    "imagenet": (1000, 224, 3, (1281167, 50000)), "cinic_imagenet": (10, 32, 3, None),
}
ARRAYS = {"cifar10", "cifar100", "mnist", "svhn", "cinic_imagenet"}  # small, fixed size: loaded in memory


def small(root: Path, **kw) -> AcquireContext:
    return AcquireContext(root, check_sizes=False, **kw)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_reads_real_format(tmp_path, name):
    train_counts, test_counts = WRITERS[name](tmp_path / "data")
    spec = get_spec(name)
    meta = prepare(name, tmp_path / "out", small(tmp_path / "data"))
    p = Prepared(tmp_path / "out")
    assert (p.num_classes, p.channels) == (spec.num_classes, spec.channels)
    assert meta["format"] == ("arrays" if name in ARRAYS else "index")
    if name not in ARRAYS:
        assert p.image_size == spec.image_size
        with open(tmp_path / "out" / "index.csv", newline="") as f:
            paths = [r["path"] for r in csv.DictReader(f)]
        assert all(os.path.isabs(q) and os.path.isfile(q) for q in paths)
    for split, counts in (("train", train_counts), ("test", test_counts)):
        expected = [counts.get(c, 0) for c in range(spec.num_classes)]
        assert meta["splits"][split] == sum(counts.values())
        assert meta["class_counts"][split] == expected
        x, y = split_tensors(p, split, 32, 3)
        assert x.shape == (sum(counts.values()), 3, 32, 32) and 0 <= x.min() and x.max() <= 1
        assert np.bincount(y.numpy(), minlength=spec.num_classes).tolist() == expected
    image, label = split_dataset(p, "train", 32, 3)[0]
    assert image.shape == (3, 32, 32) and 0 <= label < spec.num_classes


def test_pixels_and_class_names(tmp_path):
    root = tmp_path / "data"
    for name in ("cifar10", "svhn", "aircraft", "cars", "dogs", "birds"):
        WRITERS[name](root)
    ctx = small(root)
    cifar = get_spec("cifar10").load(ctx)
    with open(root / "cifar10" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f)["data"][0]
    assert np.array_equal(cifar.train_x[0], row.reshape(3, 32, 32).transpose(1, 2, 0))  # HWC from RGB planes
    assert cifar.classes[9] == "truck"
    svhn = get_spec("svhn").load(ctx)
    mat = loadmat(root / "svhn" / "train_32x32.mat")
    assert np.array_equal(svhn.train_x[1], mat["X"][..., 1]) and svhn.train_y[0] == 0  # label 10 is digit 0
    assert get_spec("aircraft").load(ctx).classes == ["707-320", "F/A-18", "Falcon 2000"]
    cars = get_spec("cars").load(ctx)
    assert len(cars.classes) == 196 and cars.classes[0] == "Make Model 1 2012"
    dogs = get_spec("dogs").load(ctx)
    assert dogs.classes[0] == "n02085620-Chihuahua" and dogs.classes[119] == "n02116738-African_hunting_dog"
    birds = get_spec("birds").load(ctx)
    assert len(birds.classes) == 200 and birds.classes[199] == "200.Common_Yellowthroat"


def test_cinic_keeps_only_imagenet_images(tmp_path):
    write = WRITERS["cinic_imagenet"]
    write(tmp_path)
    raw = get_spec("cinic_imagenet").load(small(tmp_path))
    assert len(raw.train_y) == 3 and len(raw.test_y) == 2  # each split also holds as many cifar10-* files
    assert raw.train_x.shape[1:] == (32, 32, 3) and raw.classes[1] == "automobile"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_dataset_names_places_and_fix(tmp_path, name):
    with pytest.raises(DatasetMissing) as err:
        get_spec(name).load(small(tmp_path / "empty"))
    msg = str(err.value)
    assert repr(name) in msg and str(tmp_path / "empty" / name) in msg and "docs/datasets.md" in msg
    assert "allow_download" in msg


def test_partial_copy_names_missing_file(tmp_path):
    write_birds(tmp_path)
    (tmp_path / "birds" / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DatasetMissing, match="missing: train_test_split.txt"):
        get_spec("birds").load(small(tmp_path))
    write_flowers(tmp_path)
    (tmp_path / "flowers" / "flowers-102" / "jpg" / "image_00003.jpg").unlink()
    with pytest.raises(DatasetMissing, match="1 of 8 images .*image_00003.jpg"):
        get_spec("flowers").load(small(tmp_path))


def test_corrupt_or_foreign_files_raise_value_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ValueError, match="test_batch: not a CIFAR python batch"):
        get_spec("cifar10").load(small(tmp_path))
    WRITERS["aircraft"](tmp_path)
    test_list = tmp_path / "aircraft" / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    test_list.write_text(test_list.read_text().replace("F/A-18", "Boeing 999"))
    with pytest.raises(ValueError, match="'Boeing 999' is not in variants.txt"):
        get_spec("aircraft").load(small(tmp_path))


def fake_torchvision(**classes):
    return lambda: SimpleNamespace(datasets=SimpleNamespace(**classes))


def test_download_failure_is_one_message(tmp_path, monkeypatch):
    def offline(*args, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setattr("atlib.data.paper._torchvision", fake_torchvision(SVHN=offline))
    with pytest.raises(DatasetMissing, match="download into .* failed: OSError: network is unreachable"):
        get_spec("svhn").load(small(tmp_path, allow_download=True))


def test_earlier_download_is_reused_without_downloading(tmp_path, monkeypatch):
    def must_not_run(*args, **kw):
        raise AssertionError("downloaded again")

    monkeypatch.setattr("atlib.data.paper._torchvision", fake_torchvision(SVHN=must_not_run))
    ctx = small(tmp_path, allow_download=True)
    write_svhn(tmp_path, d=ctx.download_root("svhn"))
    assert len(get_spec("svhn").load(ctx).train_y) == 4


def test_paper_sizes_are_checked(tmp_path):
    write_svhn(tmp_path)
    with pytest.raises(ValueError, match="Table 4"):  # check_sizes defaults to True: a full copy is expected
        get_spec("svhn").load(AcquireContext(tmp_path))
    check_paper_sizes(get_spec("svhn"), 73257, 26032)
    with pytest.raises(ValueError, match="73257 / 26032"):
        check_paper_sizes(get_spec("svhn"), 73257, 26031)
    check_paper_sizes(get_spec("cinic_imagenet"), 1, 1)  # not in Table 4: nothing to check


def test_registry_matches_paper_table():
    with open(Path(atlib.__file__).parent / "reference" / "datasets.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["name"] for r in rows} <= set(REGISTRY)
    for r in rows:
        spec = REGISTRY[r["name"]]
        assert spec.num_classes == int(r["classes"]), r["name"]
        assert spec.paper_sizes == (int(r["train_size"]), int(r["test_size"])), r["name"]
    for name, (k, size, ch, sizes) in TABLE.items():
        spec = REGISTRY[name]
        assert (spec.num_classes, spec.image_size, spec.channels, spec.paper_sizes) == (k, size, ch, sizes)
