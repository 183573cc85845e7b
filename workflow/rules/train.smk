# train_source: one source model per (source, arch, eps, seed), trained with the experiment's
# train schedule, or imported from a published model (experiments.<name>.pretrained names a
# source_models entry).
from atlib.models.resnet import job_mem_mb


rule train_source:
    input:
        data=source_meta,
        checkpoint=pretrained_input,
    output:
        model=out(jobs.MODEL, "model"),
        history=out(jobs.MODEL, "history"),
        metrics=out(jobs.MODEL, "metrics"),
    log:
        jobs.MODEL.log(RESULTS),
    priority: PRIORITY["train"]
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: job_mem_mb(wc.arch, "train"),
    params:
        width=lambda wc: experiment_of(wc)["width"],
        schedule=lambda wc: config["train_schedules"][experiment_of(wc)["train"]],
        pretrained=pretrained_source,
        rng_seed=train_seed,
        device=config["device"],
        tracking=config["tracking"],
    script:
        "../scripts/train_source.py"
