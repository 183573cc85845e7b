"""Rule prepare_dataset: acquire one dataset and write results/data/{dataset}/."""

import logging
from pathlib import Path

from atlib.data import AcquireContext, DatasetMissing, prepare
from atlib.workflow.logs import job_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    out = Path(sm.output.meta).parent
    ctx = AcquireContext(Path(sm.params.data_root), allow_download=sm.params.allow_download)
    base = Path(sm.input.base[0]).parent if sm.input.base else None
    try:
        meta = prepare(sm.wildcards.dataset, out, ctx, derived=sm.params.derived, base_dir=base)
    except (DatasetMissing, ValueError) as err:  # missing, partial, corrupt or wrong-size copies
        raise SystemExit(f"prepare_dataset {sm.wildcards.dataset}: {err}") from None
    logging.info("prepared %s: %s", sm.wildcards.dataset, meta["splits"])
