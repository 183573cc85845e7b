"""Rule train_source: train one source model, or import the configured published checkpoint."""

from pathlib import Path

from atlib.data import DataIntegrityError
from atlib.models.checkpoint import CheckpointError
from atlib.spec import provenance
from atlib.spec.schema import ConfigError
from atlib.spec.settings import TrainSchedule
from atlib.train.imported import import_source
from atlib.train.resume import Interrupted
from atlib.train.source import TrainingError, train_source
from atlib.workflow.logs import job_logging
from atlib.workflow.tracking.live import live_for_job


def main(sm) -> None:
    wc, p = sm.wildcards, sm.params
    with job_logging(sm.log[0]) as log, live_for_job(p.tracking, sm.config["results"], sm.output.metrics, "train_source",
                                                      dict(wc.items())) as live:
        data, out = Path(sm.input.data).parent, Path(sm.output.model).parent
        try:
            schedule = TrainSchedule.from_config(p.schedule)
            common = dict(arch=wc.arch, eps=float(wc.eps), seed=int(wc.seed), rng_seed=p.rng_seed,
                          schedule=schedule, device=p.device, threads=sm.threads, log=log)
            if p.pretrained:
                name, entry = p.pretrained
                import_source(entry, data, out, where=f"source_models.{name}", **common)
            else:
                train_source(data, out, width=p.width, world_size=schedule.world_size,
                             on_epoch=lambda row: live.log_metrics(row, step=int(row["epoch"])), **common)
        except (TrainingError, CheckpointError, ConfigError, DataIntegrityError, Interrupted,
                FileNotFoundError) as err:
            raise SystemExit(str(err)) from None  # one clear line; Interrupted exits non-zero to be retried
        provenance.record(sm.input, sm.output, sm.config)


# DDP ranks are spawned processes that re-import this file: only the parent runs the job.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
