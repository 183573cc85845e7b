# Target lists, input functions and wildcard constraints shared by every rule file.
from atlib.config import ModelKey, eps_str, iter_models, model_experiments, pretrained_entry, source_file
from atlib.config import transfer_experiments
from atlib.config import probe_of as config_probe_of

RESULTS = config["results"]
# {tag}: "eps" for standard and adversarial models, "gn" for Gaussian-noise ones (atlib.config.ModelKey).
MODEL_PATH = "{source}/{arch}/{tag}{eps}/s{seed}"
MODEL_EXPERIMENT = model_experiments(config)


wildcard_constraints:
    source=r"[A-Za-z0-9_\-]+",
    dataset=r"[A-Za-z0-9_\-]+",
    target=r"[A-Za-z0-9_\-]+",
    arch=r"[A-Za-z0-9_]+",
    tag=r"eps|gn",
    eps=r"[0-9]+(\.[0-9]+)?",
    seed=r"[0-9]+",
    mode=r"[012]",
    method=r"plain|variational|effective",
    probe_source=r"[A-Za-z0-9_\-]+",
    probe_arch=r"[A-Za-z0-9_]+",
    probe_eps=r"[0-9]+(\.[0-9]+)?",
    probe_seed=r"[0-9]+",


def model_key(wc) -> ModelKey:
    return ModelKey(wc.source, wc.arch, wc.eps, int(wc.seed), wc.tag)


def experiment_of(wc) -> dict:
    """The experiment entry (schedules, width, ...) that defines this model."""
    return config["experiments"][MODEL_EXPERIMENT[model_key(wc).path]]


def dataset_dir(name: str) -> str:
    return f"{RESULTS}/data/{name}"


def model_file(key: ModelKey) -> str:
    return f"{RESULTS}/models/{key.path}/model.pt"


def job_seed(*parts) -> int:
    """A stable seed from wildcard values (rerun with the same inputs = same outputs)."""
    import zlib

    return zlib.crc32("/".join(map(str, parts)).encode()) % (2**31)


def experiment_models(analysis: str | None = None):
    for name, key in iter_models(config):
        exp = config["experiments"][name]
        if analysis is None or analysis in exp["analyses"]:
            yield name, key


def transfer_jobs():
    """(model, target, mode) for every transfer the config asks for, deduplicated."""
    keys = {k.path: k for _, k in iter_models(config)}
    for path, target, mode in transfer_experiments(config):
        yield keys[path], target, mode


def probe_of(key: ModelKey) -> ModelKey:
    """Feature extractor for the task distance of `key`'s transfers (atlib.config.probe_of)."""
    return config_probe_of(key, config["distance"])


def distance_jobs():
    """(probe model, dataset): the source and every target, for each probe."""
    seen = set()
    for key, target, _ in transfer_jobs():
        probe = probe_of(key)
        for ds in (key.source, target):
            if (probe.path, ds) not in seen:
                seen.add((probe.path, ds))
                yield probe, ds


def all_models():
    return sorted({model_file(k) for _, k in iter_models(config)})


def all_transfers():
    return [f"{RESULTS}/transfer/{k.path}/{t}/mode{m}/metrics.json" for k, t, m in transfer_jobs()]


def all_distances():
    return [f"{RESULTS}/distance/{p.path}/{ds}.json" for p, ds in distance_jobs()]


def all_fisher():
    return sorted({f"{RESULTS}/fisher/{k.path}/summary.json" for _, k in experiment_models("fisher")})


def all_representation():
    return sorted({f"{RESULTS}/representation/{k.path}/summary.json" for _, k in experiment_models("representation")})


def all_invert():
    """curve.csv and recon.npz (originals + reconstructions for the report's image grid) of every inversion."""
    return sorted({f"{RESULTS}/invert/{k.path}/{m}/{f}" for _, k in experiment_models("invert")
                   for m in config["invert"]["methods"] for f in ("curve.csv", "recon.npz")})


def all_results():
    """Every per-job result (what `aggregate` and `track` read)."""
    return all_models() + all_transfers() + all_distances() + all_fisher() + all_representation() + all_invert()


def report_inputs():
    """Every file `aggregate` reads (atlib.report.load): the results plus their histories and side files."""
    models = sorted({k.path for _, k in iter_models(config)})
    sides = [f"{RESULTS}/models/{m}/{f}" for m in models for f in ("metrics.json", "history.csv")]
    sides += [f.replace("metrics.json", "history.csv") for f in all_transfers()]
    sides += [f.replace("summary.json", "tsne.csv") for f in all_representation()]
    sides += [f.replace("curve.csv", "summary.json") for f in all_invert() if f.endswith("curve.csv")]
    return all_results() + sides


def all_targets():
    return all_results() + [f"{RESULTS}/report/summary.md", f"{RESULTS}/tracking/ingest.json"]
