# transfer: a new head on a source model, fine-tuned on a target with the experiment's finetune
# schedule (modes of the paper's Appendix C). One job per (source model, target, mode); with
# `batch_jobs: true` all mode-0 transfers of one source model run in one job instead (one rule per
# model, below), which saves a few seconds of start-up per target on small targets.


# The experiment that asked for each transfer gives its finetune schedule (atlib.config).
TRANSFER_EXPERIMENT = transfer_experiments(config)
TRANSFER_OUT = f"{RESULTS}/transfer/{MODEL_PATH}/{{target}}/mode{{mode}}"


def finetune_schedule(key: ModelKey, target: str, mode: int) -> dict:
    name = TRANSFER_EXPERIMENT[(key.path, target, mode)]
    return config["finetune_schedules"][config["experiments"][name]["finetune"]]


def transfer_mem_mb(arch: str) -> int:
    # Mode 0 holds the trunk outputs of the whole target in memory (finetune_schedules.*.cache_max_mb).
    return {"resnet8": 2500, "resnet18": 8000, "resnet50": 20000}.get(arch, 48000)


def transfer_job(key: ModelKey, target: str, mode: int) -> dict:
    """What the transfer script needs for one (model, target, mode); eps is left out of the seed on
    purpose (as in train_seed): the standard and robust transfers of one seed share head
    initialization, data order and attack noise, a paired comparison."""
    out = f"{RESULTS}/transfer/{key.path}/{target}/mode{mode}"
    return dict(target=target, mode=mode, target_dir=dataset_dir(target), out_dir=out, model_key=key.path,
                arch=key.arch, schedule=finetune_schedule(key, target, mode),
                seed=job_seed("transfer", key.source, key.arch, key.seed, target, mode),
                wildcards=dict(source=key.source, arch=key.arch, tag=key.tag, eps=key.eps, seed=str(key.seed),
                               target=target, mode=str(mode)))


def batched_mode0():
    """{model path: (key, [targets])} of the mode-0 transfers run as one job per model."""
    batches = {}
    if config["batch_jobs"]:
        for key, target, mode in transfer_jobs():
            if mode == 0:
                batches.setdefault(key.path, (key, []))[1].append(target)
    return batches


rule transfer:
    input:
        model=lambda wc: model_file(model_key(wc)),
        target=lambda wc: f"{dataset_dir(wc.target)}/meta.json",
    output:
        metrics=f"{TRANSFER_OUT}/metrics.json",
        history=f"{TRANSFER_OUT}/history.csv",
    params:
        jobs=lambda wc: [transfer_job(model_key(wc), wc.target, int(wc.mode))],
        device=config["device"],
        tracking=config["tracking"],
        results=RESULTS,
    log:
        f"{RESULTS}/logs/transfer/{MODEL_PATH}/{{target}}/mode{{mode}}.log",
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: transfer_mem_mb(wc.arch),
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/transfer.py"


# One rule per source model: Snakemake rules need a fixed output list, and each model has its own.
# Snakemake prefers a rule without wildcards where two can make a file, so these win over `transfer`.
for _path, (_key, _targets) in batched_mode0().items():

    rule:
        name:
            "transfer_mode0_" + _path.replace("/", "_").replace(".", "p")
        input:
            model=model_file(_key),
            target=[f"{dataset_dir(t)}/meta.json" for t in _targets],
        output:
            metrics=[f"{RESULTS}/transfer/{_path}/{t}/mode0/metrics.json" for t in _targets],
            history=[f"{RESULTS}/transfer/{_path}/{t}/mode0/history.csv" for t in _targets],
        params:
            jobs=[transfer_job(_key, t, 0) for t in _targets],
            device=config["device"],
            tracking=config["tracking"],
            results=RESULTS,
        log:
            f"{RESULTS}/logs/transfer/{_path}/mode0.log",
        threads: config["threads"]
        resources:
            mem_mb=transfer_mem_mb(_key.arch),
        conda:
            "../../envs/atlib.yaml"
        script:
            "../scripts/transfer.py"
