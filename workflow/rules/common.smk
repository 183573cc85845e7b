# Target lists, input functions and wildcard constraints shared by every rule file. The jobs, their
# result paths and wildcard patterns come from atlib.spec.jobs (also read by the report and the ingest).
import atlib.spec.jobs as jobs
from atlib.data.folder import FOLDER
from atlib.spec.grid import ModelKey, model_experiments, pretrained_entry, source_file
from atlib.spec.schema import config_hash
from atlib.spec.grid import transfer_experiments
from atlib.data.folder import folder_files
from atlib.spec.jobs import job_seed
from atlib.workflow.tracking.ingest import default_uri

RESULTS = config["results"]
MODEL_EXPERIMENT = model_experiments(config)
# The experiment that asked for each transfer gives its finetune schedule (atlib.spec.grid.transfer_experiments).
TRANSFER_EXPERIMENT = transfer_experiments(config)
# Scheduling order, longest jobs first (trainings, then inversions and distances, then transfers), so
# that the short jobs fill the end and no core idles beside one long last job. Results do not depend on it.
PRIORITY = {"train": 3, "long": 2, "transfer": 1, "short": 0}


wildcard_constraints:
    **jobs.WILDCARDS,


def out(kind: jobs.Kind, name: str) -> str:
    """A rule's output pattern: file `name` of every job of `kind`, with wildcards."""
    return kind.template(RESULTS, name)


def model_key(wc) -> ModelKey:
    return ModelKey(wc.source, wc.arch, wc.eps, int(wc.seed), wc.tag)


def experiment_of(wc) -> dict:
    """The experiment entry (schedules, width, ...) that defines this model."""
    return config["experiments"][MODEL_EXPERIMENT[model_key(wc).path]]


def dataset_dir(name: str) -> str:
    return f"{RESULTS}/data/{name}"


def dataset_meta(name: str) -> str:
    return f"{dataset_dir(name)}/meta.json"


def source_meta(wc) -> str:
    """The source dataset a model job reads."""
    return dataset_meta(wc.source)


def model_file(key: ModelKey) -> str:
    return jobs.Job(jobs.MODEL, key).path(RESULTS, "model")


# --------------------------------------------------------------------------- targets


def all_results():
    """Every per-job result (what `aggregate` and `track` read come from these)."""
    return jobs.outputs(jobs.result_jobs(config), RESULTS)


def report_inputs():
    """Every file `aggregate` reads (atlib.report.load, and the rankings of "Your targets")."""
    return jobs.report_inputs(config, RESULTS) + jobs.recommendation_files(RESULTS)


def track_inputs():
    """Every file `track` reads: the results (logs are not inputs, see track.smk) and the report."""
    return jobs.track_inputs(config, RESULTS)


def all_targets():
    return all_results() + [jobs.REPORT.template(RESULTS, "summary"), jobs.TRACK.template(RESULTS, "summary")]


# --------------------------------------------------------------------------- data


def derived_base(wc):
    spec = config["datasets"].get(wc.dataset)
    return [dataset_meta(spec["base"])] if spec and spec["base"] != FOLDER else []


# Keys of datasets.<name> read only for base folder: left out of other derived datasets' params, so
# that runs prepared before folders existed are not rerun for keys they never use.
FOLDER_KEYS = ("path", "test_fraction", "image_size", "channels")


def derived_spec(wc):
    spec = config["datasets"].get(wc.dataset)
    if spec is None or spec["base"] == FOLDER:
        return spec
    return {k: v for k, v in spec.items() if k not in FOLDER_KEYS}


def folder_images(wc):
    """Every image a folder dataset reads (atlib.data.folder): a changed image reruns its preparation."""
    spec = config["datasets"].get(wc.dataset)
    return folder_files(spec["path"]) if spec and spec["base"] == FOLDER else []


# --------------------------------------------------------------------------- source models


def pretrained_source(wc):
    """(name, source_models entry) imported as this model, or None to train it."""
    return pretrained_entry(config, experiment_of(wc), wc.eps)


def pretrained_input(wc) -> list[str]:
    """The weights file an import reads; none when the job may download it (allow_download)."""
    got = pretrained_source(wc)
    path = source_file(got[1]) if got else None
    return [str(path)] if path is not None and (path.is_file() or not got[1]["allow_download"]) else []


def train_seed(wc) -> int:
    # eps is left out on purpose: models that differ only in eps share initialization and data
    # order, so robust-vs-standard gaps are paired comparisons.
    return job_seed("train_source", wc.source, wc.arch, wc.seed)


# --------------------------------------------------------------------------- transfer


def finetune_schedule(key: ModelKey, target: str, mode: int) -> dict:
    name = TRANSFER_EXPERIMENT[(key.path, target, mode)]
    return config["finetune_schedules"][config["experiments"][name]["finetune"]]


def transfer_job(key: ModelKey, target: str, mode: int) -> dict:
    """What the transfer script needs for one (model, target, mode); eps is left out of the seed on
    purpose (as in train_seed): the standard and robust transfers of one seed share head
    initialization, data order and attack noise, a paired comparison."""
    job = jobs.Job(jobs.TRANSFER, key, target=target, mode=mode)
    return dict(
        target=target,
        mode=mode,
        target_dir=dataset_dir(target),
        out_dir=job.dir(RESULTS),
        model_key=key.path,
        arch=key.arch,
        schedule=finetune_schedule(key, target, mode),
        seed=job_seed("transfer", key.source, key.arch, key.seed, target, mode),
        wildcards=job.wildcards,
    )


def wildcard_transfer_job(wc) -> list[dict]:
    return [transfer_job(model_key(wc), wc.target, int(wc.mode))]


def batched_mode0():
    """{model path: (key, [mode-0 transfer jobs])} run as one job per model (batch_jobs)."""
    if not config["batch_jobs"]:
        return {}
    return jobs.by_model(j for j in jobs.transfers(config) if j.mode == 0)


# --------------------------------------------------------------------------- distances


def feature_job(probe: ModelKey, dataset: str) -> dict:
    # Same images of a dataset for every probe (the seed leaves the probe out).
    return dict(
        dataset=dataset,
        data=dataset_meta(dataset),
        out=jobs.Job(jobs.FEATURES, probe, dataset=dataset).path(RESULTS, "features"),
        seed=job_seed("features", dataset),
    )


def distance_job(probe: ModelKey, dataset: str) -> dict:
    def feats(ds):
        return jobs.Job(jobs.FEATURES, probe, dataset=ds).path(RESULTS, "features")

    return dict(
        source=feats(probe.source),
        target=feats(dataset),
        source_data=dataset_meta(probe.source),
        target_data=dataset_meta(dataset),
        out=jobs.Job(jobs.DISTANCE, probe, dataset=dataset).path(RESULTS, "json"),
        seed=job_seed("otdd", probe.path),
    )


def batched_distances():
    """{probe path: (probe, [distance jobs of the source and targets])} run as one job per probe."""
    return jobs.by_model(jobs.distances(config)) if config["batch_jobs"] else {}


DISTANCE_PARAMS = dict(
    max_images=config["distance"]["max_images"],
    batch_size=config["distance"]["batch_size"],
    gamma=config["distance"]["gamma"],
    pca_dim=config["distance"]["pca_dim"],
    otdd_points=config["distance"]["otdd_points"],
    task2vec_images=config["distance"]["task2vec_images"],
    device=config["device"],
)


def wildcard_features(wc, dataset: str) -> str:
    return jobs.Job(jobs.FEATURES, model_key(wc), dataset=dataset).path(RESULTS, "features")


# --------------------------------------------------------------------------- analyses


ANALYSIS_KINDS = {"fisher": jobs.FISHER, "representation": jobs.REPRESENTATION, "invert": jobs.INVERT}
ANALYSIS_NAMES = {kind: name for name, kind in ANALYSIS_KINDS.items()}
# Figures shown in `snakemake --report`: (output name, category, subcategory, labels); wildcards in
# braces, filled from the job where the rule has none (analyses_*).
ANALYSIS_FIGURES = {
    "representation": (
        "tsne_png",
        "Representations",
        "{source} {arch}",
        {"model": "{tag}{eps} s{seed}", "figure": "t-SNE"},
    ),
    "invert": (
        "images",
        "Inversion",
        "{source} {arch} {tag}{eps}",
        {"model": "{tag}{eps} s{seed}", "method": "{method}"},
    ),
}


def analysis_outputs(kind: str, job: jobs.Job | None = None) -> dict:
    """Output files of analysis `kind`: patterns with wildcards, or one `job`'s files (a rule without
    wildcards); its figure flagged for the report."""
    files = (
        job.outputs(RESULTS)
        if job
        else {name: out(ANALYSIS_KINDS[kind], name) for name, _ in ANALYSIS_KINDS[kind].files}
    )
    if kind in ANALYSIS_FIGURES:
        name, category, sub, labels = ANALYSIS_FIGURES[kind]
        fill = (lambda s: s) if job is None else (lambda s: s.format(**job.wildcards))
        files[name] = report(
            files[name], category=category, subcategory=fill(sub), labels={k: fill(v) for k, v in labels.items()}
        )
    return files


def analysis_job(key: ModelKey, kind: str, method: str | None = None) -> dict:
    """What the analysis script needs for one analysis of one model. The seed leaves out eps (every
    eps of a source is measured on the same images and probes) and the inversion method (every method
    starts from the same r_0 and inverts the same images, so their loss curves are paired)."""
    job = jobs.Job(ANALYSIS_KINDS[kind], key, method=method)
    fisher = [jobs.Job(jobs.FISHER, key).path(RESULTS, "fisher")] if kind == "invert" and method != "plain" else []
    return dict(
        kind=kind,
        method=method,
        model=model_file(key),
        data=dataset_meta(key.source),
        fisher=fisher,
        out_dir=job.dir(RESULTS),
        outputs=list(job.outputs(RESULTS).values()),
        eps=float(key.eps),
        cfg=config[kind],
        seed=job_seed(kind, key.source, key.seed),
    )


def batched_analyses():
    """{model path: (key, [its analysis jobs, fisher first: inversion reads its Sigma*])} run as one
    job per model (batch_jobs)."""
    if not config["batch_jobs"]:
        return {}
    return jobs.by_model(jobs.fisher(config) + jobs.representation(config) + jobs.invert(config))


# --------------------------------------------------------------------------- report


def report_category(wc) -> str:
    name = wc.name
    if name.startswith(("claims", "paper_comparison")):
        return "1. Claims and paper comparison"
    if name.startswith(("table_", "transfers", "sources", "correlations")):
        return "2. Tables"
    if name.startswith(("gap_vs_distance", "mode_comparison", "learning_curves", "source_tradeoff")):
        return "3. Transfer figures"
    if name.startswith("target_"):
        return "5. Your targets"
    return "4. Information, representations, inversion"
