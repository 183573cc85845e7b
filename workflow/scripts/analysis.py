"""Rules fisher, representation, invert and analyses_*: one model's analyses (Sections 3-5), one per
rule or all of one model in one job (batch_jobs); each analysis records its own provenance."""

from pathlib import Path

from atlib.core.runtime import set_threads
from atlib.models.checkpoint import CheckpointError
from atlib.spec import provenance
from atlib.workflow.logs import job_logging


def run(job: dict, device: str) -> None:
    """One analysis: the library call that writes `job["outputs"]` into `job["out_dir"]`."""
    data_dir, args = Path(job["data"]).parent, dict(eps=job["eps"], device=device)
    if job["kind"] == "fisher":
        from atlib.info.fisher import fisher_report

        fisher_report(job["model"], data_dir, dict(job["cfg"]), job["seed"], job["out_dir"], **args)
    elif job["kind"] == "representation":
        from atlib.info.representation import representation_report

        representation_report(job["model"], data_dir, dict(job["cfg"]), job["seed"], job["out_dir"], **args)
    else:
        from atlib.info.invert import invert_report

        fisher = job["fisher"][0] if job["fisher"] else None
        invert_report(job["model"], fisher, data_dir, dict(job["cfg"]), job["method"], job["seed"], job["out_dir"],
                      **args)


sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    set_threads(sm.threads)
    for job in sm.params.jobs:
        what = " ".join(filter(None, [job["method"], job["kind"]]))
        try:
            run(job, sm.params.device)
        except (ValueError, CheckpointError, FileNotFoundError) as err:
            raise SystemExit(f"{what} of {job['model']}: {err}") from None
        provenance.record([job["model"], job["data"], *job["fisher"]], job["outputs"], sm.config)
