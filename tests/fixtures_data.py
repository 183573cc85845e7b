"""Tiny copies of the paper's datasets, written in each dataset's real on-disk format.

Every writer takes a data root, stages its dataset under `<root>/<name>/` exactly as the
dataset ships (pickle batches, IDX, MATLAB files, JPEG/PNG images, text lists) and returns
the expected per-split class counts {label: count}, so a test can compare the prepared copy.
"""

from __future__ import annotations

import gzip
import pickle
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.io import savemat

Counts = tuple[dict[int, int], dict[int, int]]  # train, test: label -> number of images
RNG = np.random.default_rng(0)


def _image(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> None:
    """A random image (w, h); fine-grained datasets have variable sizes, so callers vary them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(RNG.integers(0, 255, shape, dtype=np.uint8)).save(path)  # 2-D: "L", 3-D: "RGB"


def _counts(train: list[int], test: list[int]) -> Counts:
    return dict(Counter(train)), dict(Counter(test))


def _cell(strings: list[str]) -> np.ndarray:
    """A MATLAB N x 1 cell array of strings."""
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = s
    return out


def write_cifar10(root: Path) -> Counts:
    """cifar-10-batches-py/ inside <root>/cifar10/: five train batches, a test batch, batches.meta."""
    d = root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    train, test = [0, 9, 3, 0, 9], [3, 9]
    for i, y in enumerate(train, 1):  # one image per training batch
        batch = {"batch_label": f"training batch {i} of 5", "labels": [y],
                 "data": RNG.integers(0, 255, (1, 3072), dtype=np.uint8), "filenames": [f"img{i}.png"]}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    batch = {"batch_label": "testing batch 1 of 1", "labels": test,
             "data": RNG.integers(0, 255, (len(test), 3072), dtype=np.uint8), "filenames": ["a.png", "b.png"]}
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_cases_per_batch": 10000,
                                                   "num_vis": 3072}, protocol=2))
    return _counts(train, test)


def write_cifar100(root: Path) -> Counts:
    """The extracted cifar-100-python/ folder itself as <root>/cifar100/ (train, test, meta)."""
    d = root / "cifar100"
    d.mkdir(parents=True)
    train, test = [0, 50, 99, 0, 50, 99], [99, 0]
    for name, ys in (("train", train), ("test", test)):
        batch = {"filenames": [f"{i}.png" for i in range(len(ys))], "batch_label": name, "fine_labels": ys,
                 "coarse_labels": [y // 5 for y in ys], "data": RNG.integers(0, 255, (len(ys), 3072), dtype=np.uint8)}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return _counts(train, test)


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = (0x08 << 8 | arr.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root: Path) -> Counts:
    """The four IDX files in <root>/mnist/raw/ (torchvision's layout), images gzipped, labels plain."""
    d = root / "mnist" / "raw"
    d.mkdir(parents=True)
    train, test = [5, 0, 4, 1, 9, 2], [7, 2, 1]
    for prefix, ys in (("train", train), ("t10k", test)):
        _idx(d / f"{prefix}-images-idx3-ubyte", RNG.integers(0, 255, (len(ys), 28, 28)), gz=True)
        _idx(d / f"{prefix}-labels-idx1-ubyte", np.asarray(ys), gz=False)
    return _counts(train, test)


def write_svhn(root: Path, d: Path | None = None) -> Counts:
    """train_32x32.mat / test_32x32.mat: X is 32x32x3xN, y is Nx1 with 10 standing for the digit 0."""
    d = d or root / "svhn"
    d.mkdir(parents=True)
    train, test = [10, 1, 9, 10], [3, 10]
    for split, ys in (("train", train), ("test", test)):
        x = RNG.integers(0, 255, (32, 32, 3, len(ys)), dtype=np.uint8)
        savemat(d / f"{split}_32x32.mat", {"X": x, "y": np.asarray(ys, np.uint8).reshape(-1, 1)})
    return _counts([y % 10 for y in train], [y % 10 for y in test])


def write_flowers(root: Path) -> Counts:
    """<root>/flowers/flowers-102/: jpg/image_XXXXX.jpg, imagelabels.mat (1..102), setid.mat."""
    d = root / "flowers" / "flowers-102"
    labels = [1, 1, 50, 50, 102, 102, 1, 50]
    for i in range(1, len(labels) + 1):
        _image(d / "jpg" / f"image_{i:05d}.jpg", (30 + 3 * i, 25 + i))
    savemat(d / "imagelabels.mat", {"labels": np.asarray([labels], np.uint8)})
    trnid, valid, tstid = [1, 3], [5, 8], [2, 4, 6, 7]
    savemat(d / "setid.mat", {k: np.asarray([v], np.uint16) for k, v in
                              (("trnid", trnid), ("valid", valid), ("tstid", tstid))})
    return _counts([labels[i - 1] - 1 for i in trnid + valid], [labels[i - 1] - 1 for i in tstid])


def write_aircraft(root: Path) -> Counts:
    """<root>/aircraft/fgvc-aircraft-2013b/data/: images/<id>.jpg, variants.txt, images_variant_*.txt."""
    d = root / "aircraft" / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "F/A-18", "Falcon 2000"]  # real names hold slashes and spaces
    d.mkdir(parents=True)
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    split = {"trainval": [0, 1, 2, 2], "test": [1, 2]}
    n = 0
    for name, ys in split.items():
        lines = []
        for y in ys:
            n += 1
            image_id = f"{1025794 + n:07d}"
            _image(d / "images" / f"{image_id}.jpg", (50, 40 + n))
            lines.append(f"{image_id} {variants[y]}")
        (d / f"images_variant_{name}.txt").write_text("\n".join(lines) + "\n")
    return _counts(split["trainval"], split["test"])


def _cars_annos(path: Path, fnames: list[str], classes: list[int]) -> None:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    annos = np.zeros((1, len(fnames)), dtype=[(f, "O") for f in fields])
    for i, (f, c) in enumerate(zip(fnames, classes)):
        for b in fields[:4]:
            annos[0, i][b] = np.array([[10]], np.uint16)
        annos[0, i]["class"] = np.array([[c]], np.uint8)
        annos[0, i]["fname"] = np.array([f])
    savemat(path, {"annotations": annos})


def write_cars(root: Path) -> Counts:
    """<root>/cars/: cars_train/, cars_test/, devkit/{cars_train_annos,cars_meta}.mat, test annos at the top."""
    d = root / "cars"
    (d / "devkit").mkdir(parents=True)
    train, test = [1, 196, 7, 1], [196, 7]
    for folder, ys, annos in (("cars_train", train, d / "devkit" / "cars_train_annos.mat"),
                              ("cars_test", test, d / "cars_test_annos_withlabels.mat")):
        fnames = [f"{i:05d}.jpg" for i in range(1, len(ys) + 1)]
        for i, f in enumerate(fnames):
            _image(d / folder / f, (60 + i, 40))
        _cars_annos(annos, fnames, ys)
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Make Model {i} 2012" for i in range(1, 197)]
    savemat(d / "devkit" / "cars_meta.mat", {"class_names": names})
    return _counts([y - 1 for y in train], [y - 1 for y in test])


def write_birds(root: Path) -> Counts:
    """<root>/birds/CUB_200_2011/: images/<class>/<file>.jpg and the four id-keyed text files."""
    d = root / "birds" / "CUB_200_2011"
    classes = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 200: "200.Common_Yellowthroat"}
    rows = [(1, 1), (1, 1), (1, 0), (2, 1), (2, 0), (200, 1), (200, 1), (200, 0)]  # (class, is_train)
    images, labels, split = [], [], []
    for i, (c, t) in enumerate(rows, 1):
        rel = f"{classes[c]}/{classes[c][4:]}_{i:04d}_{796000 + i}.jpg"
        _image(d / "images" / rel, (45, 35 + i))
        images.append(f"{i} {rel}")
        labels.append(f"{i} {c}")
        split.append(f"{i} {t}")
    all_classes = [f"{i} {classes.get(i, f'{i:03d}.Bird_{i}')}" for i in range(1, 201)]
    for name, lines in (("images", images), ("image_class_labels", labels), ("train_test_split", split),
                        ("classes", all_classes)):
        (d / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return _counts([c - 1 for c, t in rows if t], [c - 1 for c, t in rows if not t])


def write_dogs(root: Path) -> Counts:
    """<root>/dogs/: Images/<wnid>-<breed>/*.jpg, train_list.mat and test_list.mat (file_list, labels)."""
    d = root / "dogs"
    breeds = {1: "n02085620-Chihuahua", 2: "n02085782-Japanese_spaniel", 120: "n02116738-African_hunting_dog"}
    split = {"train": [1, 1, 2, 120], "test": [2, 120, 1]}
    n = 0
    for name, ys in split.items():
        files = []
        for y in ys:
            n += 1
            rel = f"{breeds[y]}/{breeds[y].split('-')[0]}_{1000 + n}.jpg"
            _image(d / "Images" / rel, (50 + n, 45))
            files.append(rel)
        savemat(d / f"{name}_list.mat", {"file_list": _cell(files), "annotation_list": _cell([f[:-4] for f in files]),
                                         "labels": np.asarray(ys, np.uint8).reshape(-1, 1)})
    return _counts([y - 1 for y in split["train"]], [y - 1 for y in split["test"]])


def write_indoor67(root: Path) -> Counts:
    """<root>/indoor67/: Images/<class>/*.jpg, TrainImages.txt and TestImages.txt ("class/file.jpg", CRLF)."""
    d = root / "indoor67"
    split = {"Train": ["airport_inside", "airport_inside", "bakery", "winecellar"],
             "Test": ["bakery", "winecellar"]}
    n = 0
    for name, cs in split.items():
        lines = []
        for c in cs:
            n += 1
            rel = f"{c}/{c}_{n:04d}.jpg"
            _image(d / "Images" / rel, (48, 36 + n), mode="L" if n == 1 else "RGB")  # a few are grayscale
            lines.append(rel)
        (d / f"{name}Images.txt").write_text("\r\n".join(lines) + "\r\n")
    classes = ["airport_inside", "bakery", "winecellar"]
    return _counts([classes.index(c) for c in split["Train"]], [classes.index(c) for c in split["Test"]])


def write_imagenet(root: Path) -> Counts:
    """<root>/imagenet/{train,val}/<wnid>/*.JPEG (val already sorted into class folders)."""
    d = root / "imagenet"
    wnids = ["n01440764", "n01443537", "n15075141"]
    train, test = [0, 0, 1, 2, 2], [0, 1, 2]
    for i, y in enumerate(train):
        _image(d / "train" / wnids[y] / f"{wnids[y]}_{i}.JPEG", (64, 48 + i))
    for i, y in enumerate(test, 1):
        _image(d / "val" / wnids[y] / f"ILSVRC2012_val_{i:08d}.JPEG", (50, 60))
    return _counts(train, test)


def write_cinic_imagenet(root: Path) -> Counts:
    """<root>/cinic_imagenet/{train,valid,test}/<class>/*.png, mixing CINIC's ImageNet and CIFAR-10 images."""
    d = root / "cinic_imagenet"
    kept = {"train": ["airplane", "truck"], "valid": ["cat"], "test": ["airplane", "cat"]}
    for split, cs in kept.items():
        for i, c in enumerate(cs):
            _image(d / split / c / f"n0269{i}373_{i}.png", (32, 32))
            _image(d / split / c / f"cifar10-{split}-{i}.png", (32, 32))  # CIFAR-10 part: left out
        (d / split / "deer").mkdir(parents=True, exist_ok=True)  # a class with no ImageNet image here
    order = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return _counts([order.index(c) for c in kept["train"] + kept["valid"]], [order.index(c) for c in kept["test"]])


WRITERS: dict[str, Callable[[Path], Counts]] = {
    "cifar10": write_cifar10, "cifar100": write_cifar100, "mnist": write_mnist, "svhn": write_svhn,
    "flowers": write_flowers, "aircraft": write_aircraft, "cars": write_cars, "birds": write_birds,
    "dogs": write_dogs, "indoor67": write_indoor67, "imagenet": write_imagenet,
    "cinic_imagenet": write_cinic_imagenet,
}
