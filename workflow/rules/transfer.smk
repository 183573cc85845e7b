# transfer: one job per (source model, target, mode): a new head on the source model, fine-tuned
# on the target with the experiment's finetune schedule (modes of the paper's Appendix C).


# The experiment that asked for each transfer gives its finetune schedule (atlib.config).
TRANSFER_EXPERIMENT = transfer_experiments(config)


def finetune_schedule(wc) -> dict:
    name = TRANSFER_EXPERIMENT[(model_key(wc).path, wc.target, int(wc.mode))]
    return config["finetune_schedules"][config["experiments"][name]["finetune"]]


def transfer_mem_mb(wc) -> int:
    # Mode 0 holds the trunk outputs of the whole target in memory (finetune_schedules.*.cache_max_mb).
    return {"resnet8": 2500, "resnet18": 8000, "resnet50": 20000}.get(wc.arch, 48000)


def transfer_seed(wc) -> int:
    # eps is left out on purpose (as in train_seed): the standard and robust transfers of one
    # seed share head initialization, data order and attack noise, a paired comparison.
    return job_seed("transfer", wc.source, wc.arch, wc.seed, wc.target, wc.mode)


rule transfer:
    input:
        model=lambda wc: model_file(model_key(wc)),
        target=lambda wc: f"{dataset_dir(wc.target)}/meta.json",
    output:
        metrics=f"{RESULTS}/transfer/{MODEL_PATH}/{{target}}/mode{{mode}}/metrics.json",
        history=f"{RESULTS}/transfer/{MODEL_PATH}/{{target}}/mode{{mode}}/history.csv",
    params:
        schedule=finetune_schedule,
        model_key=lambda wc: model_key(wc).path,
        seed=transfer_seed,
        device=config["device"],
        tracking=config["tracking"],
        results=RESULTS,
    log:
        f"{RESULTS}/logs/transfer/{MODEL_PATH}/{{target}}/mode{{mode}}.log",
    threads: config["threads"]
    resources:
        mem_mb=transfer_mem_mb,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/transfer.py"
