# train_source: one source model per (source, arch, eps, seed), trained with the experiment's
# train schedule, or imported from a published checkpoint (experiments.<name>.pretrained).


def pretrained_checkpoint(wc) -> str:
    """The checkpoint configured for this model's eps, or "" to train it."""
    for eps, path in experiment_of(wc)["pretrained"].items():
        if float(eps) == float(wc.eps):
            return path
    return ""


def train_seed(wc) -> int:
    # eps is left out on purpose: models that differ only in eps share initialization and data
    # order, so robust-vs-standard gaps are paired comparisons.
    return job_seed("train_source", wc.source, wc.arch, wc.seed)


rule train_source:
    input:
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
        checkpoint=lambda wc: [pretrained_checkpoint(wc)] if pretrained_checkpoint(wc) else [],
    output:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        history=f"{RESULTS}/models/{MODEL_PATH}/history.csv",
        metrics=f"{RESULTS}/models/{MODEL_PATH}/metrics.json",
    params:
        width=lambda wc: experiment_of(wc)["width"],
        schedule=lambda wc: config["train_schedules"][experiment_of(wc)["train"]],
        pretrained=pretrained_checkpoint,
        rng_seed=train_seed,
        device=config["device"],
        tracking=config["tracking"],
        results=RESULTS,
    log:
        f"{RESULTS}/logs/train_source/{MODEL_PATH}.log",
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: 16000 if wc.arch.startswith("resnet50") else 4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/train_source.py"
