# Per-model analyses (Sections 3-5): information in the weights and activations (fisher),
# t-SNE of the representations (representation), inversion of representations (invert). One job
# per (model, analysis[, method]); with `batch_jobs: true` every analysis of one model runs in one
# job instead (one rule per model, below): the model, its data and torch load once, not up to five times.
from atlib.models.resnet import job_mem_mb


rule fisher:
    input:
        model=out(jobs.MODEL, "model"),
        data=source_meta,
    output:
        **analysis_outputs("fisher"),
    log:
        jobs.FISHER.log(RESULTS),
    priority: PRIORITY["long"]
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: job_mem_mb(wc.arch, "analysis"),
    params:
        jobs=lambda wc: [analysis_job(model_key(wc), "fisher")],
        device=config["device"],
    script:
        "../scripts/analysis.py"


rule representation:
    input:
        model=out(jobs.MODEL, "model"),
        data=source_meta,
    output:
        **analysis_outputs("representation"),
    log:
        jobs.REPRESENTATION.log(RESULTS),
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
    params:
        jobs=lambda wc: [analysis_job(model_key(wc), "representation")],
        device=config["device"],
    script:
        "../scripts/analysis.py"


rule invert:
    input:
        model=out(jobs.MODEL, "model"),
        data=source_meta,
        # Variational and effective inversion perturb the weights with Sigma* from the model's Fisher.
        fisher=lambda wc: analysis_job(model_key(wc), "invert", wc.method)["fisher"],
    output:
        **analysis_outputs("invert"),
    log:
        jobs.INVERT.log(RESULTS),
    priority: PRIORITY["long"]
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: job_mem_mb(wc.arch, "analysis"),
    params:
        jobs=lambda wc: [analysis_job(model_key(wc), "invert", wc.method)],
        device=config["device"],
    script:
        "../scripts/analysis.py"


# One rule per model (fixed output lists, as for transfer_mode0_*); Snakemake prefers these
# wildcard-free rules over the three above wherever both can make a file.
for _path, (_key, _batch) in batched_analyses().items():

    rule:
        name:
            jobs.batch_rule_name("analyses", _key)
        input:
            model=model_file(_key),
            data=dataset_meta(_key.source),
        output:
            [f for j in _batch for f in analysis_outputs(ANALYSIS_NAMES[j.kind], j).values()],
        log:
            f"{RESULTS}/logs/analyses/{_path}.log",
        priority: PRIORITY["long" if any(j.kind is jobs.INVERT for j in _batch) else "short"]
        conda:
            "../../envs/atlib.yaml"
        threads: config["threads"]
        resources:
            mem_mb=job_mem_mb(_key.arch, "analysis"),
        params:
            jobs=[analysis_job(_key, ANALYSIS_NAMES[j.kind], j.method) for j in _batch],
            device=config["device"],
        script:
            "../scripts/analysis.py"
