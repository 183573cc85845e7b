"""Config: schema validation with defaults, semantic checks, and the job grid it implies.

The Snakefile calls `check_config` before any job is planned, so a bad config stops
with one message naming the key. The same functions enumerate the models, transfers
and analyses that `workflow/rules/common.smk` turns into targets.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

from atlib.data.folder import FOLDER

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config problem; the message names the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The config schema (for its documentation, atlib.spec.schema_doc)."""
    return yaml.safe_load(Path(path).read_text())


def key_of(path) -> str:
    """Dotted key of a jsonschema error path, e.g. experiments.demo.eps[1]."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def validate_config(config: dict) -> dict:
    """Validate `config` against the schema in place, filling every default the schema declares
    (Snakemake's validate with set_default: the one validation of a config, in the workflow or out
    of it); raise ConfigError naming the key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except WorkflowError as err:
        e = err.__context__
        if not isinstance(e, jsonschema.ValidationError):
            raise
        extra = f" (at least {e.validator_value} items)" if e.validator == "minItems" else ""
        raise ConfigError(f"config error at {key_of(e.absolute_path)}: {e.message}{extra}") from None
    # Defaults are filled by reference to the schema's objects: one `targets: []` would be shared by
    # every experiment lacking targets. Copies keep each key its own.
    config.update(json.loads(json.dumps(config)))
    return config


# Entries of these kinds sit under a named key of these sections (atlib.spec.config.section_defaults).
NAMED_SECTIONS = {"train_schedule": "train_schedules", "finetune_schedule": "finetune_schedules",
                  "source_model": "source_models"}


@functools.lru_cache(maxsize=64)
def _filled(text: str, kind: str) -> str:
    section = NAMED_SECTIONS.get(kind, kind)
    entry = json.loads(text)
    # The smallest valid config holding the entry: its defaults are filled as in a workflow config.
    cfg = {"experiments": {"_": {"source": "_", "arch": "_", "eps": [0]}},
           section: {"_": entry} if kind in NAMED_SECTIONS else entry}
    prefix = f"{section}._" if kind in NAMED_SECTIONS else section
    try:
        validate_config(cfg)
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"config error at {prefix}.", f"{kind} error at ")
                          .replace(f"config error at {prefix}:", f"{kind} error at <top level>:")) from None
    return json.dumps(cfg[section]["_"] if kind in NAMED_SECTIONS else cfg[section])


def section_defaults(entry: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """A copy of one part of a config with the schema's defaults filled in (and validated), for
    library calls outside a workflow: `kind` is a top-level section (fisher, invert, ...) or an entry
    of a named section (train_schedule, finetune_schedule, source_model)."""
    # Cached by content: a batched job checks the same schedule once, not once per target.
    return json.loads(_filled(json.dumps(entry or {}, sort_keys=True), kind))


def schedule_defaults(schedule: dict[str, Any] | None, kind: str = "train_schedule") -> dict[str, Any]:
    """A train (or finetune) schedule with the schema's defaults filled in (section_defaults)."""
    return section_defaults(schedule, kind)


def eps_str(eps: float | str) -> str:
    """Canonical eps text used in paths and wildcards: 0, 0.25, 0.5, 1, 3."""
    v = float(eps)
    return str(int(v)) if v.is_integer() else repr(v)


# Path tag of a model by its training objective: Gaussian-noise models live beside, never on top
# of, the PGD model of the same eps. Standard (eps 0) and adversarial models keep "eps".
GAUSSIAN_TAG = "gn"
TAGS = ("eps", GAUSSIAN_TAG)


@dataclass(frozen=True)
class ModelKey:
    """One source model: `{source}/{arch}/{tag}{eps}/s{seed}`, tag "eps" (standard and
    adversarial training) or "gn" (objective gaussian, every eps including 0)."""

    source: str
    arch: str
    eps: str
    seed: int
    tag: str = "eps"

    @property
    def path(self) -> str:
        return f"{self.source}/{self.arch}/{self.tag}{self.eps}/s{self.seed}"

    @property
    def standard(self) -> "ModelKey":
        """The standard model (eps 0, tag eps) of the same source, arch and seed."""
        return ModelKey(self.source, self.arch, "0", self.seed)

    @property
    def gaussian(self) -> bool:
        return self.tag == GAUSSIAN_TAG


def experiment_objective(config: dict, exp: dict) -> str:
    """The training objective of an experiment's train schedule."""
    return config["train_schedules"][exp["train"]]["objective"]


def experiment_tag(config: dict, exp: dict) -> str:
    """The path tag of an experiment's models: "gn" for objective gaussian, else "eps"."""
    return GAUSSIAN_TAG if experiment_objective(config, exp) == "gaussian" else "eps"


def experiment_keys(config: dict, exp: dict) -> Iterator[ModelKey]:
    """The models of one experiment, eps-major then seed, as `iter_models` lists them."""
    tag = experiment_tag(config, exp)
    for eps in exp["eps"]:
        for seed in exp["seeds"]:
            yield ModelKey(exp["source"], exp["arch"], eps_str(eps), seed, tag)


def probe_of(key: ModelKey, distance: dict) -> ModelKey:
    """The feature extractor of `key`'s task distances (config `distance`): the standard model of
    the same seed, of the fixed seed `probe_seed`, or (probe: same) the model itself."""
    if distance["probe"] != "standard":
        return key
    seed = distance["probe_seed"]
    return key.standard if seed is None else dataclasses.replace(key.standard, seed=int(seed))


def iter_models(config: dict) -> Iterator[tuple[str, ModelKey]]:
    """(experiment name, model) for every model of every experiment, in config order."""
    for name, exp in config["experiments"].items():
        for key in experiment_keys(config, exp):
            yield name, key


def model_experiments(config: dict) -> dict[str, str]:
    """Model path -> the first experiment that defines it (its schedules apply)."""
    out: dict[str, str] = {}
    for name, key in iter_models(config):
        out.setdefault(key.path, name)
    return out


def transfer_experiments(config: dict) -> dict[tuple[str, str, int], str]:
    """(model path, target, mode) -> the first experiment asking for that transfer, in config order.

    Not `model_experiments`: a model shared by two experiments (e.g. one with mode 0 and another
    with modes 1, 2 on the same backbones) is fine-tuned with the schedule of the experiment that
    asked for the mode. The keys are also the deduplicated list of transfer jobs.
    """
    out: dict[tuple[str, str, int], str] = {}
    for name, key in iter_models(config):
        exp = config["experiments"][name]
        for target in exp["targets"]:
            for mode in exp["modes"]:
                out.setdefault((key.path, target, int(mode)), name)
    return out


def merge_files(paths: list[str]) -> dict:
    """Config files merged the way Snakemake merges several --configfile (nested keys of later files
    win), before validation: what the files say, no defaults."""
    from snakemake.utils import update_config

    merged: dict = {}
    for path in paths:
        update_config(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_config(config: dict, known_datasets: set[str] | None = None, decode_images: bool = False) -> dict:
    """Schema validation (defaults filled) plus the checks a schema cannot express. Returns the config.

    decode_images: decode every image of the folder datasets (finds truncated files before any job; the
    Snakefile's main process and atlib.workflow.recommend), else read their headers only (every job re-checks)."""
    validate_config(config)
    factors = config["fisher"]["budget_factors"]
    if max(factors) < 100 * min(factors):
        raise ConfigError(f"config error at fisher.budget_factors: {factors} spans {max(factors) / min(factors):.3g}x; "
                          "the budget sweep must span >= 100x (max/min >= 100)")
    if known_datasets is None:
        from atlib.data import REGISTRY

        known_datasets = set(REGISTRY)
    _expand_ladders(config, set(known_datasets))
    validate_config(config)  # the schema's defaults for the ladder levels just added (one source of truth)
    datasets = set(known_datasets) | set(config["datasets"])
    for name, spec in config["datasets"].items():
        if name in known_datasets:
            raise ConfigError(f"config error at datasets.{name}: name clashes with a registered dataset")
        if spec["base"] == FOLDER:
            _check_folder(config, name, spec, decode_images)
            continue
        if spec["base"] not in datasets or spec["base"] == name:
            raise ConfigError(f"config error at datasets.{name}.base: unknown dataset {spec['base']!r}")
        _check_strength(spec["transform"], spec["strength"], f"datasets.{name}.strength")
    seen: dict[str, tuple] = {}
    levels = ladder_levels(config)
    for name, exp in config["experiments"].items():
        where = f"experiments.{name}"
        if exp["source"] not in datasets:
            raise ConfigError(f"config error at {where}.source: unknown dataset {exp['source']!r}; "
                              f"known: {', '.join(sorted(datasets))}")
        _add_ladder_targets(exp, levels, where)
        for i, t in enumerate(exp["targets"]):
            if t not in datasets:
                raise ConfigError(f"config error at {where}.targets[{i}]: unknown dataset {t!r}")
        _check_near_far(exp, where)
        if exp["train"] not in config["train_schedules"]:
            raise ConfigError(f"config error at {where}.train: no train_schedules entry {exp['train']!r}")
        if exp["targets"] and experiment_tag(config, exp) == GAUSSIAN_TAG:
            raise ConfigError(f"config error at {where}.targets: transfers from Gaussian-noise models "
                              f"(train schedule {exp['train']!r} has objective gaussian) are not supported; "
                              "list the targets in an experiment with a madry or trades schedule")
        if exp["targets"] and exp["finetune"] not in config["finetune_schedules"]:
            raise ConfigError(f"config error at {where}.finetune: no finetune_schedules entry {exp['finetune']!r}")
        _check_pretrained(config, exp, where)
        if exp["targets"] and 0 not in [float(e) for e in exp["eps"]]:
            raise ConfigError(f"config error at {where}.eps: transfer needs the standard model (eps 0) "
                              "to compare against")
        for key in experiment_keys(config, exp):
            sig = (exp["width"], exp["train"])
            if seen.setdefault(key.path, sig) != sig:
                raise ConfigError(f"config error at {where}: model {key.path} is defined again with another "
                                  "width or train schedule")
    return config


def _check_folder(config: dict, name: str, spec: dict, decode: bool) -> None:
    """A folder dataset: its path and layout checked (no pixel decoded: atlib.data.folder.check_folder),
    and its image size and channels filled from the source of the first experiment targeting it."""
    from atlib.data.folder import FolderError, check_folder

    where = f"config error at datasets.{name}"
    if not spec["path"]:
        raise ConfigError(f"{where}.path: a dataset with base folder needs path (the image folder)")
    for key in ("classes", "max_train", "max_test"):
        if spec[key] is not None:
            raise ConfigError(f"{where}.{key}: not supported with base folder (the folder is used whole)")
    if spec["transform"] != "none":
        raise ConfigError(f"{where}.transform: not supported with base folder")
    try:
        check_folder(spec["path"], decode)
    except FolderError as err:
        raise ConfigError(f"{where}.path: {err}") from None
    size, channels = source_geometry(config, name)
    spec["image_size"] = spec["image_size"] or size
    spec["channels"] = spec["channels"] or channels


def source_geometry(config: dict, target: str) -> tuple[int, int]:
    """(image size, channels) of the source of the first experiment targeting `target` (32, 3 if none):
    a folder's images are stored at its source's input size."""
    from atlib.data import REGISTRY

    for exp in config["experiments"].values():
        if target in exp["targets"]:
            base = base_set(config, exp["source"])
            if base in REGISTRY:
                return REGISTRY[base].image_size, REGISTRY[base].channels
    return 32, 3


def pretrained_entry(config: dict, exp: dict, eps: float | str) -> tuple[str, dict] | None:
    """(name, source_models entry) that the experiment imports at `eps`, or None when it trains it."""
    for k, name in exp["pretrained"].items():
        if float(k) == float(eps):
            return name, config["source_models"][name]
    return None


def source_file(entry: dict) -> Path | None:
    """The weights file a source_models entry imports: RobustBench's layout path
    `{model_dir}/{dataset}/{threat_model}/{name}.pt`, else its `file` (None: downloaded by the job)."""
    if entry["kind"] == "robustbench":
        return Path(entry["model_dir"]) / entry["dataset"] / entry["threat_model"] / f"{entry['name']}.pt"
    return Path(entry["file"]) if entry["file"] else None


def missing_source_files(config: dict) -> list[str]:
    """One message per imported weights file that is neither there nor allowed to be downloaded."""
    out: dict[Path, str] = {}
    for name, exp in config["experiments"].items():
        for k, entry_name in exp["pretrained"].items():
            entry = config["source_models"][entry_name]
            path = source_file(entry)
            if path is None or path in out or path.is_file() or entry["allow_download"]:
                continue
            layout = " (RobustBench's layout {model_dir}/{dataset}/{threat_model}/{name}.pt)" \
                if entry["kind"] == "robustbench" else ""
            out[path] = (f"{path}: weights of source_models.{entry_name} (imported by experiments.{name}.pretrained."
                         f"{k}) not found; stage the file there{layout}, or set source_models.{entry_name}."
                         "allow_download: true")
    return list(out.values())


def _check_pretrained(config: dict, exp: dict, where: str) -> None:
    """pretrained keys are eps of the experiment naming usable source_models entries; every other
    eps is trained, which needs an atlib architecture."""
    from atlib.models.resnet import ARCHS

    eps = [float(e) for e in exp["eps"]]
    for k, name in exp["pretrained"].items():
        key = f"{where}.pretrained.{k}"
        try:
            ok = float(k) in eps
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"config error at {key}: not one of this experiment's eps")
        if name not in config["source_models"]:
            raise ConfigError(f"config error at {key}: no source_models entry {name!r}; known: "
                              f"{', '.join(sorted(config['source_models'])) or 'none'}")
        _check_source_model(config["source_models"][name], f"source_models.{name}", exp["arch"], key)
    trained = [e for e in exp["eps"] if not any(float(k) == float(e) for k in exp["pretrained"])]
    if trained and exp["arch"] not in ARCHS:
        raise ConfigError(f"config error at {where}.arch: {exp['arch']!r} is not an architecture atlib trains "
                          f"({', '.join(sorted(ARCHS))}), and eps {trained} are not imported: name a "
                          "source_models entry for each in pretrained, or use an atlib arch")


def _check_source_model(entry: dict, where: str, arch: str, used_at: str) -> None:
    from atlib.models.resnet import ARCHS

    kind = entry["kind"]
    if kind == "robustness" and arch not in ARCHS:
        raise ConfigError(f"config error at {used_at}: a robustness checkpoint loads into an atlib arch "
                          f"({', '.join(sorted(ARCHS))}), not {arch!r}")
    need = {"robustness": ["file"], "robustbench": ["name"], "torchvision": ["arch"], "timm": ["arch"]}[kind]
    if kind in ("torchvision", "timm") and not entry["allow_download"]:
        need.append("file")
    if kind == "torchvision" and entry["allow_download"] and not entry["file"]:
        need.append("weights")
    for k in need:
        if not entry[k]:
            raise ConfigError(f"config error at {where}.{k}: a {kind} source model needs {k}")


def ladder_levels(config: dict) -> dict[str, list[tuple[str, float]]]:
    """Ladder name -> its levels [(dataset, strength)], named `<ladder>_<k>` for k = 1..n in config order.

    The one place level names are made: check_config adds these datasets to `datasets` and
    the experiments' targets; the report and the claims check read them back from here.
    """
    return {name: [(f"{name}_{k}", s) for k, s in enumerate(spec["strengths"], start=1)]
            for name, spec in config["ladders"].items()}


def base_set(config: dict, dataset: str) -> str:
    """The independent base set a dataset is made from: follow `datasets.<name>.base` (class subsets,
    transforms, ladder levels) down to a registered dataset. Targets with one base set form one
    cluster in the claims check: a shift in how a model sees that base moves all of them together."""
    seen = [dataset]
    # A folder dataset is its own base set (FOLDER names no dataset).
    while dataset in config["datasets"] and config["datasets"][dataset].get("base") not in (None, dataset, FOLDER):
        dataset = config["datasets"][dataset]["base"]
        if dataset in seen:
            raise ConfigError(f"config error at datasets.{seen[0]}.base: a cycle {' -> '.join(seen + [dataset])}")
        seen.append(dataset)
    return dataset


def near_far(config: dict, experiment: str) -> tuple[list[str], list[str]]:
    """(near, far) targets of `experiment` for the claims check.

    The declared `near`/`far` lists when either is given; otherwise the first level of each of
    the experiment's ladders is near and the last far; both empty when there is neither.
    """
    exp = config["experiments"][experiment]
    near, far = list(exp["near"]), list(exp["far"])
    if near or far:
        return near, far
    levels = ladder_levels(config)
    ladders = [levels[n] for n in exp["ladders"] if levels.get(n)]
    return [lv[0][0] for lv in ladders], [lv[-1][0] for lv in ladders]


def _check_strength(transform: str, strength: float, key: str) -> None:
    from atlib.data.derived import UNIT_STRENGTH

    if transform in UNIT_STRENGTH and not 0 <= strength <= 1:
        raise ConfigError(f"config error at {key}: {transform} strength must be in [0, 1], got {strength}")


def _expand_ladders(config: dict, known_datasets: set[str]) -> None:
    """Add every ladder level to config["datasets"] as a derived dataset.

    Idempotent (a config may be checked twice): a level already present with the same spec is
    kept; any other dataset of that name is refused.
    """
    levels = ladder_levels(config)
    for name, spec in config["ladders"].items():
        where = f"ladders.{name}"
        s = spec["strengths"]
        for i in range(1, len(s)):
            if s[i] <= s[i - 1]:
                raise ConfigError(f"config error at {where}.strengths[{i}]: strengths must be strictly "
                                  f"increasing, got {s}")
        for i, v in enumerate(s):
            _check_strength(spec["transform"], v, f"{where}.strengths[{i}]")
        for ds, strength in levels[name]:
            level = {"base": spec["base"], "classes": copy.deepcopy(spec["classes"]),
                     "transform": spec["transform"], "strength": strength, "max_train": spec["max_train"],
                     "max_test": spec["max_test"], "seed": spec["seed"]}
            if ds in known_datasets:
                raise ConfigError(f"config error at {where}: level {ds!r} clashes with a registered dataset")
            # A second check sees the level with the schema's defaults filled (folder-only keys too).
            existing = config["datasets"].setdefault(ds, level)
            if {k: v for k, v in existing.items() if k in level} != level:
                raise ConfigError(f"config error at {where}: level {ds!r} clashes with datasets.{ds}")
    names = set(known_datasets) | set(config["datasets"])
    for name, spec in config["ladders"].items():
        if spec["base"] not in names or spec["base"] in {ds for ds, _ in levels[name]}:
            raise ConfigError(f"config error at ladders.{name}.base: unknown dataset {spec['base']!r}")


def _add_ladder_targets(exp: dict, levels: dict[str, list[tuple[str, float]]], where: str) -> None:
    """Append the levels of the experiment's ladders to its targets, in order, without duplicates."""
    for i, ladder in enumerate(exp["ladders"]):
        if ladder not in levels:
            raise ConfigError(f"config error at {where}.ladders[{i}]: no ladders entry {ladder!r}")
        exp["targets"] += [ds for ds, _ in levels[ladder] if ds not in exp["targets"]]


def _check_near_far(exp: dict, where: str) -> None:
    """Declared near/far targets: each a target of this experiment, not its source, not on both sides."""
    for side, other in (("near", "far"), ("far", "near")):
        for i, t in enumerate(exp[side]):
            key = f"{where}.{side}[{i}]"
            if t == exp["source"]:
                raise ConfigError(f"config error at {key}: {t!r} is the source, not a target")
            if t not in exp["targets"]:
                raise ConfigError(f"config error at {key}: {t!r} is not one of this experiment's targets "
                                  f"(after ladder expansion): {exp['targets']}")
            if t in exp[other]:
                raise ConfigError(f"config error at {key}: {t!r} is in both near and far")
