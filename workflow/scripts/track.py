"""Rules track_results and track: idempotent ingest of the results tree into MLflow (the jobs'
runs, then the report's); each writes a summary json, track's the whole ingest's."""

import json
import logging
from pathlib import Path

from atlib.workflow.logs import job_logging
from atlib.workflow.tracking.ingest import git_commit, ingest
from atlib.workflow.tracking.mapping import TrackingError

COUNTS = ("jobs", "created", "updated", "skipped", "relinked", "seconds")

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    p = sm.params
    try:
        summary = ingest(sm.config["results"], p.uri, p.experiment, sm.config, git_commit(p.code_dir), part=p.part)
    except TrackingError as err:
        raise SystemExit(str(err)) from None
    if p.part == "report":  # the whole ingest: the jobs' part (track_results) plus the report's
        first = json.loads(Path(sm.input.results).read_text())
        summary |= {k: round(first[k] + summary[k], 2) for k in COUNTS}
        summary["stale_kept"] = sorted(first["stale_kept"] + summary["stale_kept"])
    summary["config_hash"] = p.config_hash
    Path(sm.output.summary).write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("MLflow: %(created)d runs created, %(updated)d updated (changed results or an older layout), "
                 "%(skipped)d unchanged, %(relinked)d of them renamed or re-nested (%(uri)s)", summary)
