"""Rule transfer: fine-tune one source model on one target in one mode (Appendix C)."""

from pathlib import Path

from atlib.checkpoint import CheckpointError
from atlib.config import ConfigError
from atlib.logs import job_logging
from atlib.resume import Interrupted
from atlib.transfer import TransferError, transfer

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]) as log:
    wc, p = sm.wildcards, sm.params
    try:
        transfer(sm.input.model, Path(sm.input.target).parent, Path(sm.output.metrics).parent, mode=int(wc.mode),
                 schedule=p.schedule, seed=p.seed, device=p.device, threads=sm.threads, log=log,
                 model_key=p.model_key, arch=wc.arch)
    except (TransferError, CheckpointError, ConfigError, Interrupted, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None  # one clear line; Interrupted exits non-zero to be retried
