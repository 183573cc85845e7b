# Task distances (Cui et al. EMD, domain similarity, Gaussian and exact OTDD, Task2Vec) and LogME of a
# probe model.
# features: one cache per (probe, dataset); task_distance: the probe's source cache + a dataset's.
# With `batch_jobs: true` one job per probe does both for the source and every target (rule
# distances_<probe>, below). All run workflow/scripts/distance.py on lists of feature and distance jobs.

DISTANCE_OUT = f"{RESULTS}/distance/{MODEL_PATH}"


def feature_job(probe: ModelKey, dataset: str) -> dict:
    # Same images of a dataset for every probe (the seed leaves the probe out).
    return dict(dataset=dataset, data=f"{dataset_dir(dataset)}/meta.json",
                out=f"{RESULTS}/distance/{probe.path}/{dataset}.features.npz", seed=job_seed("features", dataset))


def distance_job(probe: ModelKey, dataset: str) -> dict:
    feats = f"{RESULTS}/distance/{probe.path}/{{}}.features.npz"
    return dict(source=feats.format(probe.source), target=feats.format(dataset),
                source_data=f"{dataset_dir(probe.source)}/meta.json", target_data=f"{dataset_dir(dataset)}/meta.json",
                out=f"{RESULTS}/distance/{probe.path}/{dataset}.json", seed=job_seed("otdd", probe.path))


def batched_distances():
    """{probe path: (probe, [source and targets])} of the distances run as one job per probe."""
    batches = {}
    if config["batch_jobs"]:
        for probe, ds in distance_jobs():
            batches.setdefault(probe.path, (probe, []))[1].append(ds)
    return batches


DISTANCE_PARAMS = dict(max_images=config["distance"]["max_images"], batch_size=config["distance"]["batch_size"],
                       gamma=config["distance"]["gamma"], pca_dim=config["distance"]["pca_dim"],
                       otdd_points=config["distance"]["otdd_points"],
                       task2vec_images=config["distance"]["task2vec_images"], device=config["device"])


rule features:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        features=f"{DISTANCE_OUT}/{{dataset}}.features.npz",
    params:
        probe=lambda wc: model_key(wc).path,
        features=lambda wc: [feature_job(model_key(wc), wc.dataset)],
        distances=[],
        **DISTANCE_PARAMS,
    log:
        f"{RESULTS}/logs/features/{MODEL_PATH}/{{dataset}}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/distance.py"


rule task_distance:
    input:
        source=f"{DISTANCE_OUT}/{{source}}.features.npz",
        target=f"{DISTANCE_OUT}/{{dataset}}.features.npz",
        # Task2Vec: the probe's Fisher on images of both datasets
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        source_data=f"{RESULTS}/data/{{source}}/meta.json",
        target_data=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        json=f"{DISTANCE_OUT}/{{dataset}}.json",
    params:
        probe=lambda wc: model_key(wc).path,
        features=[],
        distances=lambda wc: [distance_job(model_key(wc), wc.dataset)],
        **DISTANCE_PARAMS,
    log:
        f"{RESULTS}/logs/task_distance/{MODEL_PATH}/{{dataset}}.log",
    threads: config["threads"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/distance.py"


# One rule per probe: Snakemake rules need a fixed output list, and each probe has its own datasets.
# Snakemake prefers a rule without wildcards where two can make a file, so these win over the two above.
for _path, (_probe, _datasets) in batched_distances().items():

    rule:
        name:
            "distances_" + _path.replace("/", "_").replace(".", "p")
        input:
            model=model_file(_probe),
            data=[f"{dataset_dir(ds)}/meta.json" for ds in _datasets],
        output:
            features=[feature_job(_probe, ds)["out"] for ds in _datasets],
            json=[distance_job(_probe, ds)["out"] for ds in _datasets],
        params:
            probe=_path,
            features=[feature_job(_probe, ds) for ds in _datasets],
            distances=[distance_job(_probe, ds) for ds in _datasets],
            **DISTANCE_PARAMS,
        log:
            f"{RESULTS}/logs/distance/{_path}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        conda:
            "../../envs/atlib.yaml"
        script:
            "../scripts/distance.py"
