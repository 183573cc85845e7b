"""Logging for job scripts: everything a job writes goes to the rule's `log:` file.

Not only `logging`: the job's stdout and stderr (tqdm's progress bars, warnings of C libraries, the
processes a job spawns) are redirected to the same file, so the terminal that runs Snakemake shows
Snakemake's own lines only (atlib.workflow.demo condenses those to one line per job).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def output_to(path: str | Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at `path` (appending) for the duration; restore them after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "a") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextmanager
def job_logging(path: str | Path) -> Iterator[logging.Logger]:
    """Send logging, stdout, stderr and uncaught errors (with their traceback) to `path` for a job."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("")  # each run of the job starts its own log
    with output_to(path):
        handler = logging.StreamHandler(sys.stderr)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            handlers=[handler], force=True)
        log = logging.getLogger("atlib")
        try:
            yield log
        except SystemExit as err:
            if err.code not in (0, None):
                log.error("job failed: %s", err)
            raise
        except BaseException:
            log.exception("job failed")
            raise
        finally:
            handler.flush()
