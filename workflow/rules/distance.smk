# Task distance (Cui et al. EMD, domain similarity, OTDD-style) in a probe model's feature space.
# features: one cache per (probe, dataset); task_distance: the probe's source cache + a dataset's.


rule features:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=f"{RESULTS}/data/{{dataset}}/meta.json",
    output:
        features=f"{RESULTS}/distance/{MODEL_PATH}/{{dataset}}.features.npz",
    params:
        probe=lambda wc: model_key(wc).path,
        max_images=config["distance"]["max_images"],
        batch_size=config["distance"]["batch_size"],
        device=config["device"],
        # Same images of a dataset for every probe.
        seed=lambda wc: job_seed("features", wc.dataset),
    log:
        f"{RESULTS}/logs/features/{MODEL_PATH}/{{dataset}}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/features.py"


rule task_distance:
    input:
        source=f"{RESULTS}/distance/{MODEL_PATH}/{{source}}.features.npz",
        target=f"{RESULTS}/distance/{MODEL_PATH}/{{dataset}}.features.npz",
    output:
        json=f"{RESULTS}/distance/{MODEL_PATH}/{{dataset}}.json",
    params:
        gamma=config["distance"]["gamma"],
        pca_dim=config["distance"]["pca_dim"],
        otdd_points=config["distance"]["otdd_points"],
        seed=lambda wc: job_seed("otdd", model_key(wc).path),
    log:
        f"{RESULTS}/logs/task_distance/{MODEL_PATH}/{{dataset}}.log",
    threads: config["threads"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/task_distance.py"
