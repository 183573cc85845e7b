"""Rules transfer and transfer_mode0_*: fine-tune one source model on one or more targets (Appendix C)."""

from atlib.models.checkpoint import CheckpointError
from atlib.spec import provenance
from atlib.spec.schema import ConfigError
from atlib.spec.settings import FinetuneSchedule
from atlib.train.resume import Interrupted
from atlib.transfer.finetune import transfer
from atlib.transfer.inputs import TransferError
from atlib.workflow.logs import job_logging
from atlib.workflow.tracking.live import live_for_job

sm = snakemake  # noqa: F821 - injected by Snakemake
p = sm.params
with job_logging(sm.log[0]) as log:
    for job in p.jobs:  # one job, or every mode-0 target of one model (batch_mode0)
        metrics = f"{job['out_dir']}/metrics.json"
        with live_for_job(p.tracking, sm.config["results"], metrics, "transfer", job["wildcards"]) as live:
            try:
                transfer(sm.input.model, job["target_dir"], job["out_dir"], mode=job["mode"],
                         schedule=FinetuneSchedule.from_config(job["schedule"]), seed=job["seed"], device=p.device, threads=sm.threads, log=log,
                         model_key=job["model_key"], arch=job["arch"],
                         on_epoch=lambda row: live.log_metrics(row, step=int(row["epoch"])))
            except (TransferError, CheckpointError, ConfigError, Interrupted, FileNotFoundError) as err:
                raise SystemExit(str(err)) from None  # one clear line; Interrupted exits non-zero to be retried
        provenance.record([sm.input.model, f"{job['target_dir']}/meta.json"],
                          [metrics, f"{job['out_dir']}/history.csv"], sm.config)
