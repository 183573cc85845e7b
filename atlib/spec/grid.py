"""The grid a config implies: its models, transfers, probes, imported sources, ladder levels and near/far.

Read from a checked config (atlib.spec.config.check_config); `workflow/rules/common.smk` turns these into
targets, atlib.spec.jobs into jobs, the report reads its groupings (base sets, ladders) back from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from atlib.data.folder import FOLDER
from atlib.spec.schema import ConfigError


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
