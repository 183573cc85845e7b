"""The paper's datasets (Table 4): CIFAR, MNIST, SVHN, the fine-grained sets, Indoor67, ImageNet, CINIC.

Each reader takes the dataset's own on-disk format: a pre-staged copy under
`<data_root>/<name>/` first (docs/datasets.md gives every layout), then a copy an
earlier run downloaded, then torchvision's download where one exists and the config
allows it. Small fixed-size datasets load into `Arrays`; the large, variable-size ones
become an `Index` of absolute image paths, so preparing them reads no pixels.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from atlib.data.offline import load_mnist_like
from atlib.data.registry import (
    AcquireContext,
    Arrays,
    DatasetMissing,
    DatasetSpec,
    Index,
    Raw,
    check_paper_sizes,
    get_spec,
    register,
)
from atlib.data.staging import LAYOUT, find_root, how_to_stage

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _torchvision() -> Any:
    from atlib.core.compat import import_torchvision

    return import_torchvision()


# ---------------------------------------------------------------------------------------------
# Shared readers


def _loadmat(path: Path, **kw: Any) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), **kw)
    except Exception as err:  # scipy raises several types for truncated or non-MAT files
        raise ValueError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from None


def _field(mat: dict, key: str, path: Path) -> Any:
    if key not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no field {key!r} (has: {keys}); is this the dataset's original file?")
    return mat[key]


def _read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines (tolerates CRLF and trailing blank lines)."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _pairs(path: Path) -> list[tuple[str, str]]:
    """Lines "<key> <value>", split at the first space (values such as class names may hold spaces)."""
    out = []
    for i, ln in enumerate(_read_lines(path), 1):
        parts = ln.split(" ", 1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected '<id> <value>', got {ln!r}")
        out.append((parts[0], parts[1].strip()))
    return out


def _require_files(name: str, root: Path, paths: list[str], listed_in: str) -> None:
    """Every image an annotation file lists must exist (an incomplete extract is a missing dataset)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetMissing(
            name, [f"{root} ({len(missing)} of {len(paths)} images listed in {listed_in} are missing, "
                   f"e.g. {', '.join(missing[:3])})"], how_to_stage(name, False))


def _index(name: str, root: Path, train: list[tuple[str, int]], test: list[tuple[str, int]],
           classes: list[str], listed_in: str) -> Index:
    """An `Index` of absolute paths, after checking that every file exists."""
    rows = [(os.path.abspath(p), y, s) for s, part in (("train", train), ("test", test)) for p, y in part]
    _require_files(name, root, [r[0] for r in rows], listed_in)
    return Index([r[0] for r in rows], [int(r[1]) for r in rows], [r[2] for r in rows], classes=classes)


def _finish(name: str, ctx: AcquireContext, raw: Raw) -> Raw:
    """Check the class count and label range and, for a full copy, the paper's split sizes."""
    spec = get_spec(name)
    if raw.classes is not None and len(raw.classes) > spec.num_classes:
        raise ValueError(f"dataset {name!r} has {len(raw.classes)} classes; the paper's has {spec.num_classes}")
    if isinstance(raw, Arrays):
        n_train, n_test = len(raw.train_y), len(raw.test_y)
        labels = np.concatenate([raw.train_y, raw.test_y])
    else:
        n_train = sum(s == "train" for s in raw.splits)
        n_test = len(raw.splits) - n_train
        labels = np.asarray(raw.labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"dataset {name!r}: labels (counted from 0) span {labels.min()}..{labels.max()}, "
                         f"outside 0..{spec.num_classes - 1}; is this the original version of its files?")
    if ctx.check_sizes:
        check_paper_sizes(spec, n_train, n_test)
    return raw


def _image_files(d: Path, keep: Callable[[str], bool] = lambda f: True) -> list[str]:
    """Sorted image file paths in one folder."""
    with os.scandir(d) as it:
        names = [e.name for e in it if e.name.lower().endswith(IMAGE_EXTS) and keep(e.name) and e.is_file()]
    return [str(d / n) for n in sorted(names)]


def _class_dirs(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(e.name for e in it if e.is_dir())


def _image_folder(split_dir: Path, classes: list[str], keep: Callable[[str], bool] = lambda f: True,
                  ) -> list[tuple[str, int]]:
    """(path, label) for `<split_dir>/<class>/<image>`, labels in `classes` order; other folders are an error."""
    extra = sorted(set(_class_dirs(split_dir)) - set(classes))
    if extra:
        raise ValueError(f"{split_dir}: class folders {extra[:5]} are not classes of the training split")
    out = []
    for label, c in enumerate(classes):
        if (split_dir / c).is_dir():
            out += [(p, label) for p in _image_files(split_dir / c, keep)]
    return out


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: python pickle batches


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # written by Python 2, like torchvision reads it
    except Exception as err:  # truncated or foreign files raise many types
        raise ValueError(f"{path}: not a CIFAR python batch ({type(err).__name__}: {err})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (a {type(d).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batches(root: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        d = _unpickle(root / f)
        x = np.asarray(_field(d, "data", root / f), dtype=np.uint8)
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes
        ys.append(np.asarray(_field(d, label_key, root / f), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar(ctx: AcquireContext, name: str, folder: str, train: list[str], test: list[str], meta: str,
           label_key: str, names_key: str, tv_class: str) -> Arrays:
    def download(target: Path) -> None:
        getattr(_torchvision().datasets, tv_class)(str(target), train=True, download=True)

    root = find_root(ctx, name, train + test + [meta], ("", folder), download)
    xtr, ytr = _cifar_batches(root, train, label_key)
    xte, yte = _cifar_batches(root, test, label_key)
    classes = [str(c) for c in _field(_unpickle(root / meta), names_key, root / meta)]
    return _finish(name, ctx, Arrays(xtr, ytr, xte, yte, classes=classes))


def _cifar10(ctx: AcquireContext) -> Arrays:
    return _cifar(ctx, "cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  ["test_batch"], "batches.meta", "labels", "label_names", "CIFAR10")


def _cifar100(ctx: AcquireContext) -> Arrays:
    return _cifar(ctx, "cifar100", "cifar-100-python", ["train"], ["test"], "meta",
                  "fine_labels", "fine_label_names", "CIFAR100")


# ---------------------------------------------------------------------------------------------
# MNIST (IDX) and SVHN (.mat arrays)


def _mnist(ctx: AcquireContext) -> Arrays:
    raw = load_mnist_like(ctx, "mnist", None, "MNIST", how_to_stage("mnist", True))
    raw.classes = [str(i) for i in range(10)]
    return _finish("mnist", ctx, raw)


def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    mat = _loadmat(path)
    x = np.asarray(_field(mat, "X", path))
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N)")
    y = np.asarray(_field(mat, "y", path)).astype(np.int64).ravel()
    y[y == 10] = 0  # SVHN labels the digit 0 as 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)).astype(np.uint8), y


def _svhn(ctx: AcquireContext) -> Arrays:
    def download(target: Path) -> None:
        tv = _torchvision()
        for split in ("train", "test"):
            tv.datasets.SVHN(str(target), split=split, download=True)

    root = find_root(ctx, "svhn", ["train_32x32.mat", "test_32x32.mat"], ("",), download)
    xtr, ytr = _svhn_split(root / "train_32x32.mat")
    xte, yte = _svhn_split(root / "test_32x32.mat")
    return _finish("svhn", ctx, Arrays(xtr, ytr, xte, yte, classes=[str(i) for i in range(10)]))


# ---------------------------------------------------------------------------------------------
# Fine-grained datasets: file indexes


def _flowers(ctx: AcquireContext) -> Index:
    def download(target: Path) -> None:
        _torchvision().datasets.Flowers102(str(target), split="train", download=True)

    root = find_root(ctx, "flowers", ["jpg", "imagelabels.mat", "setid.mat"], ("", "flowers-102"), download)
    labels = np.asarray(_field(_loadmat(root / "imagelabels.mat", squeeze_me=True), "labels",
                               root / "imagelabels.mat")).astype(np.int64).ravel()
    sets = _loadmat(root / "setid.mat", squeeze_me=True)

    def rows(keys: list[str]) -> list[tuple[str, int]]:
        ids = np.concatenate([np.atleast_1d(_field(sets, k, root / "setid.mat")) for k in keys]).astype(np.int64)
        if ids.min() < 1 or ids.max() > len(labels):
            raise ValueError(f"{root / 'setid.mat'}: image ids outside 1..{len(labels)} of imagelabels.mat")
        return [(str(root / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in sorted(ids)]

    # The paper's 2,040 training images are the official train and validation sets together.
    return _finish("flowers", ctx, _index("flowers", root, rows(["trnid", "valid"]), rows(["tstid"]),
                                          [str(i) for i in range(1, 103)], "setid.mat"))


def _aircraft(ctx: AcquireContext) -> Index:
    def download(target: Path) -> None:
        _torchvision().datasets.FGVCAircraft(str(target), split="trainval", annotation_level="variant",
                                             download=True)

    files = ["variants.txt", "images_variant_trainval.txt", "images_variant_test.txt", "images"]
    root = find_root(ctx, "aircraft", [f"data/{f}" for f in files], ("", "fgvc-aircraft-2013b"), download)
    data = root / "data"
    classes = _read_lines(data / "variants.txt")
    to_label = {c: i for i, c in enumerate(classes)}

    def rows(split: str) -> list[tuple[str, int]]:
        path = data / f"images_variant_{split}.txt"
        out = []
        for image_id, variant in _pairs(path):
            if variant not in to_label:
                raise ValueError(f"{path}: variant {variant!r} is not in variants.txt")
            out.append((str(data / "images" / f"{image_id}.jpg"), to_label[variant]))
        return out

    return _finish("aircraft", ctx, _index("aircraft", root, rows("trainval"), rows("test"), classes,
                                           "images_variant_*.txt"))


def _cars_annos(path: Path, image_dir: Path) -> list[tuple[str, int]]:
    annos = np.atleast_1d(_field(_loadmat(path, squeeze_me=True), "annotations", path))
    names = annos.dtype.names or ()
    for key in ("fname", "class"):
        if key not in names:
            raise ValueError(f"{path}: annotations have no {key!r} field (has {names}); "
                             "the test annotations must be cars_test_annos_withlabels.mat")
    return [(str(image_dir / str(a["fname"])), int(a["class"]) - 1) for a in annos]


def _cars(ctx: AcquireContext) -> Index:
    test_annos = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
    required = ["cars_train", "cars_test", "devkit/cars_train_annos.mat", "devkit/cars_meta.mat", test_annos]
    root = find_root(ctx, "cars", required, ("", "stanford_cars"))  # torchvision's download URL is dead
    test_path = next(root / p for p in test_annos if (root / p).exists())
    meta = root / "devkit" / "cars_meta.mat"
    classes = [str(c) for c in np.atleast_1d(_field(_loadmat(meta, squeeze_me=True), "class_names", meta))]
    train = _cars_annos(root / "devkit" / "cars_train_annos.mat", root / "cars_train")
    test = _cars_annos(test_path, root / "cars_test")
    return _finish("cars", ctx, _index("cars", root, train, test, classes, "the annotation .mat files"))


def _birds(ctx: AcquireContext) -> Index:
    files = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
    root = find_root(ctx, "birds", files + ["images"], ("", "CUB_200_2011"))
    paths = dict(_pairs(root / "images.txt"))
    labels = dict(_pairs(root / "image_class_labels.txt"))
    is_train = dict(_pairs(root / "train_test_split.txt"))
    classes = [c for _, c in sorted(_pairs(root / "classes.txt"), key=lambda p: int(p[0]))]
    rows: dict[str, list[tuple[str, int]]] = {"1": [], "0": []}
    for image_id, rel in sorted(paths.items(), key=lambda p: int(p[0])):
        if image_id not in labels or is_train.get(image_id) not in rows:
            raise ValueError(f"{root}: image id {image_id} lacks a label or a train/test flag")
        rows[is_train[image_id]].append((str(root / "images" / rel), int(labels[image_id]) - 1))
    return _finish("birds", ctx, _index("birds", root, rows["1"], rows["0"], classes, "images.txt"))


def _dogs_list(path: Path, images: Path) -> list[tuple[str, int, str]]:
    mat = _loadmat(path, squeeze_me=True)
    files = [str(f) for f in np.atleast_1d(_field(mat, "file_list", path))]
    labels = np.atleast_1d(_field(mat, "labels", path)).astype(np.int64)
    if len(files) != len(labels):
        raise ValueError(f"{path}: {len(files)} files but {len(labels)} labels")
    return [(str(images / f), int(y) - 1, f.split("/")[0]) for f, y in zip(files, labels)]


def _dogs(ctx: AcquireContext) -> Index:
    root = find_root(ctx, "dogs", ["Images", "train_list.mat", "test_list.mat"])
    train = _dogs_list(root / "train_list.mat", root / "Images")
    test = _dogs_list(root / "test_list.mat", root / "Images")
    # Class names are the folder (<wnid>-<breed>) of each label's images.
    names = {y: d for _, y, d in train + test}
    classes = [names.get(i, str(i + 1)) for i in range(max(names) + 1)]
    return _finish("dogs", ctx, _index("dogs", root, [r[:2] for r in train], [r[:2] for r in test], classes,
                                       "train_list.mat/test_list.mat"))


def _indoor67(ctx: AcquireContext) -> Index:
    root = find_root(ctx, "indoor67", ["Images", "TrainImages.txt", "TestImages.txt"], ("", "indoorCVPR_09"))
    lists = {s: _read_lines(root / f"{s}Images.txt") for s in ("Train", "Test")}
    classes = sorted({rel.split("/")[0] for rel in lists["Train"] + lists["Test"]})
    to_label = {c: i for i, c in enumerate(classes)}

    def rows(split: str) -> list[tuple[str, int]]:
        return [(str(root / "Images" / rel), to_label[rel.split("/")[0]]) for rel in lists[split]]

    return _finish("indoor67", ctx, _index("indoor67", root, rows("Train"), rows("Test"), classes,
                                           "TrainImages.txt/TestImages.txt"))


# ---------------------------------------------------------------------------------------------
# Class-folder datasets: ImageNet, CINIC-10's ImageNet part


def _imagenet(ctx: AcquireContext) -> Index:
    root = find_root(ctx, "imagenet", ["train", "val"])
    classes = _class_dirs(root / "train")  # sorted wnids: the usual ImageFolder label order
    train = _image_folder(root / "train", classes)
    test = _image_folder(root / "val", classes)
    return _finish("imagenet", ctx, Index(
        [os.path.abspath(p) for p, _ in train + test], [y for _, y in train + test],
        ["train"] * len(train) + ["test"] * len(test), classes=classes))


def _decode_png32(paths: list[str]) -> np.ndarray:
    from PIL import Image
    from tqdm import tqdm

    out = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc="decode CINIC-10", unit="img", leave=False, mininterval=5)):
        with Image.open(p) as im:
            if im.size != (32, 32):
                raise ValueError(f"{p}: {im.size[0]}x{im.size[1]} image, CINIC-10 images are 32x32")
            out[i] = np.asarray(im.convert("RGB"))
    return out


def _cinic_imagenet(ctx: AcquireContext) -> Arrays:
    root = find_root(ctx, "cinic_imagenet", ["train", "valid", "test"], ("", "CINIC-10"))

    def from_imagenet(fname: str) -> bool:  # CINIC's CIFAR-10 images are named cifar10-<split>-<n>.png
        return not fname.startswith("cifar10-")

    parts = {}
    for split, dirs in (("train", ["train", "valid"]), ("test", ["test"])):
        rows = [r for d in dirs for r in _image_folder(root / d, CIFAR10_CLASSES, from_imagenet)]
        parts[split] = (_decode_png32([p for p, _ in rows]), np.asarray([y for _, y in rows], dtype=np.int64))
    return _finish("cinic_imagenet", ctx, Arrays(*parts["train"], *parts["test"], classes=list(CIFAR10_CLASSES)))


# ---------------------------------------------------------------------------------------------
# Registry entries: (name, classes, stored image size, channels, loader, Table 4 train/test sizes)

for _name, _k, _size, _ch, _load, _sizes in [
    ("cifar10", 10, 32, 3, _cifar10, (50000, 10000)),
    ("cifar100", 100, 32, 3, _cifar100, (50000, 10000)),
    ("mnist", 10, 28, 1, _mnist, (60000, 10000)),
    ("svhn", 10, 32, 3, _svhn, (73257, 26032)),
    ("flowers", 102, 224, 3, _flowers, (2040, 6149)),
    ("aircraft", 100, 224, 3, _aircraft, (6667, 3333)),
    ("cars", 196, 224, 3, _cars, (8144, 8041)),
    ("birds", 200, 224, 3, _birds, (5994, 5794)),
    ("dogs", 120, 224, 3, _dogs, (12000, 8580)),
    ("indoor67", 67, 224, 3, _indoor67, (5360, 1340)),
    ("imagenet", 1000, 224, 3, _imagenet, (1281167, 50000)),
    ("cinic_imagenet", 10, 32, 3, _cinic_imagenet, None),
]:
    register(DatasetSpec(_name, _k, _size, _ch, LAYOUT[_name], _load, paper_sizes=_sizes))
