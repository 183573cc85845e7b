"""The uniform on-disk format of `results/data/{dataset}/` and its readers.

Array datasets: `images.npy` (uint8, N x H x W x C, train rows first, then test) and
`labels.npy` (int64). File-backed datasets: `index.csv` (path, label, split), images
decoded on access. Both have `meta.json`: name, classes, image size, channels, split
sizes, per-split class counts and the sha256 of every data file. `Prepared` checks the
files against those hashes (and the row counts against the split sizes) before any use.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from atlib.core.io import atomic_write
from atlib.data.registry import Arrays, Raw

SPLITS = ("train", "test")
# Set by the Snakefile from the config key `verify_data`; "0" skips the hash check on read.
VERIFY_ENV = "ATLIB_VERIFY_DATA"
# sha256 per (path, size, mtime, inode): a job that reads one file several times hashes it once.
_HASHES: dict[tuple, str] = {}
# A file hashed this soon after its last change is not memoized: a write within the same
# timestamp tick would keep its old key (git's "racily clean" rule).
_SETTLED_S = 2.0


class DataIntegrityError(ValueError):
    """A prepared data file no longer matches its meta.json (changed, corrupted or truncated)."""


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, memoized per process while the file is unchanged."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if key in _HASHES:
        return _HASHES[key]
    started = time.time()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if started - st.st_mtime > _SETTLED_S:
        _HASHES[key] = digest
    return digest


def rebuild_hint(root: Path) -> str:
    """The command that prepares dataset `root` again (target first: --forcerun takes several values)."""
    return f"snakemake {Path(root) / 'meta.json'} --forcerun prepare_dataset"


def hash_mismatches(root: Path, meta: dict) -> list[tuple[Path, str, str]]:
    """(file, sha256 in meta.json, sha256 now) for every data file of `root` that changed."""
    out = []
    for name, expected in sorted(meta.get("sha256", {}).items()):
        path = Path(root) / name
        actual = sha256(path) if path.exists() else "missing"
        if actual != expected:
            out.append((path, expected, actual))
    return out


def write_prepared(raw: Raw, out: Path, name: str, num_classes: int, image_size: int, channels: int,
                   source: str) -> dict:
    """Write `raw` to `out` in the uniform format and return its meta dict."""
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(raw, Arrays):
        xs, ys = [raw.train_x, raw.test_x], [raw.train_y, raw.test_y]
        for x, y, split in zip(xs, ys, SPLITS):
            _check_arrays(name, split, x, y, num_classes)
        images = np.concatenate(xs).astype(np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        labels = np.concatenate(ys).astype(np.int64)
        for file, array in (("images.npy", images), ("labels.npy", labels)):
            with atomic_write(out / file) as tmp:
                np.save(tmp, array)
        sizes = {"train": len(raw.train_y), "test": len(raw.test_y)}
        counts = {s: np.bincount(y.astype(np.int64), minlength=num_classes).tolist() for s, y in zip(SPLITS, ys)}
        files = ["images.npy", "labels.npy"]
        image_size, channels = int(images.shape[1]), int(images.shape[3])
    else:
        with open(out / "index.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "split"])
            w.writerows(zip(raw.paths, raw.labels, raw.splits))
        labels = np.asarray(raw.labels, dtype=np.int64)
        split = np.asarray(raw.splits)
        sizes = {s: int((split == s).sum()) for s in SPLITS}
        counts = {s: np.bincount(labels[split == s], minlength=num_classes).tolist() for s in SPLITS}
        files = ["index.csv"]
    for s in SPLITS:
        if sizes[s] == 0:
            raise ValueError(f"dataset {name!r}: the {s} split is empty")
    meta = {
        "name": name,
        "num_classes": num_classes,
        "classes": raw.classes,
        "image_size": image_size,
        "channels": channels,
        "format": "arrays" if isinstance(raw, Arrays) else "index",
        "splits": sizes,
        "class_counts": counts,
        "sha256": {f: sha256(out / f) for f in files},
        "source": source,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _check_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    if len(x) != len(y):
        raise ValueError(f"dataset {name!r} {split}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"dataset {name!r} {split}: labels outside [0, {num_classes})")


class Prepared:
    """A prepared dataset directory (the output of the `prepare_dataset` rule).

    Args:
        root: the directory (results/data/{dataset}).
        verify: check the data files against the sha256 in meta.json before use; None = on
            unless the environment variable ATLIB_VERIFY_DATA is "0" (config `verify_data`).
            Row counts are checked either way.
    Raises:
        FileNotFoundError: no meta.json.
        DataIntegrityError: a file changed, corrupted or truncated since it was prepared.
    """

    def __init__(self, root: str | Path, verify: bool | None = None) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} missing: run the prepare_dataset rule for {self.root.name!r}")
        self.meta = json.loads(meta_path.read_text())
        self.name: str = self.meta["name"]
        self.num_classes: int = self.meta["num_classes"]
        self.image_size: int = self.meta["image_size"]
        self.channels: int = self.meta["channels"]
        self.check(os.environ.get(VERIFY_ENV, "1") != "0" if verify is None else verify)

    def check(self, hashes: bool = True) -> None:
        """Refuse data files that no longer match meta.json (sha256 unless `hashes` is False, row counts)."""
        meta_path = self.root / "meta.json"
        fix = f"Rebuild the dataset: {rebuild_hint(self.root)} (with the --configfile of your run)."
        bad = hash_mismatches(self.root, self.meta) if hashes else []
        if bad:
            files = "; ".join(f"{p} has sha256 {actual} but {meta_path} records {expected}" for p, expected, actual in bad)
            raise DataIntegrityError(f"{files}. The data changed after prepare_dataset wrote it. {fix}")
        expected = {s: self.split_size(s) for s in SPLITS}
        file, found = self._rows()
        if found != expected:
            held = f"rows per split {found}" if isinstance(found, dict) else found
            raise DataIntegrityError(f"{file}: {held}, but {meta_path} records rows per split {expected}; "
                                     f"the file is truncated or changed. {fix}")

    def _rows(self) -> tuple[Path, dict[str, int] | str]:
        """Rows per split as stored, or what is wrong (cheap: array headers, or one pass over index.csv)."""
        if self.meta["format"] == "arrays":
            files = [self.root / "images.npy", self.root / "labels.npy"]
            try:
                n_images, n_labels = (len(np.load(f, mmap_mode="r")) for f in files)
            except (OSError, ValueError) as err:
                return files[0], f"unreadable ({err})"
            if n_images != n_labels:
                return files[1], f"{n_labels} labels for {n_images} images"
            n_train = self.split_size("train")
            return files[0], {"train": n_train, "test": n_images - n_train}
        index = self.root / "index.csv"
        with open(index, newline="") as f:
            splits = [r.get("split") for r in csv.DictReader(f)]
        return index, {s: splits.count(s) for s in SPLITS}

    def split_size(self, split: str) -> int:
        return int(self.meta["splits"][split])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, C) and int64 labels of one split (array format only)."""
        if self.meta["format"] != "arrays":
            raise ValueError(f"dataset {self.name!r} is file-backed; use atlib.data.tensors.split_dataset")
        images = np.load(self.root / "images.npy", mmap_mode="r")
        labels = np.load(self.root / "labels.npy")
        n_train = self.split_size("train")
        sl = slice(0, n_train) if split == "train" else slice(n_train, None)
        return np.array(images[sl]), labels[sl]
