"""Rule invert: reconstruct test images and photos from their representations with one method."""

from pathlib import Path

from atlib import provenance
from atlib.checkpoint import CheckpointError
from atlib.invert import invert_report
from atlib.logs import job_logging
from atlib.runtime import set_threads

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    set_threads(sm.threads)
    fisher = sm.input.fisher[0] if sm.input.fisher else None
    try:
        invert_report(sm.input.model, fisher, Path(sm.input.data).parent, dict(sm.params.cfg), sm.wildcards.method,
                      sm.params.seed, Path(sm.output.summary).parent, eps=float(sm.wildcards.eps),
                      device=sm.params.device)
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"{sm.wildcards.method} inversion of {sm.input.model}: {err}") from None
    provenance.record(sm.input, sm.output, sm.config)
