# aggregate: every result -> results/report/ (tables, figures, paper comparison, claims check).
# `snakemake --report report.html` shows every figure (.png) and table (.html) of that directory
# with the captions in workflow/report/.


report: "../report/workflow.rst"


# Reading a few hundred small files and plotting: not worth a cluster job.
localrules:
    aggregate,


rule aggregate:
    input:
        report_inputs(),
    output:
        summary=out(jobs.REPORT, "summary"),
        report=report(
            directory(f"{RESULTS}/{jobs.REPORT.folder}"),
            patterns=["{name}.png", "{name}.html"],
            caption="../report/result.rst",
            category=report_category,
        ),
    log:
        jobs.REPORT.log(RESULTS),
    conda:
        "../../envs/atlib.yaml"
    resources:
        mem_mb=4000,
    params:
        # What the report computes from (so a change reruns it); the rest of the config is read too.
        report=config["report"],
        probe=config["distance"]["probe"],
    script:
        "../scripts/aggregate.py"
