"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A killed job or a writer that raises leaves the old file (or none) and no half-written one; the
temporary file is removed on error. Every result file of the library is written through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on a clean exit rename it to `path`.

    The temporary file has `path`'s own name, in a fresh hidden directory beside it, so every writer
    behaves as if it wrote `path` itself: `np.save` adds no suffix, `DataFrame.to_csv` infers the same
    compression, and `torch.save`, which names its archive's root folder after the file, writes the
    same bytes on every run (a name holding the process id would not). The parent directory is
    created. Usage: `with atomic_write(p) as tmp: torch.save(obj, tmp)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = folder / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a rename there is nothing left; after an error, the partial file
        folder.rmdir()


def write_text_atomic(path: str | Path, text: str) -> None:
    """`Path(path).write_text(text)`, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """`obj` as JSON with indent=1 (the format of every result json), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1))
