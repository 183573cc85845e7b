# train_source: one source model per (source, arch, eps, seed), trained with the experiment's
# train schedule, or imported from a published model (experiments.<name>.pretrained names a
# source_models entry).


def pretrained_source(wc):
    """(name, source_models entry) imported as this model, or None to train it."""
    return pretrained_entry(config, experiment_of(wc), wc.eps)


def pretrained_input(wc) -> list[str]:
    """The weights file an import reads; none when the job may download it (allow_download)."""
    got = pretrained_source(wc)
    path = source_file(got[1]) if got else None
    return [str(path)] if path is not None and (path.is_file() or not got[1]["allow_download"]) else []


def train_seed(wc) -> int:
    # eps is left out on purpose: models that differ only in eps share initialization and data
    # order, so robust-vs-standard gaps are paired comparisons.
    return job_seed("train_source", wc.source, wc.arch, wc.seed)


rule train_source:
    input:
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
        checkpoint=pretrained_input,
    output:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        history=f"{RESULTS}/models/{MODEL_PATH}/history.csv",
        metrics=f"{RESULTS}/models/{MODEL_PATH}/metrics.json",
    params:
        width=lambda wc: experiment_of(wc)["width"],
        schedule=lambda wc: config["train_schedules"][experiment_of(wc)["train"]],
        pretrained=pretrained_source,
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
