"""Offline datasets drawn on the fly: letters rendered from matplotlib's fonts, dSprites-like shapes.

Both are seeded, so every call returns the same arrays for the same library versions (glyph
rasterisation may differ across FreeType / Pillow versions, so no hash is pinned for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from atlib.data.registry import Arrays

if TYPE_CHECKING:  # Pillow stays out of every job that does not draw these datasets
    from PIL import Image

LETTERS = list("ABCDEFGHIJ")
# Fonts in matplotlib's mpl-data/fonts/ttf that draw A-J as Latin letters (checked by rendering).
# Left out: cmsy10 (calligraphic symbols), cmex10 and STIXSiz* (delimiters), STIXNonUni* and
# DejaVu*Display (no A-J), LastResortHE (draws every character as a boxed placeholder).
# Test fonts are never seen in training. Every family (DejaVu Sans, Sans Mono, Serif, STIX,
# Computer Modern) gives faces to both splits, so the test asks for new faces of known families,
# not new families: 16 train fonts, 6 test fonts.
TRAIN_FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmmi10.ttf", "cmtt10.ttf",
]
TEST_FONTS = ["DejaVuSans-Oblique.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-BoldItalic.ttf",
              "STIXGeneralBol.ttf", "cmss10.ttf", "cmti10.ttf"]
SHAPES = ["circle", "square", "triangle", "bar", "cross", "star"]


def font_dir() -> Path:
    """matplotlib's bundled TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def glyph(path: Path, char: str, px: int = 64) -> Image.Image:
    """`char` in font `path`, white on black, cropped to its ink (rendered large, shrunk per image)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(path), px)
    canvas = Image.new("L", (3 * px, 3 * px), 0)
    ImageDraw.Draw(canvas).text((px, px), char, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{path.name} draws nothing for {char!r}")
    return canvas.crop(box)


def place(ink: Image.Image, side: float, angle: float, shift: np.ndarray, size: int) -> np.ndarray:
    """`ink` rotated by `angle` degrees, scaled so its longer side is `side`, centred + `shift` in a size^2 image."""
    from PIL import Image

    turned = ink.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    scale = side / max(turned.size)
    w, h = (max(1, round(d * scale)) for d in turned.size)
    small = np.asarray(turned.resize((w, h), Image.Resampling.LANCZOS))
    m = max(w, h)  # margin on every side: a shifted glyph is never cut before the final crop
    out = np.zeros((size + 2 * m, size + 2 * m), np.uint8)
    top = out.shape[0] // 2 - h // 2 + int(shift[1])
    left = out.shape[1] // 2 - w // 2 + int(shift[0])
    out[top:top + h, left:left + w] = small
    return out[m:m + size, m:m + size]


def letter_images(n_train: int = 300, n_test: int = 100, size: int = 28, seed: int = 0) -> Arrays:
    """notMNIST-like letters A-J rendered from matplotlib's fonts; train and test fonts are disjoint.

    Each image varies font, scale (longer side 15-23 px), rotation (+-12 degrees) and position
    (+-2 px), all drawn from a numpy generator seeded by `seed`.
    """
    root = font_dir()
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, fonts, n in (("train", TRAIN_FONTS, n_train), ("test", TEST_FONTS, n_test)):
        inks = {(f, c): glyph(root / f, c) for f in fonts for c in LETTERS}
        xs, ys = [], []
        for label, char in enumerate(LETTERS):
            for _ in range(n):
                ink = inks[fonts[rng.integers(len(fonts))], char]
                side, angle = rng.uniform(15, 23), rng.uniform(-12, 12)
                xs.append(place(ink, side, angle, rng.integers(-2, 3, 2), size))
                ys.append(label)
        out[split] = np.stack(xs), np.asarray(ys, np.int64)
    return Arrays(*out["train"], *out["test"], classes=list(LETTERS))


def shape_outline(kind: str) -> np.ndarray:
    """Vertices (k, 2) of a unit shape centred on the origin, longer half-extent about 1."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if kind == "circle":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
    if kind == "triangle":
        a = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "bar":
        return np.array([[-1, -0.3], [1, -0.3], [1, 0.3], [-1, 0.3]])
    if kind == "cross":
        w = 0.3
        return np.array([[w, w], [1, w], [1, -w], [w, -w], [w, -1], [-w, -1],
                         [-w, -w], [-1, -w], [-1, w], [-w, w], [-w, 1], [w, 1]])
    if kind == "star":
        a = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.4)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 28, supersample: int = 4) -> np.ndarray:
    """One filled shape at a random scale, rotation and position, wholly inside a size^2 image."""
    from PIL import Image, ImageDraw

    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = shape_outline(kind) @ rot.T * rng.uniform(0.2, 0.42) * size
    lo, hi = pts.min(0), pts.max(0)
    pts = pts - lo + rng.uniform(0, 1, 2) * (size - 1 - (hi - lo))  # any position that keeps it whole
    big = Image.new("L", (size * supersample, size * supersample), 0)
    ImageDraw.Draw(big).polygon([tuple(p) for p in (pts + 0.5) * supersample], fill=255)
    # Drawn large and box-filtered down: anti-aliased edges, so sub-pixel positions differ.
    return np.asarray(big.resize((size, size), Image.Resampling.BOX))


def shape_images(n_train: int = 300, n_test: int = 100, size: int = 28, seed: int = 0) -> Arrays:
    """dSprites-like filled shapes (SHAPES), random scale, rotation and position; seeded.

    Train and test are independent draws from the same distribution (separate generator streams).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for stream, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([seed, stream])
        labels = np.repeat(np.arange(len(SHAPES)), n)
        xs = np.stack([draw_shape(SHAPES[k], rng, size) for k in labels])
        out[split] = xs, labels.astype(np.int64)
    return Arrays(*out["train"], *out["test"], classes=list(SHAPES))
