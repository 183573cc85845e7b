"""The job model: every job a config implies, with its result files and wildcard patterns, defined once.

The rule files (workflow/rules/*.smk) take their targets, output patterns and input functions from
here; the report (atlib.report.load) reads the files listed by `report_inputs`; the MLflow ingest
(atlib.workflow.tracking.discovery) and `make verify` find the finished jobs in the results tree with `found`.
Job lists follow the config's order (experiments, then eps, then seeds), deduplicated: the report's row order.

Example (a rule file with a batched per-model rule)::

    for path, batch in jobs.by_model(jobs.fisher(config)).items():
        outputs = [f for job in batch for f in job.outputs(RESULTS).values()]
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from atlib.spec.grid import ModelKey, experiment_objective, iter_models, probe_of, transfer_experiments

# {tag}: "eps" for standard and adversarial models, "gn" for Gaussian-noise ones (atlib.spec.grid.ModelKey).
MODEL_PATH = "{source}/{arch}/{tag}{eps}/s{seed}"
# What each wildcard may match: Snakemake's wildcard_constraints and the ingest's path regexes.
WILDCARDS = {
    "source": r"[A-Za-z0-9_\-]+", "dataset": r"[A-Za-z0-9_\-]+", "target": r"[A-Za-z0-9_\-]+",
    "arch": r"[A-Za-z0-9_]+", "tag": r"eps|gn", "eps": r"[0-9]+(?:\.[0-9]+)?", "seed": r"[0-9]+",
    "mode": r"[012]", "method": r"plain|variational|effective",
}


def job_seed(*parts: object) -> int:
    """A stable seed from wildcard values (rerun with the same inputs = same outputs); the rules'
    seeds, and atlib.workflow.recommend's (the same images of a dataset as the features rule)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) % (2**31)


def pattern_regex(pattern: str) -> re.Pattern:
    """A regex matching `pattern` (a path with {wildcards}) in full, one named group per wildcard."""
    out = re.escape(pattern)
    for name, rx in WILDCARDS.items():
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(f"^{out}$")


# A model's path key, e.g. fmnist04/resnet8/eps1/s0 (groups source, arch, tag, eps, seed).
MODEL_RE = pattern_regex(MODEL_PATH)


@dataclass(frozen=True)
class Kind:
    """One kind of job: the rule that writes it and where its files lie under the results root.

    Args:
        rule: the Snakemake rule writing one such job (batched rules write the same files).
        folder: its top folder under results/.
        pattern: its path under `folder` with wildcards: its directory, or its one file (`single_file`).
        files: (output name, file name in the job's directory); a single-file job's one name maps to "".
        done: the output whose file marks a finished job in the results tree (`found`); None for the kinds
            never looked for there.
    """

    rule: str
    folder: str
    pattern: str
    files: tuple[tuple[str, str], ...]
    single_file: bool = False
    done: str | None = None

    def template(self, results: str, name: str) -> str:
        """The output `name` of this kind under `results`, with its wildcards (a rule's output)."""
        top = f"{results}/{self.folder}/{self.pattern}" if self.pattern else f"{results}/{self.folder}"
        file = dict(self.files)[name]
        return f"{top}/{file}" if file else top

    def log(self, results: str) -> str:
        """The log file of one job of this kind, with wildcards (a rule's log; `Job.log` fills them in)."""
        stem = self.pattern.split(".")[0] if self.single_file else self.pattern  # "{dataset}.json" -> "{dataset}"
        return f"{results}/logs/{self.rule}/{stem or self.rule}.log"

    def regex(self) -> re.Pattern:
        return pattern_regex(self.pattern)

    def parse(self, rel: str) -> Job | None:
        """The job of this kind at `rel`, its path under the folder (its directory, or its one file);
        None where `rel` is no path the workflow writes (another pattern, or a non-canonical number)."""
        m = self.regex().match(rel)
        if m is None:
            return None
        wc = {k: v for k, v in m.groupdict().items() if v is not None}
        model = ModelKey(wc["source"], wc["arch"], wc["eps"], int(wc["seed"]), wc["tag"]) if "seed" in wc else None
        job = Job(self, model, target=wc.get("target"), mode=int(wc["mode"]) if "mode" in wc else None,
                  dataset=wc.get("dataset"), method=wc.get("method"))
        return job if job.wildcards == wc else None  # e.g. seed "00" is no job's path

    def glob(self) -> str:
        """A glob for the `done` files of this kind under its folder (`parse` then checks each match)."""
        pattern = re.sub(r"(\{\w+\})+", "*", self.pattern)  # "{tag}{eps}" -> "*"
        file = dict(self.files)[self.done] if self.done else ""
        return "/".join(part for part in (pattern, file) if part)


MODEL = Kind("train_source", "models", MODEL_PATH,
             (("model", "model.pt"), ("history", "history.csv"), ("metrics", "metrics.json")), done="metrics")
TRANSFER = Kind("transfer", "transfer", MODEL_PATH + "/{target}/mode{mode}",
                (("metrics", "metrics.json"), ("history", "history.csv")), done="metrics")
FEATURES = Kind("features", "distance", MODEL_PATH + "/{dataset}.features.npz", (("features", ""),), True)
DISTANCE = Kind("task_distance", "distance", MODEL_PATH + "/{dataset}.json", (("json", ""),), True, done="json")
FISHER = Kind("fisher", "fisher", MODEL_PATH, (("fisher", "fisher.pt"), ("summary", "summary.json")), done="summary")
REPRESENTATION = Kind("representation", "representation", MODEL_PATH,
                      (("summary", "summary.json"), ("tsne", "tsne.csv"), ("tsne_png", "tsne.png")), done="summary")
# An inversion is recognized by its curve (the file its MLflow run draws); its summary.json may be missing.
INVERT = Kind("invert", "invert", MODEL_PATH + "/{method}",
              (("images", "images.png"), ("curve", "curve.csv"), ("summary", "summary.json"), ("recon", "recon.npz")),
              done="curve")
# atlib.workflow.recommend (not a rule): one ranking per target folder, and each candidate model's feature caches.
RECOMMEND = Kind("recommend", "recommend", "{target}",
                 (("ranking", "ranking.csv"), ("summary", "summary.md"), ("figure", "ranking.png")))
CANDIDATE_FEATURES = Kind("recommend", "recommend/features", MODEL_PATH + "/{dataset}.features.npz",
                          (("features", ""),), True)
REPORT = Kind("aggregate", "report", "", (("summary", "summary.md"),), done="summary")
# The MLflow ingest in two jobs: every result while the report is made, then the report.
TRACK_RESULTS = Kind("track_results", "tracking", "", (("summary", "results.json"),))
TRACK = Kind("track", "tracking", "", (("summary", "ingest.json"),))

# Every kind of job whose results stand on their own (not the feature caches, recommendations and the ingest's
# summaries): what `found` looks for, the MLflow ingest mirrors and `make verify` checks.
RESULT_KINDS = (MODEL, TRANSFER, DISTANCE, FISHER, REPRESENTATION, INVERT, REPORT)

# The outputs atlib.report.load reads, by kind (it reads nothing of the feature caches).
REPORT_READS = {MODEL: ("metrics", "history"), TRANSFER: ("metrics", "history"), DISTANCE: ("json",),
                FISHER: ("summary",), REPRESENTATION: ("summary", "tsne"), INVERT: ("curve", "summary", "recon")}


@dataclass(frozen=True)
class Job:
    """One job: its kind, its model (the probe of a distance; None for the report and a recommendation)
    and the wildcards beyond the model's."""

    kind: Kind
    model: ModelKey | None = None
    target: str | None = None  # transfer
    mode: int | None = None  # transfer
    dataset: str | None = None  # features, task distance
    method: str | None = None  # invert

    @property
    def wildcards(self) -> dict[str, str]:
        m = self.model
        wc = {"source": m.source, "arch": m.arch, "tag": m.tag, "eps": m.eps, "seed": str(m.seed)} if m else {}
        extra = {"target": self.target, "mode": self.mode, "dataset": self.dataset, "method": self.method}
        return {**wc, **{k: str(v) for k, v in extra.items() if v is not None}}

    def rel(self, name: str) -> str:
        """The output `name` relative to the results root."""
        return self.kind.template("", name)[1:].format(**self.wildcards)

    def path(self, results: str, name: str) -> str:
        return f"{results}/{self.rel(name)}"

    def dir(self, results: str) -> str:
        """The job's directory (the folder of a single-file job's file)."""
        rel = f"{self.kind.folder}/{self.kind.pattern}".rstrip("/").format(**self.wildcards)
        return f"{results}/{rel.rpartition('/')[0] if self.kind.single_file else rel}"

    def outputs(self, results: str) -> dict[str, str]:
        """Output name -> file, every file the job writes."""
        return {name: self.path(results, name) for name, _ in self.kind.files}

    def log(self, results: str) -> str:
        """The job's log file (its rule's `log:`)."""
        return self.kind.log(results).format(**self.wildcards)


def found(results: str | Path, kinds: Iterable[Kind] = RESULT_KINDS) -> list[Job]:
    """Every finished job of `kinds` in the results tree (its kind's `done` file exists), in path order."""
    root = Path(results)
    out = []
    for kind in kinds:
        top = root / kind.folder
        for done in sorted(top.glob(kind.glob())) if kind.done and top.is_dir() else []:
            rel = done.relative_to(top)
            job = kind.parse(_posix(rel if kind.single_file else rel.parent))
            out += [job] if job is not None else []
    return out


def job_of(results: str | Path, output_file: str | Path, kinds: Iterable[Kind] = RESULT_KINDS) -> Job:
    """The job of `kinds` that writes `output_file` (any of its outputs) under `results`.

    Raises ValueError for a file no such job writes.
    """
    rel = Path(output_file).resolve().relative_to(Path(results).resolve())
    for kind in kinds:
        if rel.parts[0] != kind.folder:
            continue
        inner = Path(*rel.parts[1:])
        for candidate in [inner] if kind.single_file else inner.parents:
            job = kind.parse(_posix(candidate))
            if job is not None:
                return job
    raise ValueError(f"{output_file} is not the output of a job of {[k.rule for k in kinds]} under {results}")


def models(config: dict) -> list[Job]:
    """One source-model job per model path, the first experiment's."""
    return _unique(Job(MODEL, key) for _, key in iter_models(config))


def objectives(config: dict) -> dict[ModelKey, str]:
    """Each model's `objective` column: standard (eps 0), madry, trades or gaussian (every eps)."""
    out: dict[ModelKey, str] = {}
    for name, key in iter_models(config):
        objective = experiment_objective(config, config["experiments"][name])
        out.setdefault(key, objective if objective == "gaussian" or float(key.eps) > 0 else "standard")
    return out


def transfers(config: dict) -> list[Job]:
    """Every (model, target, mode) transfer, deduplicated (atlib.spec.grid.transfer_experiments)."""
    keys = {k.path: k for _, k in iter_models(config)}
    return [Job(TRANSFER, keys[path], target=target, mode=mode)
            for path, target, mode in transfer_experiments(config)]


def distances(config: dict, kind: Kind = DISTANCE) -> list[Job]:
    """(probe, dataset) of every transfer's source and target: task distances, or with kind FEATURES
    the probe's feature caches they read."""
    return _unique(Job(kind, probe_of(t.model, config["distance"]), dataset=ds)
                   for t in transfers(config) for ds in (t.model.source, t.target))


def analysis(config: dict, name: str) -> list[ModelKey]:
    """The models of every experiment listing analysis `name` (fisher, representation, invert)."""
    return list(dict.fromkeys(key for exp, key in iter_models(config)
                              if name in config["experiments"][exp]["analyses"]))


def fisher(config: dict) -> list[Job]:
    return [Job(FISHER, key) for key in analysis(config, "fisher")]


def representation(config: dict) -> list[Job]:
    return [Job(REPRESENTATION, key) for key in analysis(config, "representation")]


def invert(config: dict) -> list[Job]:
    """One inversion per model and method (config invert.methods)."""
    return [Job(INVERT, key, method=m) for key in analysis(config, "invert") for m in config["invert"]["methods"]]


def result_jobs(config: dict) -> list[Job]:
    """Every job whose results the report and the MLflow ingest read (all but the feature caches)."""
    return (models(config) + transfers(config) + distances(config) + fisher(config) + representation(config)
            + invert(config))


def all_jobs(config: dict) -> list[Job]:
    """Every per-model job of the workflow (not dataset preparation, the report and the ingest)."""
    return result_jobs(config) + distances(config, FEATURES)


def outputs(jobs: Iterable[Job], results: str, names: Iterable[str] | None = None) -> list[str]:
    """The files of `jobs` (only outputs `names` where given), in job order."""
    return [f for job in jobs for name, f in job.outputs(results).items() if names is None or name in names]


def report_reads(job: Job) -> tuple[str, ...]:
    """The outputs of `job` the report reads: of Gaussian-noise models only the source metrics and the
    Fisher summary (their own tables; the paper's frames group by eps)."""
    if job.model.gaussian and job.kind not in (MODEL, FISHER):
        return ()
    return ("metrics",) if job.model.gaussian and job.kind == MODEL else REPORT_READS.get(job.kind, ())


def report_inputs(config: dict, results: str) -> list[str]:
    """Every file atlib.report.load reads for `config` (the `aggregate` rule's input)."""
    return [job.path(results, name) for job in result_jobs(config) for name in report_reads(job)]


def track_inputs(config: dict, results: str) -> list[str]:
    """Every result file the MLflow ingest of the jobs reads (the `track_results` rule's input): the
    jobs' outputs but model weights and Fisher tensors (too big to hash as artifacts)."""
    big = ("model", "fisher")
    return [f for job in result_jobs(config) for name, f in job.outputs(results).items() if name not in big]


def recommendations(results: str) -> list[str]:
    """The targets with a recommendation under `results` (atlib.workflow.recommend writes them, no rule does):
    the report's "Your targets" section reads their ranking.csv and ranking.png."""
    rx = RECOMMEND.regex()
    return sorted(p.parent.name for p in Path(results, RECOMMEND.folder).glob("*/ranking.csv")
                  if rx.match(p.parent.name) and p.parent.name != "features")


def recommendation_files(results: str) -> list[str]:
    """Every file of `recommendations` that the report reads (the aggregate rule's input)."""
    return [Job(RECOMMEND, target=t).path(results, n) for t in recommendations(results)
            for n in ("ranking", "figure")]


def by_model(jobs: Iterable[Job]) -> dict[str, tuple[ModelKey, list[Job]]]:
    """Jobs grouped by model path, in order (one batched rule per model)."""
    out: dict[str, tuple[ModelKey, list[Job]]] = {}
    for job in jobs:
        out.setdefault(job.model.path, (job.model, []))[1].append(job)
    return out


def batch_rule_name(prefix: str, model: ModelKey) -> str:
    """The name of a batched per-model rule, e.g. transfer_mode0_fmnist04_resnet8_eps0p5_s0 (rule
    names take no slash or dot)."""
    return f"{prefix}_" + model.path.replace("/", "_").replace(".", "p")


def _posix(rel: Path) -> str:
    """A relative path as `parse` takes it ("" for the folder itself)."""
    return "" if rel == Path(".") else rel.as_posix()


def _unique(jobs: Iterable[Job]) -> list[Job]:
    return list(dict.fromkeys(jobs))
