"""A user's image folder as a dataset: the torchvision ImageFolder layout, checked before any job.

Two layouts are accepted: `DIR/train/<class>/*` with `DIR/test/<class>/*`, or one `DIR/<class>/*`
that gets a seeded, stratified train/test split. Classes are the sorted folder names (ImageFolder's
rule). Any file Pillow can open is an image; hidden files and files with other extensions are
ignored, as ImageFolder does. Every problem of a folder is collected and raised as one `FolderError`
listing each bad file or folder, so a user fixes them in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlib.data.registry import Arrays

# `datasets.<name>.base` of a dataset read from an image folder, not from a registered dataset.
FOLDER = "folder"
SPLIT_DIRS = ("train", "test")
MIN_SIDE = 8  # pixels: smaller images cannot be told apart once resized to a model's input


class FolderError(ValueError):
    """A folder dataset that cannot be used; the message lists every bad file or folder."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"image folder {root} cannot be used as a dataset ({len(problems)} "
                         f"problem{'s' * (len(problems) > 1)}):\n{lines}")
        self.problems = problems


@dataclass(frozen=True)
class Layout:
    """The images of a folder: classes (sorted names) and per split a list of (file, class index);
    `split` is False for the one-folder layout (the split is drawn by `load_folder`)."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]
    split: bool


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {s.lower() for s in Image.registered_extensions()}


def _images(folder: Path, suffixes: set[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in suffixes)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: str | Path) -> Layout:
    """The layout of `root` (listing only, no image is opened); FolderError on a missing folder,
    mixed layouts, fewer than 2 classes, an empty class or a test class missing from train."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FolderError(root, [f"{root}: no such folder"])
    subdirs = _subdirs(root)
    names = {p.name for p in subdirs}
    split = bool(names & set(SPLIT_DIRS))
    problems: list[str] = []
    if split and (not set(SPLIT_DIRS) <= names or len(names) > 2):
        problems.append(f"{root}: mixed layouts: it holds {', '.join(sorted(names))}; use either train/<class>/ and "
                        "test/<class>/ only, or <class>/ folders only")
        raise FolderError(root, problems)
    suffixes = _image_suffixes()
    parts = {s: root / s for s in SPLIT_DIRS} if split else {"all": root}
    found = {s: {d.name: _images(d, suffixes) for d in _subdirs(p)} for s, p in parts.items()}
    for s, p in parts.items():
        loose = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes]
        if loose:
            problems.append(f"{p}: {len(loose)} image(s) outside any class folder (e.g. {loose[0].name})")
        for cls, files in found[s].items():
            if not files:
                problems.append(f"{p / cls}: empty class folder (no image Pillow can read)")
    first = found["train" if split else "all"]
    if len(first) < 2:
        problems.append(f"{parts['train' if split else 'all']}: {len(first)} class folder(s); a classification "
                        "target needs at least 2")
    if split:
        for cls in sorted(set(found["test"]) - set(first)):
            problems.append(f"{root / 'test' / cls}: test class {cls!r} is missing from {root / 'train'}")
    else:
        for cls, files in first.items():
            if len(files) == 1:
                problems.append(f"{root / cls}: 1 image; the train/test split needs at least 2 per class")
    if problems:
        raise FolderError(root, problems)
    classes = sorted(first)
    index = {c: i for i, c in enumerate(classes)}
    files = {s: [(f, index[c]) for c in sorted(d) for f in d[c]] for s, d in found.items()}
    return Layout(root, classes, files, split)


def check_images(layout: Layout, decode: bool = True) -> None:
    """Open every image: unreadable files and images smaller than MIN_SIDE pixels, all listed; with
    `decode`, every pixel is decoded too, which is what finds truncated files (about 1 s per
    thousand small images; without it only the headers are read)."""
    from PIL import Image, UnidentifiedImageError

    problems = []
    for path, _ in (item for files in layout.files.values() for item in files):
        try:
            with Image.open(path) as img:
                w, h = img.size
                if decode:
                    img.load()
        except (OSError, UnidentifiedImageError, ValueError) as err:
            problems.append(f"{path}: unreadable or truncated image ({err})")
            continue
        if min(w, h) < MIN_SIDE:
            problems.append(f"{path}: {w}x{h} pixels, smaller than {MIN_SIDE} on a side")
    if problems:
        raise FolderError(layout.root, problems)


def check_folder(root: str | Path, decode: bool = True) -> Layout:
    """The layout and every image of `root` (FolderError lists every problem); `decode` as in
    `check_images` (the Snakefile's main process decodes, its jobs only read headers)."""
    layout = scan(root)
    check_images(layout, decode)
    return layout


def _decode(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()  # decodes every pixel: a truncated file raises here
        if min(img.size) < MIN_SIDE:
            raise ValueError(f"{img.size[0]}x{img.size[1]} pixels, smaller than {MIN_SIDE} on a side")
        img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
        # Shorter side to `size`, then the centre square: ImageFolder's Resize + CenterCrop.
        img = ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def load_folder(root: str | Path, image_size: int, channels: int, test_fraction: float = 0.2,
                seed: int = 0) -> Arrays:
    """Every image of folder `root` decoded, as uint8 (N, image_size, image_size, channels) arrays.

    Raises FolderError listing every unreadable, truncated or too small image before returning, so a
    failed preparation never writes anything. The one-folder layout is split with scikit-learn's
    stratified split (`atlib.data.offline.stratified_split`, as for the bundled single-set datasets).
    """
    from PIL import UnidentifiedImageError

    from atlib.data.offline import stratified_split

    layout = scan(root)
    decoded, problems = {}, []
    for s, files in layout.files.items():
        xs = []
        for path, _ in files:
            try:
                xs.append(_decode(path, image_size, channels))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                problems.append(f"{path}: unreadable, truncated or too small ({err})")
        decoded[s] = (xs, np.array([c for _, c in files], np.int64))
    if problems:
        raise FolderError(layout.root, problems)
    if layout.split:
        (xtr, ytr), (xte, yte) = decoded["train"], decoded["test"]
        return Arrays(np.stack(xtr), ytr, np.stack(xte), yte, classes=layout.classes)
    x, y = decoded["all"]
    raw = stratified_split(np.stack(x), y, test_size=_test_size(y, test_fraction), seed=seed)
    raw.classes = layout.classes
    return raw


def _test_size(y: np.ndarray, fraction: float) -> int:
    """Test images: `fraction` of all, but at least one per class and at most all but one per class
    (scikit-learn's stratified split needs both)."""
    k = len(np.unique(y))
    return int(min(max(round(fraction * len(y)), k), len(y) - k))


def folder_files(root: str | Path) -> list[str]:
    """Every image file of a folder dataset (a rule's input: a changed image reruns preparation)."""
    try:
        layout = scan(root)
    except FolderError:
        return []
    return [str(p) for files in layout.files.values() for p, _ in files]
