# transfer: one job per (source model, target, mode): a new head on the source model, fine-tuned
# on the target with the experiment's finetune schedule (modes of the paper's Appendix C).


def _transfer_experiments() -> dict:
    """(model path, target, mode) -> the first experiment asking for that transfer.

    Not `experiment_of`: a model shared by two experiments (e.g. the demo's `demo` with mode 0 and
    `demo_modes` with modes 1, 2) must be fine-tuned with the schedule of the experiment that
    asked for the mode.
    """
    out = {}
    for name, key in iter_models(config):
        exp = config["experiments"][name]
        for target in exp["targets"]:
            for mode in exp["modes"]:
                out.setdefault((key.path, target, int(mode)), name)
    return out


TRANSFER_EXPERIMENT = _transfer_experiments()


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
