# Per-model analyses (Sections 3-5): information in the weights and activations (fisher),
# t-SNE of the representations (representation), inversion of representations (invert).


rule fisher:
    input:
        model=out(jobs.MODEL, "model"),
        data=source_meta,
    output:
        fisher=out(jobs.FISHER, "fisher"),
        summary=out(jobs.FISHER, "summary"),
    params:
        cfg=config["fisher"],
        # eps left out: every eps of a source is measured on the same images and probes.
        seed=lambda wc: job_seed("fisher", wc.source, wc.seed),
        device=config["device"],
    log:
        jobs.FISHER.log(RESULTS),
    threads: config["threads"]
    resources:
        mem_mb=analysis_mem,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/fisher.py"


rule representation:
    input:
        model=out(jobs.MODEL, "model"),
        data=source_meta,
    output:
        summary=out(jobs.REPRESENTATION, "summary"),
        tsne=out(jobs.REPRESENTATION, "tsne"),
        png=report(out(jobs.REPRESENTATION, "png"), category="Representations",
                   subcategory="{source} {arch}", labels={"model": "{tag}{eps} s{seed}", "figure": "t-SNE"}),
    params:
        cfg=config["representation"],
        # Same test images for every eps of a source: t-SNE panels compare like with like.
        seed=lambda wc: job_seed("representation", wc.source, wc.seed),
        device=config["device"],
    log:
        jobs.REPRESENTATION.log(RESULTS),
    threads: config["threads"]
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/representation.py"


rule invert:
    input:
        model=out(jobs.MODEL, "model"),
        data=source_meta,
        fisher=invert_fisher,
    output:
        png=report(out(jobs.INVERT, "png"), category="Inversion",
                   subcategory="{source} {arch} {tag}{eps}",
                   labels={"model": "{tag}{eps} s{seed}", "method": "{method}"}),
        curve=out(jobs.INVERT, "curve"),
        summary=out(jobs.INVERT, "summary"),
        recon=out(jobs.INVERT, "recon"),
    params:
        cfg=config["invert"],
        # The method is left out on purpose: every method of a model starts from the same r_0
        # and inverts the same images, so their loss curves are paired.
        seed=lambda wc: job_seed("invert", wc.source, wc.seed),
        device=config["device"],
    log:
        jobs.INVERT.log(RESULTS),
    threads: config["threads"]
    resources:
        mem_mb=analysis_mem,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/invert.py"
