# prepare_dataset: registered, derived or image-folder dataset -> the uniform format under results/data/.


rule prepare_dataset:
    input:
        base=derived_base,
        images=folder_images,
    output:
        meta=dataset_meta("{dataset}"),
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    conda:
        "../../envs/atlib.yaml"
    resources:
        mem_mb=4000,
    params:
        derived=derived_spec,
        data_root=config["data_root"],
        allow_download=config["allow_download"],
    script:
        "../scripts/prepare_dataset.py"
