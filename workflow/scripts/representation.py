"""Rule representation: t-SNE and class separation of a model's test features."""

from pathlib import Path

from atlib import provenance
from atlib.checkpoint import CheckpointError
from atlib.logs import job_logging
from atlib.representation import representation_report
from atlib.runtime import set_threads

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    set_threads(sm.threads)
    try:
        representation_report(sm.input.model, Path(sm.input.data).parent, dict(sm.params.cfg), sm.params.seed,
                              Path(sm.output.summary).parent, eps=float(sm.wildcards.eps),
                              device=sm.params.device)
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"representation of {sm.input.model}: {err}") from None
    provenance.record(sm.input, sm.output, sm.config)
