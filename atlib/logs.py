"""Logging for job scripts: everything goes to the rule's `log:` file and stderr."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def job_logging(path: str | Path) -> Iterator[logging.Logger]:
    """Send logging (and uncaught errors) to `path` for the duration of a job."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    log = logging.getLogger("atlib")
    try:
        yield log
    except BaseException as err:
        if not isinstance(err, SystemExit) or err.code not in (0, None):
            log.error("job failed: %s", err)
        raise
    finally:
        for h in handlers:
            h.flush()
