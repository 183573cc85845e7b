"""Rule fisher: diagonal Fisher, Sigma*, information in the weights and input-Fisher summary."""

from pathlib import Path

from atlib import provenance
from atlib.checkpoint import CheckpointError
from atlib.fisher import fisher_report
from atlib.logs import job_logging
from atlib.runtime import set_threads

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    set_threads(sm.threads)
    try:
        fisher_report(sm.input.model, Path(sm.input.data).parent, dict(sm.params.cfg), sm.params.seed,
                      Path(sm.output.summary).parent, eps=float(sm.wildcards.eps), device=sm.params.device)
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"fisher of {sm.input.model}: {err}") from None
    provenance.record(sm.input, sm.output, sm.config)
