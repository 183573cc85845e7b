"""Get the demo's only non-bundled dataset, Fashion-MNIST, by whatever way works here.

Order: already present (pre-staged or Debian's copy) -> torchvision's download where the
internet is reachable -> Debian's `dataset-fashion-mnist` where we are root with apt-get ->
exit with the message saying how to provide it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from atlib.data.offline import IDX_FILES, SYSTEM_FASHION, find_idx_dir
from atlib.data.registry import DatasetMissing


def _present(staged: Path) -> Path | None:
    return find_idx_dir([staged, staged / "raw", SYSTEM_FASHION])


def _download(staged: Path) -> bool:
    from atlib.core.compat import import_torchvision

    socket.setdefaulttimeout(15)  # fail fast where the network is closed
    tmp = staged.parent / "fashion_mnist_download"
    try:
        tv = import_torchvision()
        for train in (True, False):
            tv.datasets.FashionMNIST(str(tmp), train=train, download=True)
    except Exception as err:  # no route, DNS failure, HTTP error: all mean "not this way"
        print(f"fetch: torchvision download failed ({type(err).__name__}); trying the next way", file=sys.stderr)
        return False
    staged.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES.values():
        shutil.copy(tmp / "FashionMNIST" / "raw" / f, staged / f)
    return True


def _apt() -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
                ["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
        ok = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode == 0
        if ok and cmd[1] == "install":
            return True
    return False


def ensure_fashion_mnist(data_root: Path) -> Path:
    staged = data_root / "fashion_mnist"
    for way in (lambda: True, lambda: _download(staged), _apt):
        if way() and (found := _present(staged)) is not None:
            return found
    raise DatasetMissing("fashion_mnist", [str(staged), str(SYSTEM_FASHION), "torchvision download", "apt-get"],
                         "apt-get install dataset-fashion-mnist (as root), or copy the four IDX files of "
                         "Fashion-MNIST into data/fashion_mnist/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default="data", type=Path)
    args = ap.parse_args()
    try:
        found = ensure_fashion_mnist(args.data_root)
    except DatasetMissing as err:
        raise SystemExit(str(err)) from None
    print(f"fetch: Fashion-MNIST found in {found}")


if __name__ == "__main__":
    main()
