# aggregate: every result -> results/report/ (tables, figures, paper comparison, claims check).
# `snakemake --report report.html` shows every figure (.png) and table (.html) of that directory
# with the captions in workflow/report/.


report: "../report/workflow.rst"


# Reading a few hundred small files and plotting: not worth a cluster job.
localrules:
    aggregate,


def report_category(wc) -> str:
    name = wc.name
    if name.startswith(("claims", "paper_comparison")):
        return "1. Claims and paper comparison"
    if name.startswith(("table_", "transfers", "sources", "correlations")):
        return "2. Tables"
    if name.startswith(("gap_vs_distance", "mode_comparison", "learning_curves", "source_tradeoff")):
        return "3. Transfer figures"
    return "4. Information, representations, inversion"


rule aggregate:
    input:
        report_inputs(),
    output:
        summary=f"{RESULTS}/report/summary.md",
        report=report(
            directory(f"{RESULTS}/report"),
            patterns=["{name}.png", "{name}.html"],
            caption="../report/result.rst",
            category=report_category,
        ),
    params:
        results=RESULTS,
        # What the report computes from (so a change reruns it); the rest of the config is read too.
        report=config["report"],
        probe=config["distance"]["probe"],
    log:
        f"{RESULTS}/logs/aggregate/aggregate.log",
    resources:
        mem_mb=4000,
    conda:
        "../../envs/atlib.yaml"
    script:
        "../scripts/aggregate.py"
