"""Aggregation of every result file into the paper's tables and figures, the paper comparison,
the claims check and `summary.md` (rule aggregate; all files flat in results/report/).

May import every stage up to atlib.transfer.

    from atlib.report import aggregate
    files = aggregate(config, "results/report")
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from atlib.core import numerics
from atlib.report import figures as F
from atlib.report.claims import check_claims, claims_markdown, effect_text, stability_text
from atlib.report.info import information_table, inversion_table
from atlib.report.ladders import ladder_figure, ladder_findings, ladder_table
from atlib.report.load import Results, expected_jobs, load_results
from atlib.report.paper import paper_comparison, write_paper_comparison
from atlib.report.robustness import robustness_display, robustness_finding, robustness_table
from atlib.report.stats import correlation_table, gap_frame, gap_summary
from atlib.report.tables import html_page, markdown_table, write_all_tables
from atlib.spec import jobs, provenance
from atlib.spec.grid import base_set

__all__ = ["aggregate", "load_results", "expected_jobs", "Results", "check_claims", "paper_comparison",
           "correlation_table", "gap_frame", "gap_summary", "information_table", "inversion_table"]

log = logging.getLogger("atlib.report")

def _tidy(out: Path, stem: str, df: pd.DataFrame, title: str, note: str = "") -> list[Path]:
    """A results table as CSV, plus HTML for the Snakemake report."""
    df.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.html").write_text(html_page(title, df.to_html(index=False, na_rep="—", float_format="%.4g"),
                                                note))
    return [out / f"{stem}.csv", out / f"{stem}.html"]


@dataclass
class _Sections:
    """The report's files in order, by section, with their captions (summary.md lists them)."""

    out: Path
    entries: list[tuple[str, list[Path], str]] = field(default_factory=list)

    def add(self, section: str, files: list[Path], caption: str) -> None:
        if files:
            self.entries.append((section, files, caption))


def aggregate(config: dict, out_dir: str | Path, results_dir: str | Path | None = None) -> list[Path]:
    """Write every table, figure, comparison and the claims check of `config`'s results.

    Args:
        config: the (checked) workflow config.
        out_dir: the report directory (results/report).
        results_dir: where the result files are (default config["results"]).

    Returns:
        The files written, summary.md last.
    """
    rep = config["report"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = load_results(config, results_dir)
    groups = res.experiment_groups()
    sec = _Sections(out)
    n_boot = int(rep["bootstrap"])
    _results_section(sec, res, rep, groups)
    _ladders_section(sec, res)
    _tables_section(sec, res)
    _figures_section(sec, res, groups, n_boot)
    _information_section(sec, res)
    sec.add("Paper", write_paper_comparison(res, out), "Our top-1 beside the paper's where the setting (source, "
            "arch, eps, target, mode) matches one of the paper's tables; otherwise a note says none matches.")
    root = Path(results_dir if results_dir is not None else config["results"])
    _targets_section(sec, root)
    claims = _claims_section(sec, res, n_boot)
    entries = sec.entries
    summary = out / "summary.md"
    summary.write_text(_summary(res, entries, claims, out, _numerics_lines(config, root)))
    files = [p for _, fs, _ in entries for p in fs] + [summary]
    log.info("report: %d files in %s (%d missing results)", len(files), out, len(res.missing))
    return files


def _results_section(sec: _Sections, res: Results, rep: dict, groups: list[tuple[str, str]]) -> None:
    """Tidy tables: every transfer and source model, PGD vs AutoAttack, which distance predicts the gap."""
    out, add = sec.out, sec.add
    pgd = sorted((c for c in res.transfers.columns if c.startswith("pgd_acc_")), key=lambda c: float(c[8:]))
    tcols = ["source", "arch", "eps", "seed", "target", "mode", "top1"] + pgd + ["distance", "similarity", "otdd"]
    tcols += [c for c in res.transfers.columns if c not in tcols]
    add("Results", _tidy(out, "transfers", res.transfers[tcols], "All transfers (tidy)",
                         "distance = EMD of the target from the source under the probe model; top1 and pgd_acc "
                         "in percent; empty = missing result"),
        "Every transfer: top-1 and PGD accuracy [%], with the EMD distance, domain similarity and OTDD-style "
        "distance of the target from the source.")
    add("Results", _tidy(out, "sources", res.sources, "Source models"),
        "Every source model: natural and PGD accuracy [%] per test eps (and AutoAttack where evaluated), weight "
        "norm, training time.")
    robust = robustness_table(res)
    if not robust.empty:
        finding = robustness_finding(robust)
        (out / "robustness.md").write_text(finding + "\n\n" + markdown_table(robustness_display(robust)) + "\n")
        add("Results", _tidy(out, "robustness", robust, "PGD vs AutoAttack", finding)[:1] + [out / "robustness.md",
                                                                                           out / "robustness.html"],
            "Robust accuracy of record: AutoAttack beside PGD on the same test images, per source model and "
            "attacked eps, each with its 95% Wilson interval, and PGD's overstatement (PGD - AutoAttack, points) "
            "with its paired 95% interval (Newcombe) from the images robust to one attack only.")

    corr = correlation_table(res.transfers, res.distances, groups, int(rep["bootstrap"]), partial(base_set, res.config))
    add("Results", _tidy(out, "correlations", corr, "Which distance predicts the gap",
                         f"n = independent base sets; 95% three-stage bootstrap intervals (base sets, targets, seeds; "
                         f"{rep['bootstrap']} resamples), two-level permutation p; rank 1 = the largest "
                         "sign-aligned Spearman rho; EMD is the pre-declared primary"),
        f"Which task distance predicts the gap: per source, arch, robust eps and mode, every distance (EMD, "
        f"Gaussian and exact OTDD, Task2Vec) and LogME ranked by the Spearman correlation of the mean gap with it "
        f"(times its expected sign), over independent base sets: two-level permutation p-value, 95% three-stage "
        f"bootstrap interval ({rep['bootstrap']} resamples), the verdict rule, and Pearson's r.")


def _targets_section(sec: _Sections, root: Path) -> None:
    """Your targets: every recommendation made for a user's image folder (atlib.workflow.recommend), where any."""
    import shutil

    for name in jobs.recommendations(str(root)):
        where = root / jobs.RECOMMEND.folder / name
        ranking = pd.read_csv(where / "ranking.csv")
        first = ranking.iloc[0]
        note = (f"first pick {first['model']} ({first['basis']}"
                f"{', extrapolated' if bool(first['extrapolated']) else ''}); summary: {where / 'summary.md'}")
        files = _tidy(sec.out, f"target_{name}", ranking, f"Your target {name}: which model to fine-tune", note)
        for ext in (".png", ".pdf"):
            if (where / f"ranking{ext}").is_file():
                shutil.copyfile(where / f"ranking{ext}", sec.out / f"target_{name}{ext}")
        sec.add("Your targets", [sec.out / f"target_{name}.png"], f"{name}: predicted mode-0 top-1 against the "
                "source model's eps, with 95% prediction intervals (measured top-1 where --confirm ran).")
        sec.add("Your targets", files, f"{name}: the candidates ranked ({note}).")


def _ladders_section(sec: _Sections, res: Results) -> None:
    """Graded target ladders, where the config has any."""
    out, add = sec.out, sec.add
    ladders = ladder_table(res)
    if not ladders.empty:
        findings = ladder_findings(ladders)
        add("Ladders", _tidy(out, "ladders", ladders, "Target ladders", "; ".join(findings)),
            "Graded target ladders: per level, the transform strength, the EMD from the source (standard probe) "
            "and the gap with its 95% t-interval over seeds. " + " ".join(f"{f}." for f in findings))
        add("Ladders", ladder_figure(ladders, out), "Gap (95% CI over seeds) and EMD against the transform "
            "strength, one panel per ladder (mode 0).")


def _tables_section(sec: _Sections, res: Results) -> None:
    """The paper's tables."""
    out, add = sec.out, sec.add
    tables = write_all_tables(res, out)
    for p in tables:
        if p.suffix == ".md":
            kind = p.stem.split("_")[1]
            add("Tables", [p.with_suffix(".csv"), p, p.with_suffix(".html")], {
                "transfer": "Top-1 [%] of robust and standard backbones per target and mode (Tables 1, 2, 6, 7).",
                "gap": "Gap top1(robust) - top1(standard) per target and mode (Tables 8, 9, 10).",
                "arch": "Robust, standard and gap rows per architecture (Tables 3, 11, 12).",
            }[kind])


def _figures_section(sec: _Sections, res: Results, groups: list[tuple[str, str]], n_boot: int) -> None:
    """Transfer figures per experiment group and mode, and the source models' trade-off."""
    out, add = sec.out, sec.add
    for i, (source, arch) in enumerate(groups):
        modes = sorted(res.transfers[(res.transfers["source"] == source)
                                     & (res.transfers["arch"] == arch)]["mode"].unique())
        for mode in modes:
            stems = [f"gap_vs_distance_{source}_{arch}_mode{mode}"]
            if i == 0 and mode == modes[0]:
                stems.append("gap_vs_distance")  # a stable name for the first experiment
            add("Figures", F.gap_vs_distance(res, source, arch, int(mode), n_boot, out, stems),
                f"Gap vs EMD task distance, {source} ({arch}), mode {mode} (Figures 3, 7, 8); points are targets, "
                "error bars the std over seeds; the legend gives Spearman/Pearson with 95% bootstrap CIs."
                + (" Also saved as gap_vs_distance.png." if len(stems) > 1 else ""))
            add("Figures", F.distance_grid(res, source, arch, int(mode), n_boot, out),
                f"Gap vs each task measure, {source} ({arch}), mode {mode}: one panel per distance (EMD, the "
                "primary; Gaussian and exact OTDD; Task2Vec) and LogME; legends give Spearman ρ with its 95% "
                "bootstrap CI and permutation p per robust eps.")
        add("Figures", F.mode_comparison(res, source, arch, out),
            f"Gap per target for each fine-tuning mode, {source} ({arch}) (Figure 14).")
        add("Figures", F.learning_curves(res, source, arch, out),
            f"Target test top-1 per fine-tuning epoch, robust vs standard, per mode, {source} ({arch}) "
            "(Figures 10-13).")
    add("Figures", F.source_tradeoff(res, out),
        "Source models: natural and PGD accuracy against the training eps (claim 1).")


def _information_section(sec: _Sections, res: Results) -> None:
    """Information in the weights and activations, representations, inversion."""
    out, add = sec.out, sec.add
    add("Information", F.fisher_vs_eps(res, out), "Mean log-variance of the optimal weight posterior Σ* vs eps "
        "(Figure 4).")
    add("Information", F.weight_norm_vs_eps(res, out), "Weight norm during training and at the end vs eps "
        "(Figure 5).")
    add("Information", F.input_fisher_vs_eps(res, out), "Input Fisher: top eigenvalue λ1 and tr(S)/n vs eps "
        "(claim 12).")
    add("Information", F.tsne_grid(res, out), "t-SNE of final representations per eps (Figure 6).")
    add("Information", F.inversion_curves(res, out), "Inversion loss per step for plain, variational and "
        "effective inversion (Figure 2).")
    add("Information", F.inversion_grid(res, out), "Reconstructions per training eps (rows) for a few test "
        "images and a photo: the original, then plain, variational and effective inversion, each titled with "
        "its PSNR [dB] and SSIM against the original (Figures 1 and 9; the paper: an optimal eps, below it "
        "inversion fails, above it details are lost).")
    info = information_table(res)
    add("Information", _tidy(out, "information", info, "Information per model"),
        "Per analysed model: Fisher log-variance, KL, input-Fisher λ1 and tr/n, kNN accuracy, silhouette, "
        "final weight norm.")
    if not res.fisher_sweep.empty:
        add("Information", _tidy(out, "posterior_sweep", res.fisher_sweep, "Weight posterior over the beta sweep",
                                 "beta = 4 B / k for a loss budget B (nats); loss_increase is the measured training-"
                                 "loss increase under one draw of Q*, to compare with B"),
            "Sensitivity of the weight posterior (claim 9): per model and loss budget B, beta = 4B/k, the mean "
            "log-variance of Σ*, KL(Q*‖P), and the measured training-loss increase and accuracy under one draw "
            "of Q* (the calibration's sanity check: the increase should be of the order of B).")
    add("Information", _tidy(out, "inversion", inversion_table(res), "Inversion speed",
                             "ratio = plain's steps / the method's steps to reach plain's final loss"),
        "Inversion: final loss per method, and the steps each method needs to reach the loss plain inversion "
        "reaches with its whole budget (ratio; the paper reports ~40x for variational).")


def _claims_section(sec: _Sections, res: Results, n_boot: int) -> pd.DataFrame:
    """The paper's claims judged on this run."""
    out, add = sec.out, sec.add
    claims = check_claims(res, n_boot)
    claims.to_csv(out / "claims.csv", index=False)
    md = claims_markdown(claims)
    (out / "claims.md").write_text(md)
    (out / "claims.html").write_text(html_page("Claims check", claims.to_html(index=False, escape=True),
                                               md.split("\n\n")[1]))
    add("Claims", [out / "claims.md", out / "claims.csv", out / "claims.html"],
        "Every claim of the paper judged on this run by one rule (holds / does not hold / inconclusive / not "
        "testable here), with the effect, its 95% interval, n, the test and the numbers behind each verdict.")
    return claims


def _numerics_lines(config: dict, root: Path) -> list[str]:
    """The "Machine and numerics" block: this job's machine, and the setups (CPU, ISA, torch's kernels,
    pinning variables) the result jobs' provenance records name; bits differ across setups."""
    here = numerics.describe(config)
    recs = [rec["numerics"] for job in jobs.result_jobs(config)
            if (rec := provenance.load(provenance.record_path(job.outputs(str(root)).values())))
            and isinstance(rec.get("numerics"), dict)]
    setups = Counter(numerics.setup_key(r) for r in recs)
    lines = ["## Machine and numerics", "", f"- This report: {numerics.summary(here)}."]
    if not recs:
        return lines + ["- No result job recorded its numerics (results from before atlib recorded them).", ""]
    if len(setups) == 1 and numerics.setup_key(here) in setups:
        return lines + [f"- Result jobs: {len(recs)} recorded their numerics, all on this report's setup.", ""]
    n = len(setups)
    lines.append(f"- Result jobs: {len(recs)} recorded their numerics, on **{n} setup{'s' * (n != 1)}** (results "
                 "differ in the last bits across setups; README: Numerics across machines):")
    first = {numerics.setup_key(r): r for r in reversed(recs)}
    lines += [f"  - {n} job{'s' * (n != 1)}: {numerics.summary(first[key])}" for key, n in setups.most_common()]
    return lines + [""]


def _summary(res: Results, entries: list[tuple[str, list[Path], str]], claims: pd.DataFrame, out: Path,
             machine: list[str] | None = None) -> str:
    lines = [
        "# atlib report",
        "",
        f"Everything is in this directory ({out}): tables as CSV (numbers) + Markdown + HTML, figures as PNG + "
        "PDF, `claims.md` (the paper's claims checked), `paper_comparison.md` (our numbers beside the paper's). "
        "A browsable HTML report with every figure and table: `snakemake --report report.html` (same "
        "--configfile as the run).",
        "",
        *(machine or []),
    ]
    if res.missing:
        lines += [f"**{len(res.missing)} result files are missing**; their cells are empty (—):", ""]
        lines += [f"- `{m}`" for m in res.missing[:50]]
        lines += ([f"- ... and {len(res.missing) - 50} more (see the aggregate log)"] if len(res.missing) > 50 else [])
        lines.append("")
    counts = claims["verdict"].value_counts()
    lines += ["## Claims", "", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items())
              + ". Details: [claims.md](claims.md).", ""]
    lines += ["A verdict marked *fragile* changes under another draw of seeds in at least 5% of draws (leave one "
              "seed out, seed bootstrap): read it as provisional.", ""]
    lines += ["| # | claim | verdict | stability | effect [95% CI] | n | test |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['statement']} | **{r['verdict']}** | {stability_text(r)} | {effect_text(r)} | "
              f"{(str(r['n']) + ' ' + r['unit']) if r['n'] else '—'} | {r['test'] or '—'} |"
              for _, r in claims.iterrows()]
    lines.append("")
    section = None
    for sec, files, caption in entries:
        if sec == "Claims":
            continue
        if sec != section:
            lines += [f"## {sec}", ""]
            section = sec
        main = files[0]
        if main.suffix == ".png":
            lines += [f"![{caption}]({main.name})", "", f"*{caption}* ([PDF]({main.with_suffix('.pdf').name}))", ""]
        else:
            links = ", ".join(f"[{p.name}]({p.name})" for p in files)
            lines += [f"- {caption} {links}"]
            md = next((p for p in files if p.suffix == ".md"), None)
            if md is not None and md.name != "summary.md":
                lines += ["", md.read_text()]
            lines.append("")
    return "\n".join(lines) + "\n"
