# Task distances (Cui et al. EMD, domain similarity, Gaussian and exact OTDD, Task2Vec) and LogME of a
# probe model.
# features: one cache per (probe, dataset); task_distance: the probe's source cache + a dataset's.
# With `batch_jobs: true` one job per probe does both for the source and every target (rule
# distances_<probe>, below). All run workflow/scripts/distance.py on lists of feature and distance jobs.


rule features:
    input:
        model=out(jobs.MODEL, "model"),
        data=dataset_meta("{dataset}"),
    output:
        features=out(jobs.FEATURES, "features"),
    log:
        jobs.FEATURES.log(RESULTS),
    priority: PRIORITY["long"]
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
    params:
        **DISTANCE_PARAMS,
        probe=lambda wc: model_key(wc).path,
        features=lambda wc: [feature_job(model_key(wc), wc.dataset)],
        distances=[],
    script:
        "../scripts/distance.py"


rule task_distance:
    input:
        source=lambda wc: wildcard_features(wc, wc.source),
        target=lambda wc: wildcard_features(wc, wc.dataset),
        # Task2Vec: the probe's Fisher on images of both datasets
        model=out(jobs.MODEL, "model"),
        source_data=source_meta,
        target_data=dataset_meta("{dataset}"),
    output:
        json=out(jobs.DISTANCE, "json"),
    log:
        jobs.DISTANCE.log(RESULTS),
    priority: PRIORITY["long"]
    conda:
        "../../envs/atlib.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
    params:
        **DISTANCE_PARAMS,
        probe=lambda wc: model_key(wc).path,
        features=[],
        distances=lambda wc: [distance_job(model_key(wc), wc.dataset)],
    script:
        "../scripts/distance.py"


# One rule per probe: Snakemake rules need a fixed output list, and each probe has its own datasets.
# Snakemake prefers a rule without wildcards where two can make a file, so these win over the two above.
for _path, (_probe, _batch) in batched_distances().items():

    rule:
        name:
            jobs.batch_rule_name("distances", _probe)
        input:
            model=model_file(_probe),
            data=[dataset_meta(j.dataset) for j in _batch],
        output:
            features=[feature_job(_probe, j.dataset)["out"] for j in _batch],
            json=jobs.outputs(_batch, RESULTS, ["json"]),
        log:
            f"{RESULTS}/logs/distance/{_path}.log",
        priority: PRIORITY["long"]
        conda:
            "../../envs/atlib.yaml"
        threads: config["threads"]
        resources:
            mem_mb=8000,
        params:
            **DISTANCE_PARAMS,
            probe=_path,
            features=[feature_job(_probe, j.dataset) for j in _batch],
            distances=[distance_job(_probe, j.dataset) for j in _batch],
        script:
            "../scripts/distance.py"
