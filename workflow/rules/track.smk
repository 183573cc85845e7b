# track: mirror every result into MLflow (one run per job, found again by its job_key tag), in two
# jobs: track_results logs every job's run while aggregate makes the report, then track logs the
# report's run (one SQLite store: the two never write at once).
# Local: it is quick, and a SLURM node may not reach the tracking server the user can.
# It also reads each job's log under logs/ where present, for the run's start and end only; logs are
# not inputs: a missing or stale one just means the result file's time is used
# (atlib.workflow.tracking.mapping.job_times).


localrules:
    track_results,
    track,


rule track_results:
    input:
        results=track_inputs(),
    output:
        summary=out(jobs.TRACK_RESULTS, "summary"),
    log:
        jobs.TRACK_RESULTS.log(RESULTS),
    conda:
        "../../envs/atlib.yaml"
    resources:
        mem_mb=2000,
    params:
        part="jobs",
        uri=config["tracking"]["uri"] or default_uri(RESULTS),
        experiment=config["tracking"]["experiment"],
        config_hash=config_hash(config),
        code_dir=workflow.basedir,
    script:
        "../scripts/track.py"


rule track:
    input:
        results=out(jobs.TRACK_RESULTS, "summary"),
        report=f"{RESULTS}/{jobs.REPORT.folder}",
    output:
        summary=out(jobs.TRACK, "summary"),
    log:
        jobs.TRACK.log(RESULTS),
    conda:
        "../../envs/atlib.yaml"
    resources:
        mem_mb=2000,
    params:
        part="report",
        uri=config["tracking"]["uri"] or default_uri(RESULTS),
        experiment=config["tracking"]["experiment"],
        config_hash=config_hash(config),
        code_dir=workflow.basedir,
    script:
        "../scripts/track.py"
