# transfer: a new head on a source model, fine-tuned on a target with the experiment's finetune
# schedule (modes of the paper's Appendix C). One job per (source model, target, mode); with
# `batch_jobs: true` all mode-0 transfers of one source model run in one job instead (one rule per
# model, below), which saves a few seconds of start-up per target on small targets.
# The experiment that asked for each transfer gives its finetune schedule (common.smk).
from atlib.models.resnet import job_mem_mb


rule transfer:
    input:
        model=lambda wc: model_file(model_key(wc)),
        target=lambda wc: dataset_meta(wc.target),
    output:
        metrics=out(jobs.TRANSFER, "metrics"),
        history=out(jobs.TRANSFER, "history"),
    log:
        jobs.TRANSFER.log(RESULTS),
    priority: PRIORITY["transfer"]
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: job_mem_mb(wc.arch, "transfer"),
    params:
        jobs=wildcard_transfer_job,
        device=config["device"],
        tracking=config["tracking"],
    script:
        "../scripts/transfer.py"


# One rule per source model: Snakemake rules need a fixed output list, and each model has its own.
# Snakemake prefers a rule without wildcards where two can make a file, so these win over `transfer`.
for _path, (_key, _batch) in batched_mode0().items():

    rule:
        name:
            jobs.batch_rule_name("transfer_mode0", _key)
        input:
            model=model_file(_key),
            target=[dataset_meta(j.target) for j in _batch],
        output:
            metrics=jobs.outputs(_batch, RESULTS, ["metrics"]),
            history=jobs.outputs(_batch, RESULTS, ["history"]),
        log:
            f"{RESULTS}/logs/transfer/{_path}/mode0.log",
        priority: PRIORITY["transfer"]
        conda:
            "../../envs/atlib.yaml"
        threads: config["threads"]
        resources:
            mem_mb=job_mem_mb(_key.arch, "transfer"),
        params:
            jobs=[transfer_job(_key, j.target, 0) for j in _batch],
            device=config["device"],
            tracking=config["tracking"],
        script:
            "../scripts/transfer.py"
