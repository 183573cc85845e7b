"""Rule transfer: fine-tune one source model on one target in one mode (Appendix C)."""

from pathlib import Path

from atlib.checkpoint import CheckpointError
from atlib.config import ConfigError
from atlib.logs import job_logging
from atlib.resume import Interrupted
from atlib.tracking import live_for_job
from atlib.transfer import TransferError, transfer

sm = snakemake  # noqa: F821 - injected by Snakemake
wc, p = sm.wildcards, sm.params
with job_logging(sm.log[0]) as log, live_for_job(p.tracking, p.results, sm.output.metrics, "transfer",
                                                  dict(wc.items())) as live:
    try:
        transfer(sm.input.model, Path(sm.input.target).parent, Path(sm.output.metrics).parent, mode=int(wc.mode),
                 schedule=p.schedule, seed=p.seed, device=p.device, threads=sm.threads, log=log,
                 model_key=p.model_key, arch=wc.arch,
                 on_epoch=lambda row: live.log_metrics(row, step=int(row["epoch"])))
    except (TransferError, CheckpointError, ConfigError, Interrupted, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None  # one clear line; Interrupted exits non-zero to be retried
