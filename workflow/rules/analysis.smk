# Per-model analyses (Sections 3-5): information in the weights and activations (fisher),
# t-SNE of the representations (representation), inversion of representations (invert).


def analysis_mem(wc) -> int:
    """Per-sample gradients take chunk x parameters floats: more for the big backbones."""
    return {"resnet8": 2000, "resnet18": 8000}.get(wc.arch, 24000)


def invert_fisher(wc):
    """Variational and effective inversion perturb the weights with Sigma* from the model's Fisher."""
    return [f"{RESULTS}/fisher/{model_key(wc).path}/fisher.pt"] if wc.method != "plain" else []


rule fisher:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
    output:
        fisher=f"{RESULTS}/fisher/{MODEL_PATH}/fisher.pt",
        summary=f"{RESULTS}/fisher/{MODEL_PATH}/summary.json",
    params:
        cfg=config["fisher"],
        # eps left out: every eps of a source is measured on the same images and probes.
        seed=lambda wc: job_seed("fisher", wc.source, wc.seed),
        device=config["device"],
    log:
        f"{RESULTS}/logs/fisher/{MODEL_PATH}.log",
    threads: config["threads"]
    resources:
        mem_mb=analysis_mem,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/fisher.py"


rule representation:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
    output:
        summary=f"{RESULTS}/representation/{MODEL_PATH}/summary.json",
        tsne=f"{RESULTS}/representation/{MODEL_PATH}/tsne.csv",
        png=report(f"{RESULTS}/representation/{MODEL_PATH}/tsne.png", category="Representations",
                   subcategory="{source} {arch}", labels={"model": "{tag}{eps} s{seed}", "figure": "t-SNE"}),
    params:
        cfg=config["representation"],
        # Same test images for every eps of a source: t-SNE panels compare like with like.
        seed=lambda wc: job_seed("representation", wc.source, wc.seed),
        device=config["device"],
    log:
        f"{RESULTS}/logs/representation/{MODEL_PATH}.log",
    threads: config["threads"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/representation.py"


rule invert:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
        fisher=invert_fisher,
    output:
        png=report(f"{RESULTS}/invert/{MODEL_PATH}/{{method}}/images.png", category="Inversion",
                   subcategory="{source} {arch} {tag}{eps}",
                   labels={"model": "{tag}{eps} s{seed}", "method": "{method}"}),
        curve=f"{RESULTS}/invert/{MODEL_PATH}/{{method}}/curve.csv",
        summary=f"{RESULTS}/invert/{MODEL_PATH}/{{method}}/summary.json",
        recon=f"{RESULTS}/invert/{MODEL_PATH}/{{method}}/recon.npz",
    params:
        cfg=config["invert"],
        # The method is left out on purpose: every method of a model starts from the same r_0
        # and inverts the same images, so their loss curves are paired.
        seed=lambda wc: job_seed("invert", wc.source, wc.seed),
        device=config["device"],
    log:
        f"{RESULTS}/logs/invert/{MODEL_PATH}/{{method}}.log",
    threads: config["threads"]
    resources:
        mem_mb=analysis_mem,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/invert.py"
