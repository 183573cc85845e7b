"""Config checks: schema validation with defaults plus what a schema cannot express.

The Snakefile calls `check_config` before any job is planned, so a bad config stops with one message
naming the key: unknown datasets, ladders (expanded into datasets and targets), near/far targets,
pretrained entries, folder datasets, missing weights files.
"""

from __future__ import annotations

import copy
from pathlib import Path

from atlib.data.folder import FOLDER
from atlib.spec.grid import (
    GAUSSIAN_TAG,
    experiment_keys,
    experiment_tag,
    ladder_levels,
    source_file,
    source_geometry,
)
from atlib.spec.schema import ConfigError, validate_config


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
