"""Config validation: defaults from the schema, and bad configs refused naming the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from atlib.spec.config import check_config
from atlib.spec.grid import ModelKey, eps_str, iter_models, ladder_levels, model_experiments, near_far
from atlib.spec.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {"fashion_mnist", "mnist5k", "digits", "textures", "photos", "letters", "shapes", "cifar10", "cifar100",
            "imagenet", "mnist", "svhn", "aircraft", "birds", "cars", "dogs", "flowers", "indoor67", "cinic_imagenet"}


def demo() -> dict:
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def test_demo_and_paper_configs_are_valid_and_filled():
    cfg = check_config(demo(), DATASETS)
    assert cfg["train_schedules"]["demo"]["attack"]["random_start"] is True  # default filled in
    assert cfg["experiments"]["demo"]["pretrained"] == {}
    assert cfg["fisher"]["kind"] == "true" and cfg["tracking"]["experiment"] == "atlib"
    paper = check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), DATASETS)
    assert paper["finetune_schedules"]["cifar"]["milestones"] == [50, 80]
    assert paper["finetune_schedules"]["imagenet"]["epochs"] == 300


def test_paper_grid_models():
    paper = check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), DATASETS)
    paths = {k.path for _, k in iter_models(paper)}
    assert "imagenet/resnet50_imagenet/eps3/s0" in paths
    assert {f"cifar10/resnet18/eps{e}/s0" for e in ("0", "0.25", "0.5", "1", "2")} <= paths
    assert "cifar100/resnet18/eps1/s0" in paths and "cifar10/resnet50/eps1/s0" in paths


def test_eps_canonical_form():
    assert [eps_str(e) for e in (0, 0.0, 1, 1.0, 0.5, 0.25, 3)] == ["0", "0", "1", "1", "0.5", "0.25", "3"]
    assert ModelKey("cifar10", "resnet18", "0.5", 1).path == "cifar10/resnet18/eps0.5/s1"


def test_gaussian_model_path_tag():
    key = ModelKey("cifar10", "resnet18", "0.5", 1, "gn")
    assert key.path == "cifar10/resnet18/gn0.5/s1" and key.gaussian
    assert key.standard.path == "cifar10/resnet18/eps0/s1" and not key.standard.gaussian
    assert ModelKey("cifar10", "resnet18", "0", 1, "gn").path == "cifar10/resnet18/gn0/s1"


def _with_gaussian(cfg: dict, **exp) -> dict:
    """`cfg` plus experiment `gn` (the demo's source and arch, seed 7: the demo's own Gaussian-noise
    models use seeds 0-2) trained with a gaussian schedule."""
    cfg["train_schedules"]["gn"] = {**cfg["train_schedules"]["demo"], "objective": "gaussian"}
    demo_exp = cfg["experiments"]["demo"]
    cfg["experiments"]["gn"] = {"source": demo_exp["source"], "arch": demo_exp["arch"], "width": demo_exp["width"],
                                "eps": [0, 1], "seeds": [7], "train": "gn", "analyses": ["fisher"], **exp}
    return cfg


def test_gaussian_experiment_models_beside_pgd_ones():
    cfg = check_config(_with_gaussian(demo()), DATASETS)
    src, arch = cfg["experiments"]["demo"]["source"], cfg["experiments"]["demo"]["arch"]
    gn = [k for name, k in iter_models(cfg) if name == "gn"]
    assert [k.path for k in gn] == [f"{src}/{arch}/gn0/s7", f"{src}/{arch}/gn1/s7"]
    others = {k.path for name, k in iter_models(cfg) if name != "gn"}
    assert f"{src}/{arch}/eps1/s0" in others and f"{src}/{arch}/eps0/s0" in others  # no collision
    owners = model_experiments(cfg)
    assert owners[f"{src}/{arch}/gn1/s7"] == "gn" and owners[f"{src}/{arch}/eps1/s0"] != "gn"


def test_gaussian_experiment_with_targets_refused():
    with pytest.raises(ConfigError, match=r"experiments\.gn\.targets: transfers from Gaussian-noise models"):
        check_config(_with_gaussian(demo(), targets=["mnist5k"]), DATASETS)


def test_gaussian_schedule_validated():
    cfg = demo()
    cfg["train_schedules"]["demo"]["objective"] = "gauss"
    with pytest.raises(ConfigError, match=r"train_schedules\.demo\.objective"):
        check_config(cfg, DATASETS)


def _set(cfg: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cfg


_DELETE = object()

BAD = [  # (what, key to change, new value, text the message must contain)
    ("unknown source dataset", "experiments.demo.source", "imagenet22k", "experiments.demo.source"),
    ("unknown target dataset", "experiments.demo.targets", ["mnist5k", "nope"], "experiments.demo.targets[1]"),
    ("negative eps", "experiments.demo.eps", [0, -1], "experiments.demo.eps[1]"),
    ("mode 3", "experiments.demo.modes", [0, 3], "experiments.demo.modes[1]"),
    ("missing experiments", "experiments", _DELETE, "'experiments' is a required property"),
    ("missing arch", "experiments.demo.arch", _DELETE, "experiments.demo: 'arch' is a required property"),
    ("wrong type", "train_schedules.demo.epochs", "ten", "train_schedules.demo.epochs"),
    ("unknown arch", "experiments.demo.arch", "vgg16", "experiments.demo.arch"),
    ("unknown key (typo)", "resluts", "out", "'resluts' was unexpected"),
    ("unknown train schedule", "experiments.demo.train", "fast", "experiments.demo.train"),
    ("derived from unknown base", "datasets.fmnist04.base", "fashion", "datasets.fmnist04.base"),
    ("zero loss budget", "fisher.loss_budget", 0, "fisher.loss_budget"),
    ("negative loss budget", "fisher.loss_budget", -0.1, "fisher.loss_budget"),
    ("budget sweep spans < 100x", "fisher.budget_factors", [0.5, 10], "fisher.budget_factors"),
    ("removed key fisher.beta", "fisher.beta", 1e-3, "'beta' was unexpected"),
    ("removed key invert.beta", "invert.beta", 1e-8, "'beta' was unexpected"),
    ("negative learning rate", "finetune_schedules.demo.lr", -0.1, "finetune_schedules.demo.lr"),
    ("pretrained for an eps not trained", "experiments.demo.pretrained", {"3": "x.pt"}, "experiments.demo.pretrained.3"),
    ("transfer without a standard model", "experiments.demo.eps", [1], "experiments.demo.eps"),
    ("pretrained naming no source_models entry", "experiments.demo.pretrained", {"1": "madry"},
     "experiments.demo.pretrained.1: no source_models entry 'madry'"),
    ("trained eps of a foreign arch", "experiments.demo.arch", "wrn28_10",
     "experiments.demo.arch: 'wrn28_10' is not an architecture atlib trains"),
    ("arch not a path name", "experiments.demo.arch", "wrn/28", "experiments.demo.arch"),
    ("unknown source model kind", "source_models", {"m": {"kind": "hub"}}, "source_models.m.kind"),
    ("bad declared sha256", "source_models", {"m": {"kind": "robustbench", "name": "Standard", "sha256": "abc"}},
     "source_models.m.sha256"),
    ("bad transform", "datasets.fmnist59.transform", "swirl", "datasets.fmnist59.transform"),
    ("seeds not a list", "experiments.demo.seeds", 0, "experiments.demo.seeds"),
    ("invert_mix strength above 1", "datasets.mnist_inv", {"base": "mnist5k", "transform": "invert_mix",
                                                           "strength": 1.5}, "datasets.mnist_inv.strength"),
]


@pytest.mark.parametrize("what,key,value,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_config_refused_naming_key(what, key, value, expect):
    cfg = _set(copy.deepcopy(demo()), key, value)
    with pytest.raises(ConfigError) as err:
        check_config(cfg, DATASETS)
    assert expect in str(err.value), str(err.value)


def with_ladder(**exp_keys) -> dict:
    """The demo with only a 3-level blur ladder on digits, used by experiment `demo` (its own ladders and
    near/far declarations replaced)."""
    cfg = demo()
    cfg["ladders"] = {"dblur": {"base": "digits", "transform": "blur", "strengths": [0.5, 1, 2], "max_train": 50}}
    cfg["experiments"]["demo"].update({"ladders": ["dblur"], "near": [], "far": [], **exp_keys})
    return cfg


LADDER_BAD = [  # (what, ladders.dblur / experiments.demo overrides, text the message must contain)
    ("ladder with 2 levels", {"strengths": [1, 2]}, {}, "ladders.dblur.strengths: [1, 2] is too short (at least 3"),
    ("non-increasing strengths", {"strengths": [1, 2, 2]}, {}, "ladders.dblur.strengths[2]"),
    ("decreasing strengths", {"strengths": [3, 2, 1]}, {}, "ladders.dblur.strengths[1]"),
    ("invert_mix ladder above 1", {"transform": "invert_mix", "strengths": [0.2, 0.6, 1.5]}, {},
     "ladders.dblur.strengths[2]"),
    ("ladder from unknown base", {"base": "digitz"}, {}, "ladders.dblur.base"),
    ("ladder without transform", {"transform": None}, {}, "ladders.dblur"),
    ("unknown ladder in experiment", {}, {"ladders": ["dblur", "nope"]}, "experiments.demo.ladders[1]"),
    ("near not a target", {}, {"near": ["dblur_1", "cifar10"]}, "experiments.demo.near[1]"),
    ("far not a target", {}, {"far": ["dblur_3", "mnist5k", "svhn"]}, "experiments.demo.far[2]"),
    ("source in near", {}, {"near": ["fmnist04"]}, "experiments.demo.near[0]"),
    ("source in far", {}, {"far": ["digits", "fmnist04"]}, "experiments.demo.far[1]"),
    ("target in both lists", {}, {"near": ["dblur_1"], "far": ["dblur_3", "dblur_1"]}, "experiments.demo.near[0]"),
]


@pytest.mark.parametrize("what,ladder,exp,expect", LADDER_BAD, ids=[b[0] for b in LADDER_BAD])
def test_bad_ladder_or_near_far_refused_naming_key(what, ladder, exp, expect):
    cfg = with_ladder(**exp)
    for k, v in ladder.items():
        if v is None:
            del cfg["ladders"]["dblur"][k]
        else:
            cfg["ladders"]["dblur"][k] = v
    with pytest.raises(ConfigError) as err:
        check_config(cfg, DATASETS)
    assert expect in str(err.value), str(err.value)


def test_ladder_level_name_clash_refused():
    cfg = with_ladder()
    cfg["datasets"]["dblur_2"] = {"base": "digits", "transform": "blur", "strength": 5}
    with pytest.raises(ConfigError, match=r"ladders\.dblur: level 'dblur_2' clashes with datasets\.dblur_2"):
        check_config(cfg, DATASETS)
    cfg = with_ladder()
    cfg["ladders"]["mnist"] = cfg["ladders"]["dblur"]  # mnist_1..3 are fine; only an exact registered name clashes
    check_config(cfg, DATASETS)
    with pytest.raises(ConfigError, match="clashes with a registered dataset"):
        check_config(with_ladder(), DATASETS | {"dblur_3"})


def test_ladder_expands_into_datasets_and_targets():
    cfg = with_ladder()
    cfg["experiments"]["demo"]["targets"] = ["mnist5k", "dblur_2"]  # a level already listed stays in place
    out = check_config(cfg, DATASETS)
    assert ladder_levels(out) == {"dblur": [("dblur_1", 0.5), ("dblur_2", 1), ("dblur_3", 2)]}
    level = {"base": "digits", "classes": None, "transform": "blur", "strength": 2, "max_train": 50, "max_test": None,
             "seed": 0}
    # the level's own keys, and the schema's defaults of the image-folder keys it does not use
    assert {k: out["datasets"]["dblur_3"][k] for k in level} == level
    assert out["datasets"]["dblur_3"]["path"] is None and set(out["datasets"]["dblur_3"]) - set(level) == {
        "path", "test_fraction", "image_size", "channels"}
    assert out["experiments"]["demo"]["targets"] == ["mnist5k", "dblur_2", "dblur_1", "dblur_3"]
    assert out["experiments"]["demo_sweep"]["targets"] == []
    again = check_config(copy.deepcopy(out), DATASETS)  # the Snakefile and a script may both check it
    assert again == out


def test_ladder_transfers_are_planned():
    from atlib.spec.grid import transfer_experiments

    jobs = transfer_experiments(check_config(with_ladder(), DATASETS))
    assert {t for (_, t, _) in jobs} >= {"dblur_1", "dblur_2", "dblur_3"}


def test_near_far_declared_or_from_ladders():
    cfg = with_ladder()
    cfg["ladders"]["drot"] = {"base": "digits", "transform": "rotate", "strengths": [15, 45, 90, 180]}
    cfg["experiments"]["demo"]["ladders"] = ["drot", "dblur"]
    out = check_config(cfg, DATASETS)
    assert near_far(out, "demo") == (["drot_1", "dblur_1"], ["drot_4", "dblur_3"])
    assert near_far(out, "demo_sweep") == ([], [])  # no ladder, nothing declared
    declared = check_config(with_ladder(near=["fmnist59", "dblur_1"], far=["textures"]), DATASETS)
    assert near_far(declared, "demo") == (["fmnist59", "dblur_1"], ["textures"])


def test_base_set_follows_derivations_to_a_registered_dataset():
    from atlib.spec.grid import base_set

    out = check_config(with_ladder(), DATASETS)
    assert base_set(out, "dblur_2") == "digits"  # a ladder level: its ladder's base
    assert base_set(out, "fmnist59") == "fashion_mnist" and base_set(out, "fmnist04") == "fashion_mnist"
    assert base_set(out, "mnist5k") == "mnist5k"  # registered: its own base
    loop = {"datasets": {"a": {"base": "b"}, "b": {"base": "a"}}}
    with pytest.raises(ConfigError, match="a cycle a -> b -> a"):
        base_set(loop, "a")


def test_same_model_with_two_schedules_refused():
    cfg = demo()
    cfg["train_schedules"]["other"] = {"epochs": 1}
    cfg["experiments"]["demo_sweep"]["train"] = "other"
    with pytest.raises(ConfigError, match="defined again"):
        check_config(cfg, DATASETS)


def test_schema_has_only_known_keywords():
    """Catches YAML flow-mapping slips (an unquoted comma in a description makes a stray key)."""
    from atlib.spec.schema import load_schema

    known = {"type", "default", "description", "enum", "minimum", "maximum", "exclusiveMinimum", "items",
             "minItems", "properties", "additionalProperties", "required", "$ref", "minProperties", "title",
             "$schema", "$defs", "pattern"}
    stray = []

    def walk(node, parent):
        if isinstance(node, dict):
            for k, v in node.items():
                if parent not in ("properties", "$defs") and k not in known:
                    stray.append(k)
                walk(v, k)

    walk(load_schema(), "")
    assert stray == []


def test_readme_documents_every_config_key():
    from atlib.spec.schema_doc import BEGIN, END, render

    readme = (ROOT / "README.md").read_text()
    assert readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)].strip() == render().strip(), \
        "README config table is stale: run `python -m atlib.spec.schema_doc`"


def test_demo_power_overlay_merges_into_a_valid_config():
    """config/demo_power.yaml is an overlay: merged the way Snakemake merges --configfile a b."""
    from snakemake.utils import update_config

    cfg = demo()
    update_config(cfg, yaml.safe_load((ROOT / "config" / "demo_power.yaml").read_text()))
    out = check_config(cfg, DATASETS)
    assert out["datasets"]["fmnist04"]["classes"] == [0, 1, 2, 3, 4]  # kept from the demo
    assert out["datasets"]["fmnist04"]["max_train"] == 20000 and out["train_schedules"]["demo"]["attack"]["steps"] == 2
    assert out["experiments"]["demo"]["targets"] == check_config(demo(), DATASETS)["experiments"]["demo"]["targets"]
    assert len([t for t in out["experiments"]["demo"]["targets"] if t != "fmnist04"]) == 14
    assert len(near_far(out, "demo")[1]) == 7 and near_far(out, "demo")[1][-1] == "shapes"


def with_import(entry: dict, arch: str = "resnet8", eps: str = "1") -> dict:
    """The demo with experiment `demo` importing `entry` (source_models.m) at `eps`."""
    cfg = demo()
    cfg["source_models"] = {"m": entry}
    cfg["experiments"]["demo"].update(arch=arch, pretrained={eps: "m"})
    return cfg


@pytest.mark.parametrize("entry,arch,expect", [
    ({"kind": "robustness"}, "resnet8", "source_models.m.file: a robustness source model needs file"),
    ({"kind": "robustness", "file": "m.pt"}, "wrn", "experiments.demo.pretrained.1: a robustness checkpoint "
                                                    "loads into an atlib arch"),
    ({"kind": "robustbench"}, "resnet8", "source_models.m.name: a robustbench source model needs name"),
    ({"kind": "torchvision", "file": "w.pth"}, "resnet8", "source_models.m.arch: a torchvision source model"),
    ({"kind": "timm", "arch": "resnet18"}, "resnet8", "source_models.m.file: a timm source model needs file"),
    ({"kind": "torchvision", "arch": "resnet18", "allow_download": True}, "resnet8",
     "source_models.m.weights: a torchvision source model needs weights"),
])
def test_source_model_entries_are_checked(entry, arch, expect):
    with pytest.raises(ConfigError, match=re.escape(expect)):
        check_config(with_import(entry, arch), DATASETS)


def test_imported_foreign_arch_plans_and_missing_files_are_named(tmp_path):
    from atlib.spec.config import missing_source_files
    from atlib.spec.grid import pretrained_entry

    entry = {"kind": "robustbench", "name": "Standard", "model_dir": str(tmp_path)}
    cfg = with_import(entry, "wrn28_10")
    cfg["experiments"]["demo"]["pretrained"]["0"] = "m"  # every eps imported: any arch name is fine
    check_config(cfg, DATASETS)
    assert pretrained_entry(cfg, cfg["experiments"]["demo"], 1.0)[0] == "m"
    assert pretrained_entry(cfg, cfg["experiments"]["demo"], 2) is None
    (msg,) = missing_source_files(cfg)
    assert msg.startswith(f"{tmp_path}/cifar10/Linf/Standard.pt: weights of source_models.m") and \
        "allow_download: true" in msg
    cfg["source_models"]["m"]["allow_download"] = True
    assert missing_source_files(cfg) == []


def test_defaults_are_filled_as_copies():
    from atlib.spec.schema import validate_config

    def config() -> dict:
        return {"experiments": {e: {"source": "s", "arch": "resnet8", "eps": [0]} for e in ("x", "y")}}

    a = validate_config(config())
    assert a["experiments"]["x"]["targets"] == [] and a["experiments"]["x"]["modes"]
    assert a["experiments"]["x"]["targets"] is not a["experiments"]["y"]["targets"]
    a["experiments"]["x"]["targets"].append("t")
    a["fisher"]["budget_factors"].append(1e9)
    b = validate_config(config())  # the schema's defaults are untouched
    assert b["experiments"]["x"]["targets"] == [] and 1e9 not in b["fisher"]["budget_factors"]
