"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A killed job or a writer that raises leaves the old file (or none) and no half-written one; the
temporary file is removed on error. Every result file of the library is written through here.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on a clean exit rename it to `path`.

    The temporary name ends in `path`'s suffix, so writers that add a missing suffix (`np.save`,
    `np.savez`) or infer a format from it (`DataFrame.to_csv`) write exactly the yielded path.
    The parent directory is created. Usage: `with atomic_write(p) as tmp: torch.save(obj, tmp)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a rename there is nothing left; after an error, the partial file


def write_text_atomic(path: str | Path, text: str) -> None:
    """`Path(path).write_text(text)`, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """`obj` as JSON with indent=1 (the format of every result json), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1))
