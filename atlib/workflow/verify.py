"""`python -m atlib.workflow.verify [results]` (`make verify`): do the results still match their inputs?

Walks a results tree and reports every result whose recorded inputs (atlib.spec.provenance) no
longer match the files on disk, every result file changed since it was recorded, every result
built from such a stale result, and every prepared dataset whose files no longer match its
meta.json. Results without a record (a tree from before provenance, or a job killed before
writing it) are listed as not judged. Exit status 1 when anything is stale, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from atlib.data.store import hash_mismatches, rebuild_hint, sha256
from atlib.spec import jobs, provenance


@dataclass
class Report:
    """What `check_tree` found: (result, reason) pairs, each result named by a file Snakemake can rebuild."""

    root: Path
    ok: list[str] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)
    datasets: list[tuple[str, str]] = field(default_factory=list)
    not_judged: list[tuple[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.stale or self.datasets)


class _Hashes(dict):
    """sha256 of each file once per check (a dataset is the input of many results)."""

    def __missing__(self, path: Path) -> str:
        self[path] = sha256(path) if path.is_file() else "missing"
        return self[path]


def _problems(rec: dict, root: Path, hashes: _Hashes) -> list[str]:
    out = []
    for kind, files in (("result file", rec["outputs"]), ("input", rec["inputs"])):
        for name, recorded in files.items():
            if recorded is None:
                continue  # a directory: not hashed when recorded
            now = hashes[provenance.resolve(name, root)]
            if now == "missing":
                out.append(f"{kind} {name} is missing")
            elif now != recorded:
                what = "changed since it was written" if kind == "result file" else "changed"
                out.append(f"{kind} {name} {what}: recorded sha256 {recorded[:12]}..., now {now[:12]}...")
    return out


def _check_records(root: Path, report: Report) -> None:
    hashes = _Hashes()
    # Only the job folders: mlartifacts/ holds copies of the records (MLflow artifacts).
    tops = [root / folder for folder in dict.fromkeys(k.folder for k in jobs.RESULT_KINDS)]
    records = sorted({p for top in tops for pattern in (provenance.NAME, "*." + provenance.NAME)
                      for p in top.rglob(pattern)})
    found: dict[str, dict] = {}
    for path in records:
        rec = provenance.load(path)
        if rec is None or not rec["outputs"]:
            report.not_judged.append((str(path), "unreadable provenance record"))
        else:
            found[str(provenance.resolve(next(iter(rec["outputs"])), root))] = rec
    bad = {name: _problems(rec, root, hashes) for name, rec in found.items()}
    # A result built from a stale result is stale too, however far down the chain.
    changed = True
    while changed:
        changed = False
        stale_outputs = {o for name, why in bad.items() if why for o in found[name]["outputs"]}
        for name, rec in found.items():
            upstream = sorted(set(rec["inputs"]) & stale_outputs)
            if upstream and not bad[name]:
                bad[name] = [f"built from {upstream[0]}, which is stale"]
                changed = True
    for name, why in sorted(bad.items()):
        if why:
            report.stale.append((name, "; ".join(why)))
        else:
            report.ok.append(name)


def _check_datasets(root: Path, report: Report) -> None:
    for meta_path in sorted((root / "data").glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            report.datasets.append((str(meta_path), f"unreadable ({err})"))
            continue
        for path, expected, actual in hash_mismatches(meta_path.parent, meta):
            report.datasets.append((str(path), f"sha256 {actual[:12]}..., meta.json records "
                                    f"{expected[:12]}...; rebuild: {rebuild_hint(meta_path.parent)}"))


def _check_unrecorded(root: Path, report: Report) -> None:
    for job in jobs.found(root):
        if not provenance.job_record(job, root).exists():
            report.not_judged.append((job.path(str(root), job.kind.done), "no provenance record (written before "
                                      "atlib recorded provenance, or by a job killed before it finished)"))


def check_tree(root: str | Path) -> Report:
    """Check every provenance record and prepared dataset under `root` (never raises for bad files)."""
    report = Report(Path(root))
    _check_datasets(report.root, report)
    _check_records(report.root, report)
    _check_unrecorded(report.root, report)
    return report


def format_report(report: Report) -> str:
    lines = [f"verify {report.root}: {len(report.ok) + len(report.stale)} results with provenance, "
             f"{len(report.ok)} match the files they were computed from."]
    sections = [("prepared data files changed since prepare_dataset wrote them", report.datasets),
                ("stale results (rebuild each: snakemake <its file> --force, with the --configfile of your run)",
                 report.stale),
                ("not judged", report.not_judged)]
    for title, items in sections:
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {name}: {why}" for name, why in items]
    if report.clean:
        lines.append("OK: nothing stale" + (" (some results not judged)" if report.not_judged else "") + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="results", help="the results tree (default: results)")
    args = ap.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"verify: {args.results} is not a directory; pass the results tree (config `results`)", file=sys.stderr)
        return 2
    report = check_tree(args.results)
    print(format_report(report))
    return 0 if report.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
