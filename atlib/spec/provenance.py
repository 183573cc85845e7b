"""Provenance of every result: the bytes that went in and came out, the config and the code.

Each rule's script calls `record(inputs, outputs, config)` once its outputs are written. It
writes `provenance.json` beside them (`<name>.provenance.json` for a job with one output file
in a shared folder, such as a task distance), holding the sha256 of every input file the job
read (a prepared dataset's `meta.json` brings the data files it lists), of every output, the
config hash, the code version and the machine's numerics (atlib.core.numerics: CPU, ISA, torch's kernels,
the variables that pin them; results differ across them in the last bits). Paths are relative to the
results root, so a moved results tree still checks. `atlib.workflow.verify` compares the records with the files on disk.

The record is its own file, not a field of metrics.json: the atlib functions that write the
results stay unaware of it, it can be written per target by a job that fits several, and a
results tree from before provenance keeps its files unchanged (verify says it cannot judge them).
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from atlib.core import numerics
from atlib.core.io import write_text_atomic
from atlib.data.store import sha256
from atlib.spec.jobs import Job
from atlib.spec.schema import config_hash

NAME = "provenance.json"
FORMAT = 1


def record_path(outputs: Iterable[str | Path]) -> Path:
    """Where the record of a job with these outputs lives: its folder's provenance.json, or
    `<name>.provenance.json` beside a job's single output (one folder holds many such jobs)."""
    outs = [Path(o) for o in outputs]
    if not outs:
        raise ValueError("a provenance record needs at least one output file")
    return outs[0].with_suffix("." + NAME) if len(outs) == 1 else outs[0].parent / NAME


def rel(path: str | Path, root: Path) -> str:
    """`path` relative to the results root, or absolute when it lies outside (e.g. a checkpoint)."""
    p = Path(path).resolve()
    try:
        return p.relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def resolve(name: str, root: Path) -> Path:
    """Inverse of `rel`."""
    return Path(name) if Path(name).is_absolute() else root / name


def read_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The input files with the data files of every prepared dataset (its meta.json's sha256 list)."""
    out: list[Path] = []
    for f in map(Path, inputs):
        out.append(f)
        if f.name == "meta.json" and f.is_file():
            try:
                listed = json.loads(f.read_text()).get("sha256", {})
            except json.JSONDecodeError:
                listed = {}
            out += [f.parent / name for name in sorted(listed)]
    return list(dict.fromkeys(out))


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The atlib version, and the git commit and `git describe --dirty` of its checkout if it is one."""
    from atlib import __version__

    out = {"atlib": __version__}
    commit = _git("rev-parse", "HEAD")
    if commit:
        out["git_commit"] = commit
        out["git_describe"] = _git("describe", "--always", "--dirty", "--abbrev=12") or commit
    return out


def _hash(path: Path) -> str | None:
    return sha256(path) if path.is_file() else None  # a directory input: not hashed


def record(inputs: Iterable[str | Path], outputs: Iterable[str | Path], config: Mapping[str, Any]) -> Path:
    """Write the provenance record of one job (or of one target of a batched job); return its path.

    Args:
        inputs: the files the job read (snakemake.input, or one target's share of it).
        outputs: the files it wrote (snakemake.output, or one target's share).
        config: the workflow config (its `results` is the root the paths are relative to).
    """
    root = Path(config["results"])
    outs = [Path(o) for o in outputs]
    rec = {
        "format": FORMAT,
        "config_hash": config_hash(dict(config)),
        "code": code_version(),
        "numerics": numerics.describe(config),
        "inputs": {rel(p, root): _hash(p) for p in read_files(inputs)},
        "outputs": {rel(p, root): _hash(p) for p in outs},
    }
    dest = record_path(outs)
    write_text_atomic(dest, json.dumps(rec, indent=1) + "\n")  # a killed job leaves no half-written record
    return dest


def load(path: Path) -> dict[str, Any] | None:
    """A record, or None when it is missing, unreadable or not a provenance record."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(rec, dict) and isinstance(rec.get("inputs"), dict) and isinstance(rec.get("outputs"), dict)
    return rec if ok else None


def job_record(job: Job, results: str | Path) -> Path:
    """The record of a job of the results tree (e.g. one `atlib.spec.jobs.found` there)."""
    single = job.kind.single_file
    return record_path([job.path(str(results), job.kind.files[0][0])]) if single else Path(job.dir(str(results))) / NAME


def tags(path: Path) -> dict[str, str]:
    """MLflow tags of a record: its config hash, code version and the sha256 of each input."""
    rec = load(path)
    if rec is None:
        return {}
    code = rec.get("code", {})
    out = {"provenance.config_hash": str(rec.get("config_hash", "")),
           "provenance.code": str(code.get("git_describe") or f"atlib {code.get('atlib', '?')}")}
    for name, digest in rec["inputs"].items():
        # MLflow keys must be normalized relative paths: a file outside the results tree goes by its name.
        key = name if not Path(name).is_absolute() else f"external/{Path(name).name}"
        out[f"provenance.input/{key}"] = str(digest)
    return out
