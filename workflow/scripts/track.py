"""Rule track: idempotent ingest of the results tree into MLflow; writes a summary json."""

import json
import logging
from pathlib import Path

from atlib.logs import job_logging
from atlib.tracking import TrackingError, git_commit, ingest

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    p = sm.params
    try:
        summary = ingest(sm.config["results"], p.uri, p.experiment, sm.config, git_commit(p.code_dir))
    except TrackingError as err:
        raise SystemExit(str(err)) from None
    summary["config_hash"] = p.config_hash
    Path(sm.output.summary).write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("MLflow: %(created)d runs created, %(updated)d updated (changed results or an older layout), "
                 "%(skipped)d unchanged, %(relinked)d of them renamed or re-nested (%(uri)s)", summary)
