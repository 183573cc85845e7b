# Per-model analyses (Sections 3-5): information in the weights and activations (fisher),
# t-SNE of the representations (representation), inversion of representations (invert). One job
# per (model, analysis[, method]); with `batch_jobs: true` every analysis of one model runs in one
# job instead (one rule per model, below): the model, its data and torch load once, not up to five times.

def analysis_mem(arch: str) -> int:
    """Per-sample gradients take chunk x parameters floats: more for the big backbones."""
    return {"resnet8": 2000, "resnet18": 8000}.get(arch, 24000)


# Output files of each analysis, by output name.
ANALYSIS_FILES = {
    "fisher": {"fisher": "fisher.pt", "summary": "summary.json"},
    "representation": {"summary": "summary.json", "tsne": "tsne.csv", "tsne_png": "tsne.png"},
    "invert": {"images": "images.png", "curve": "curve.csv", "summary": "summary.json", "recon": "recon.npz"},
}
# Figures shown in `snakemake --report`: (output name, category, subcategory, labels); wildcards in
# braces, filled from the model where the rule has none (analyses_*).
ANALYSIS_FIGURES = {
    "representation": ("tsne_png", "Representations", "{source} {arch}", {"model": "{tag}{eps} s{seed}", "figure": "t-SNE"}),
    "invert": ("images", "Inversion", "{source} {arch} {tag}{eps}", {"model": "{tag}{eps} s{seed}", "method": "{method}"}),
}


def analysis_outputs(kind: str, path: str, method: str | None = None, key: ModelKey | None = None) -> dict:
    """Output files of one analysis of the model at `path` (results/{kind}/{path}[/{method}]), its
    figure flagged for the report; `key` fills the figure's labels in a rule without wildcards."""
    out = f"{RESULTS}/{kind}/{path}" + (f"/{method}" if method else "")
    files = {name: f"{out}/{file}" for name, file in ANALYSIS_FILES[kind].items()}
    if kind in ANALYSIS_FIGURES:
        name, category, sub, labels = ANALYSIS_FIGURES[kind]
        fill = (lambda s: s) if key is None else (
            lambda s: s.format(source=key.source, arch=key.arch, tag=key.tag, eps=key.eps, seed=key.seed, method=method))
        files[name] = report(files[name], category=category, subcategory=fill(sub),
                             labels={k: fill(v) for k, v in labels.items()})
    return files


def analysis_job(key: ModelKey, kind: str, method: str | None = None) -> dict:
    """What the analysis script needs for one analysis of one model. The seed leaves out eps (every
    eps of a source is measured on the same images and probes) and the inversion method (every method
    starts from the same r_0 and inverts the same images, so their loss curves are paired)."""
    out = {name: str(f) for name, f in analysis_outputs(kind, key.path, method).items()}
    fisher = [str(analysis_outputs("fisher", key.path)["fisher"])] if kind == "invert" and method != "plain" else []
    return dict(kind=kind, method=method, model=model_file(key), data=f"{dataset_dir(key.source)}/meta.json",
                fisher=fisher, out_dir=str(Path(out["summary"]).parent), outputs=list(out.values()),
                eps=float(key.eps), cfg=config[kind], seed=job_seed(kind, key.source, key.seed))


def model_analyses(key: ModelKey) -> list[dict]:
    """Every analysis the experiments ask of one model, fisher first (inversion reads its Sigma*)."""
    kinds = {a for name, k in iter_models(config) if k == key for a in config["experiments"][name]["analyses"]}
    jobs = [analysis_job(key, k) for k in ("fisher", "representation") if k in kinds]
    if "invert" in kinds:
        jobs += [analysis_job(key, "invert", m) for m in config["invert"]["methods"]]
    return jobs


def batched_analyses() -> dict[str, tuple[ModelKey, list[dict]]]:
    """{model path: (key, jobs)} of the analyses run as one job per model (batch_jobs)."""
    if not config["batch_jobs"]:
        return {}
    keys = {k.path: k for name, k in experiment_models() if config["experiments"][name]["analyses"]}
    return {path: (key, model_analyses(key)) for path, key in keys.items()}


rule fisher:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
    output:
        **analysis_outputs("fisher", MODEL_PATH),
    params:
        jobs=lambda wc: [analysis_job(model_key(wc), "fisher")],
        device=config["device"],
    log:
        f"{RESULTS}/logs/fisher/{MODEL_PATH}.log",
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: analysis_mem(wc.arch),
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/analysis.py"


rule representation:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
    output:
        **analysis_outputs("representation", MODEL_PATH),
    params:
        jobs=lambda wc: [analysis_job(model_key(wc), "representation")],
        device=config["device"],
    log:
        f"{RESULTS}/logs/representation/{MODEL_PATH}.log",
    threads: config["threads"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/analysis.py"


rule invert:
    input:
        model=f"{RESULTS}/models/{MODEL_PATH}/model.pt",
        data=lambda wc: f"{dataset_dir(wc.source)}/meta.json",
        # Variational and effective inversion perturb the weights with Sigma* from the model's Fisher.
        fisher=lambda wc: analysis_job(model_key(wc), "invert", wc.method)["fisher"],
    output:
        **analysis_outputs("invert", MODEL_PATH, "{method}"),
    params:
        jobs=lambda wc: [analysis_job(model_key(wc), "invert", wc.method)],
        device=config["device"],
    log:
        f"{RESULTS}/logs/invert/{MODEL_PATH}/{{method}}.log",
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: analysis_mem(wc.arch),
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/analysis.py"


# One rule per model (fixed output lists, as for transfer_mode0_*); Snakemake prefers these
# wildcard-free rules over the three above wherever both can make a file.
for _path, (_key, _jobs) in batched_analyses().items():

    rule:
        name:
            "analyses_" + _path.replace("/", "_").replace(".", "p")
        input:
            model=model_file(_key),
            data=f"{dataset_dir(_key.source)}/meta.json",
        output:
            [f for j in _jobs for f in analysis_outputs(j["kind"], _path, j["method"], _key).values()],
        params:
            jobs=_jobs,
            device=config["device"],
        log:
            f"{RESULTS}/logs/analyses/{_path}.log",
        threads: config["threads"]
        resources:
            mem_mb=analysis_mem(_key.arch),
        conda:
            "../../envs/atlib.yaml"
        script:
            "../scripts/analysis.py"
