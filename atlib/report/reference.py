"""The demo's verdicts of record, and a run compared with them.

`benchmarks/results/demo_claims.csv` holds one row per claim (verdict, effect, interval, n, unit,
stability) with the machine, the config and the layout it was made with. Floats differ between
CPUs, so a run is compared with this committed reference, never with a remembered number: a
different verdict on a claim the reference calls stable is a warning that names both machines.
A reference of another layout or config is named as such and not compared.

Each demo also writes its comparison as a table (`results/report/reference_check.csv`: per claim, both
verdicts, this run's effect, interval and stability, both machines, the demo's time). `make
demo-crosscheck` keeps that table under `benchmarks/results/crosscheck/`, one file per machine, and the
README's table of record says, per machine, how many verdicts were the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd

from atlib.report.claims import effect_text
from atlib.report.stability import FRAGILE_BELOW, marker
from atlib.spec.schema import merge_files

CROSSCHECK_DIR = "crosscheck"  # beside demo_claims.csv: one check of the demo per other machine
LAYOUT = 1  # the columns below; a reference of another layout is refused by name
COLUMNS = ["claim", "verdict", "effect", "lo", "hi", "n", "unit", "stability", "machine", "config", "config_hash",
           "layout"]


def config_identity(configs: list[str]) -> tuple[str, str]:
    """(the config files as given, a hash of their merged content without `results` and `numerics`):
    two runs of the same configs into different result directories have the same identity, and so do
    runs that pin different CPU kernels: numerics is the machine's side, and verdicts across machines
    are what the reference is compared for."""
    merged = merge_files(configs)
    merged.pop("results", None)
    merged.pop("numerics", None)
    digest = hashlib.sha256(json.dumps(merged, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return " ".join(configs), digest


def reference_frame(claims: pd.DataFrame, machine: str, configs: list[str]) -> pd.DataFrame:
    """The rows of demo_claims.csv for a run's claims.csv."""
    name, digest = config_identity(configs)
    out = claims[["claim", "verdict", "effect", "lo", "hi", "n", "unit", "stability"]].copy()
    return out.assign(machine=machine, config=name, config_hash=digest, layout=LAYOUT)[COLUMNS]


def _stable(stability: float) -> bool:
    return math.isfinite(stability) and stability >= FRAGILE_BELOW


def comparable(ref: pd.DataFrame, configs: list[str]) -> str | None:
    """Why `ref` cannot be compared with a run of `configs` (another layout or config), or None."""
    missing = [c for c in COLUMNS if c not in ref.columns]
    if missing or int(ref["layout"].iloc[0]) != LAYOUT:
        return (f"the reference has another layout (missing {', '.join(missing) or 'nothing'}, layout "
                f"{ref['layout'].iloc[0] if 'layout' in ref else 'none'}; this version writes layout {LAYOUT}): "
                "not compared; remake it with `make demo-reference`")
    name, digest = config_identity(configs)
    if ref["config_hash"].iloc[0] != digest:
        return (f"reference made with config {ref['config'].iloc[0]} ({ref['config_hash'].iloc[0]}), this run "
                f"used {name} ({digest}): not compared")
    return None


CHECK_COLUMNS = ["claim", "verdict", "ref_verdict", "same", "stability", "ref_stability", "effect", "lo", "hi",
                 "n", "unit", "machine", "ref_machine", "config_hash", "wall_s", "peak_rss_mb"]


def check_frame(run: pd.DataFrame, ref: pd.DataFrame, machine: str, wall_s: float = math.nan,
                rss_mb: float = math.nan) -> pd.DataFrame:
    """One row per claim of the reference (a comparable one): this run's verdict, stability, effect and
    interval beside the reference's verdict and stability, `same`, both machines and the run's cost."""
    mine = run.set_index("claim")
    rows = []
    for _, r in ref.iterrows():
        c = int(r["claim"])
        here = mine.loc[c] if c in mine.index else pd.Series(dtype=object)
        rows.append({"claim": c, "verdict": here.get("verdict", "missing"), "ref_verdict": r["verdict"],
                     "same": here.get("verdict") == r["verdict"], "stability": here.get("stability", math.nan),
                     "ref_stability": r["stability"], "effect": here.get("effect", math.nan),
                     "lo": here.get("lo", math.nan), "hi": here.get("hi", math.nan), "n": here.get("n", 0),
                     "unit": here.get("unit", ""), "machine": machine, "ref_machine": r["machine"],
                     "config_hash": r["config_hash"], "wall_s": wall_s, "peak_rss_mb": rss_mb})
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def check_lines(check: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(one line per claim, warnings) of a `check_frame`.

    A claim whose verdict differs is a warning naming both machines when the reference marked it
    stable; where the reference marked it fragile, a difference is what fragile means, and said so."""
    lines, warnings = [], []
    for _, r in check.iterrows():
        c, now, was = int(r["claim"]), r["verdict"], r["ref_verdict"]
        if now == "missing":
            warnings.append(f"claim {c}: in the reference, not in this run")
            continue
        if r["same"]:
            lines.append(f"claim {c:>2}: same verdict as the reference ({now})")
            continue
        text = (f"claim {c:>2}: {now} here, {was} in the reference (stability here {float(r['stability']):.2f}, "
                f"reference {float(r['ref_stability']):.2f})")
        if _stable(float(r["ref_stability"])):
            warnings.append(f"{text}: the reference calls it stable; this machine: {r['machine']}; reference "
                            f"machine: {r['ref_machine']}")
        else:
            lines.append(f"{text}: the reference marks it fragile, so another draw may well differ")
    return lines, warnings


def compare(run: pd.DataFrame, ref: pd.DataFrame, machine: str, configs: list[str]) -> tuple[list[str], list[str]]:
    """(one line per claim, warnings) of this run's claims.csv against demo_claims.csv (`check_lines`), or
    why the two cannot be compared."""
    why = comparable(ref, configs)
    return ([], [why]) if why else check_lines(check_frame(run, ref, machine))


def crosscheck_name(machine: str) -> str:
    """A file name for a machine's check: its CPU model, slugged, and a short hash of the whole line."""
    cpu = re.sub(r"[^a-z0-9]+", "-", machine.split("(")[0].lower()).strip("-") or "machine"
    return f"{cpu}-{hashlib.sha256(machine.encode()).hexdigest()[:8]}.csv"


def crosscheck_summary(check: pd.DataFrame) -> str:
    """One line: the machine, how many verdicts matched the reference (all, and the ones it calls stable),
    and the demo's time there."""
    stable = check[check["ref_stability"].astype(float) >= FRAGILE_BELOW]
    cost = (f"; workflow {float(check['wall_s'].iloc[0]):.0f} s, peak memory "
            f"{float(check['peak_rss_mb'].iloc[0]) / 1000:.2f} GB" if math.isfinite(float(check["wall_s"].iloc[0]))
            else "")
    differ = ", ".join(f"claim {int(c)}" for c in check.loc[~check["same"].astype(bool), "claim"])
    return (f"{check['machine'].iloc[0]}: the same verdict on {int(check['same'].sum())} of {len(check)} claims "
            f"({int(stable['same'].sum())} of {len(stable)} the reference calls stable)"
            + (f"; different: {differ}" if differ else "") + cost)


BEGIN = "<!-- BEGIN demo-claims: generated by `python -m atlib.workflow.demo --measure` from benchmarks/results; do not edit -->"
END = "<!-- END demo-claims -->"


def _stability(r: pd.Series) -> str:
    """The claims check's stability marker, a fragile one in bold."""
    m = marker(r["verdict"], float(r["stability"]))
    return f"**{m}**" if m.startswith("fragile") else m


def readme_block(ref: pd.DataFrame, measured: dict, statements: dict[int, str],
                 checks: list[pd.DataFrame] = ()) -> str:
    """The README's table of record: the committed reference's verdicts, stability and effects, the
    machine and the demo's time and memory; then each other machine's check against it."""
    lines = [BEGIN, "",
             f"Reference run: `{ref['config'].iloc[0]}` on {ref['machine'].iloc[0]}; workflow "
             f"{measured['wall_s']:.0f} s, peak memory {measured['peak_rss_mb'] / 1000:.2f} GB "
             "(`benchmarks/results/demo.json`, `benchmarks/results/demo_claims.csv`).", "",
             "| # | claim | verdict | stability | effect [95% CI] | n |", "|---|---|---|---|---|---|"]
    for _, r in ref.iterrows():
        n = f"{int(r['n'])} {r['unit']}" if int(r["n"]) else "—"
        lines.append(f"| {int(r['claim'])} | {statements.get(int(r['claim']), '')} | {r['verdict']} | "
                     f"{_stability(r)} | {effect_text(r)} | {n} |")
    if measured.get("robustness"):
        lines += ["", f"Robust accuracy of record (`robustness.md`): {measured['robustness']}"]
    current = [c for c in checks if c["config_hash"].iloc[0] == ref["config_hash"].iloc[0]]
    if current:
        lines += ["", "The same demo on other machines (`benchmarks/results/crosscheck/`, `make demo-crosscheck`):", ""]
        lines += [f"- {crosscheck_summary(c)}" for c in current]
    return "\n".join(lines + ["", END])


def sync_readme(readme: Path, reference: Path, measured: Path) -> bool:
    """Rewrite the README's generated block from the committed files; True if it changed."""
    from atlib.report.claims import load_claims

    claims = load_claims()
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no generated block ({BEGIN} ... {END})")
    statements = dict(zip(claims["claim"], claims["statement"]))
    checks = [pd.read_csv(f) for f in sorted((reference.parent / CROSSCHECK_DIR).glob("*.csv"))]
    block = readme_block(pd.read_csv(reference), json.loads(measured.read_text()), statements, checks)
    new = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    readme.write_text(new)
    return new != text


def record_crosscheck(check_csv: Path, results_dir: Path, readme: Path) -> Path:
    """Keep a run's `reference_check.csv` as `<results_dir>/crosscheck/<machine>.csv` and regenerate the
    README's block; refuses a check made against another reference (config or layout)."""
    check = pd.read_csv(check_csv)
    ref = pd.read_csv(results_dir / "demo_claims.csv")
    if check["config_hash"].iloc[0] != ref["config_hash"].iloc[0] or set(check["claim"]) != set(ref["claim"]):
        raise ValueError(f"{check_csv} was made against another reference (config {check['config_hash'].iloc[0]}, "
                         f"the committed one is {ref['config_hash'].iloc[0]}): rerun `make demo` first")
    if (check["machine"] == check["ref_machine"]).all():
        raise ValueError(f"{check_csv} was made on the reference's own machine: nothing to cross-check")
    dest = results_dir / CROSSCHECK_DIR / crosscheck_name(check["machine"].iloc[0])
    dest.parent.mkdir(parents=True, exist_ok=True)
    check.to_csv(dest, index=False)
    sync_readme(readme, results_dir / "demo_claims.csv", results_dir / "demo.json")
    return dest


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Keep a demo's check against the reference (another machine's).")
    ap.add_argument("check", type=Path, help="results/report/reference_check.csv of a finished `make demo`")
    ap.add_argument("--into", type=Path, default=Path("benchmarks/results"), help="where demo_claims.csv lives")
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    args = ap.parse_args()
    dest = record_crosscheck(args.check, args.into, args.readme)
    print(f"kept {dest}; README's table of record updated:\n  {crosscheck_summary(pd.read_csv(dest))}")


if __name__ == "__main__":
    main()
