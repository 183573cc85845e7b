# prepare_dataset: registered or derived dataset -> the uniform format under results/data/.


def derived_base(wc):
    spec = config["datasets"].get(wc.dataset)
    return [f"{dataset_dir(spec['base'])}/meta.json"] if spec else []


rule prepare_dataset:
    input:
        base=derived_base,
    output:
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    params:
        derived=lambda wc: config["datasets"].get(wc.dataset),
        data_root=config["data_root"],
        allow_download=config["allow_download"],
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/prepare_dataset.py"
