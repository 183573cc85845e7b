# track: mirror every result into MLflow (one run per job, found again by its job_key tag).
# Local: it is quick, and a SLURM node may not reach the tracking server the user can.
# It also reads each job's log under logs/ where present, for the run's start and end only; logs are
# not inputs: a missing or stale one just means the result file's time is used (atlib.tracking.job_times).
from atlib.config import config_hash
from atlib.tracking import default_uri


localrules:
    track,


rule track:
    input:
        results=all_results(),
        summary=f"{RESULTS}/report/summary.md",
    output:
        summary=f"{RESULTS}/tracking/ingest.json",
    params:
        results=RESULTS,
        uri=config["tracking"]["uri"] or default_uri(RESULTS),
        experiment=config["tracking"]["experiment"],
        config_hash=config_hash(config),
        code_dir=workflow.basedir,
    log:
        f"{RESULTS}/logs/track/track.log",
    resources:
        mem_mb=2000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/track.py"
