"""Rule aggregate: every result file -> tables, figures, paper comparison, claims, summary.md."""

from pathlib import Path

from atlib.report import aggregate
from atlib.spec import provenance
from atlib.workflow.logs import job_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    try:
        aggregate(sm.config, Path(sm.output.summary).parent)
    except ValueError as err:  # a corrupt result file, named in the message
        raise SystemExit(str(err)) from None
    provenance.record(sm.input, sm.output, sm.config)  # every number of the report -> the result files' bytes
