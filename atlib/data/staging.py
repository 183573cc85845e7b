"""Where a copy of one of the paper's datasets is: the pre-staged layout of each (`LAYOUT`, the
sections of docs/datasets.md), and `find_root`, which looks for a complete copy staged under
`<data_root>/<name>/`, then one an earlier run downloaded, then downloads one where allowed.
The readers of the files found are `atlib.data.paper`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

from atlib.data.registry import AcquireContext, DatasetMissing

DOCS = "docs/datasets.md"

# A required entry is a path relative to the dataset root, or a tuple of alternatives.
Required = Sequence[Union[str, tuple[str, ...]]]

# The pre-staged layout of each dataset, one line (also stored as the prepared data's source).
LAYOUT = {
    "cifar10": "<data_root>/cifar10/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} "
               "(the extracted folder itself also works as <data_root>/cifar10/)",
    "cifar100": "<data_root>/cifar100/cifar-100-python/{train, test, meta} "
                "(the extracted folder itself also works as <data_root>/cifar100/)",
    "mnist": "<data_root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (or in <data_root>/mnist/raw/)",
    "svhn": "<data_root>/svhn/{train_32x32.mat, test_32x32.mat}",
    "flowers": "<data_root>/flowers/flowers-102/{jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat} "
               "(or the same files directly in <data_root>/flowers/)",
    "aircraft": "<data_root>/aircraft/fgvc-aircraft-2013b/data/{images/, variants.txt, "
                "images_variant_trainval.txt, images_variant_test.txt}",
    "cars": "<data_root>/cars/{cars_train/, cars_test/, devkit/cars_train_annos.mat, devkit/cars_meta.mat, "
            "cars_test_annos_withlabels.mat (or in devkit/)} (or the same under <data_root>/cars/stanford_cars/)",
    "birds": "<data_root>/birds/CUB_200_2011/{images/, images.txt, image_class_labels.txt, "
             "train_test_split.txt, classes.txt}",
    "dogs": "<data_root>/dogs/{Images/<wnid>-<breed>/*.jpg, train_list.mat, test_list.mat}",
    "indoor67": "<data_root>/indoor67/{Images/<class>/*.jpg, TrainImages.txt, TestImages.txt}",
    "imagenet": "<data_root>/imagenet/{train,val}/<wnid>/*.JPEG (ILSVRC2012, val sorted into class folders)",
    "cinic_imagenet": "<data_root>/cinic_imagenet/{train,valid,test}/<class>/*.png (CINIC-10 as extracted)",
}


def how_to_stage(name: str, downloadable: bool) -> str:
    """What to do about a missing dataset: its staged layout, and whether allow_download helps."""
    fetch = ("or set allow_download: true to let torchvision download it" if downloadable
             else "allow_download does not help (torchvision cannot download it): stage it by hand")
    return f"stage it as {LAYOUT[name]} (see {DOCS}, section {name!r}); {fetch}."


def _missing_entries(root: Path, required: Required) -> list[str]:
    out = []
    for item in required:
        alternatives = (item,) if isinstance(item, str) else item
        if not any((root / a).exists() for a in alternatives):
            out.append(" or ".join(alternatives))
    return out


def _search(base: Path, subdirs: Sequence[str], required: Required) -> tuple[Path | None, str]:
    """The first complete root under `base`, else a note saying what is missing where."""
    if not base.is_dir():
        return None, f"{base} (absent)"
    best: tuple[int, str] | None = None
    for sub in subdirs:
        root = base / sub if sub else base
        if not root.is_dir():
            continue
        missing = _missing_entries(root, required)
        if not missing:
            return root, ""
        if best is None or len(missing) < best[0]:
            best = (len(missing), f"{root} (missing: {', '.join(missing)})")
    layouts = ", ".join(str(base / s) if s else str(base) for s in subdirs)
    return None, best[1] if best else f"{base} (none of {layouts} exists)"


def find_root(ctx: AcquireContext, name: str, required: Required, subdirs: Sequence[str] = ("",),
              download: Callable[[Path], Any] | None = None) -> Path:
    """The directory holding a complete copy of dataset `name`.

    Args:
        ctx: where to look and whether downloading is allowed.
        name: registry name; the staged copy is `<data_root>/<name>/`.
        required: files/folders (relative to the root) a complete copy has.
        subdirs: where the root may sit inside the staged or download directory ("" = itself).
        download: fetches the dataset into a directory (torchvision), None if it cannot be downloaded.

    Raises:
        DatasetMissing: found nowhere (or only partly); the message names what is missing where.
    """
    notes = []
    bases = [ctx.staged(name)] + ([ctx.download_root(name)] if download is not None else [])
    for base in bases:  # the download dir holds a copy an earlier run fetched
        root, note = _search(base, subdirs, required)
        if root is not None:
            return root
        notes.append(note)
    if download is not None and ctx.allow_download:
        target = ctx.download_root(name)
        try:
            download(target)
        except Exception as err:  # network, disk or archive errors: one message, not a traceback
            notes.append(f"download into {target} failed: {type(err).__name__}: {err}")
        else:
            root, note = _search(target, subdirs, required)
            if root is not None:
                return root
            notes.append(f"after download: {note}")
    elif download is not None:
        notes.append("download: disabled (allow_download: false)")
    raise DatasetMissing(name, notes, how_to_stage(name, download is not None))
