"""The finished jobs of a results tree as the MLflow ingest sees them, and their `job_key`.

The job model (atlib.spec.jobs) finds the jobs (`jobs.found`) and names their files and logs; this
module adds what the ingest needs of each: which files become the run's artifacts, which one holds
its summary numbers and which its metric history. A job's `job_key` is its path under the results
root without a file suffix ("transfer/fmnist04/resnet8/eps1/s0/mnist5k/mode0"; "report" for the
report): the tag by which the ingest and live logging find its run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atlib.spec import jobs
from atlib.spec.jobs import MODEL_PATH

# Files that become artifacts of a run (model weights and feature caches stay out: too big).
ARTIFACT_SUFFIXES = frozenset({".json", ".csv", ".png", ".pdf", ".md", ".txt"})
MAX_ARTIFACT_BYTES = 20 * 2**20


@dataclass(frozen=True)
class Tracked:
    """What the ingest reads of one kind of job.

    Args:
        kind: the kind (atlib.spec.jobs).
        main: the output whose numbers are the run's summary metrics (a json; else none).
        history: the csv output whose rows are metric histories (step column `step_col`).
        suffixes: which files of the job's directory become artifacts.
    """

    kind: jobs.Kind
    main: str
    history: str | None = None
    step_col: str = "epoch"
    suffixes: frozenset = ARTIFACT_SUFFIXES


TRACKED = {t.kind: t for t in (
    Tracked(jobs.MODEL, "metrics", history="history"),
    Tracked(jobs.TRANSFER, "metrics", history="history"),
    Tracked(jobs.DISTANCE, "json"),
    Tracked(jobs.FISHER, "summary"),
    Tracked(jobs.REPRESENTATION, "summary"),
    Tracked(jobs.INVERT, "summary", history="curve", step_col="step"),
    Tracked(jobs.REPORT, "summary", suffixes=ARTIFACT_SUFFIXES | {".html"}),
)}


@dataclass(frozen=True)
class FoundResult:
    """A finished job's result files as found on disk: what its MLflow run is made of."""

    job: jobs.Job
    key: str  # the job_key tag
    files: tuple[Path, ...]  # the job's small result files (artifacts, hashed)
    main: Path  # metrics.json / summary.json / the distance json; may not exist for invert
    history: Path | None
    log: Path | None  # the job's log file, where it exists

    @property
    def rule(self) -> str:
        return self.job.kind.rule

    @property
    def tracked(self) -> Tracked:
        return TRACKED[self.job.kind]

    @property
    def wildcards(self) -> dict[str, str]:
        """The job's wildcards, plus the model path of a distance's probe and of a transfer's source."""
        wc = self.job.wildcards
        extra = {jobs.DISTANCE: "probe", jobs.TRANSFER: "source_model"}.get(self.job.kind)
        return {**wc, extra: MODEL_PATH.format(**wc)} if extra else wc


def key_of(job: jobs.Job) -> str:
    """The job_key of a job: its path under the results root, a single-file job's without its suffix."""
    path = f"{job.kind.folder}/{job.kind.pattern}".rstrip("/").format(**job.wildcards)
    return path.removesuffix(Path(job.kind.pattern).suffix) if job.kind.single_file else path


def job_key(results_dir: str | Path, output_file: str | Path) -> str:
    """The job_key of the job that writes `output_file` (for live logging in a rule's script).

    Args:
        results_dir: the results root (config `results`).
        output_file: any output of the job, e.g. snakemake.output.metrics.
    """
    return key_of(jobs.job_of(results_dir, output_file, TRACKED))


def parse_key(key: str) -> jobs.Job:
    """The job of a job_key (inverse of `key_of`); ValueError for a key of no tracked job."""
    folder, _, rel = key.partition("/")
    for kind in (k for k in TRACKED if k.folder == folder):
        job = kind.parse(rel + Path(kind.pattern).suffix if kind.single_file else rel)
        if job is not None:
            return job
    raise ValueError(f"{key!r} is not the job_key of a tracked job")


def found_result(results: Path, job: jobs.Job) -> FoundResult:
    """What the ingest reads of one finished job of the results tree."""
    tracked = TRACKED[job.kind]
    main = Path(job.path(str(results), tracked.main))
    if job.kind.single_file:
        files: tuple[Path, ...] = (main,)
    else:
        files = tuple(sorted(p for p in Path(job.dir(str(results))).iterdir() if p.is_file()
                             and p.suffix in tracked.suffixes and p.stat().st_size <= MAX_ARTIFACT_BYTES))
    history = Path(job.path(str(results), tracked.history)) if tracked.history else None
    log = Path(job.log(str(results)))
    return FoundResult(job, key_of(job), files, main, history if history and history.exists() else None,
                       log if log.is_file() else None)


def find_results(results_dir: str | Path) -> list[FoundResult]:
    """Every finished job under `results_dir` (`jobs.found`), sorted by job_key."""
    root = Path(results_dir)
    return sorted((found_result(root, job) for job in jobs.found(root, TRACKED)), key=lambda r: r.key)
