"""Import published models as source models: MadryLab `robustness`, RobustBench, torchvision, timm.

A `source_models` entry of the config says where a model comes from. Its weights file (for RobustBench:
the zoo's own layout `{model_dir}/{dataset}/{threat_model}/{name}.pt`) is read with
`torch.load(weights_only=True)` (or safetensors), its sha256 recorded in the model's meta and checked
against a declared one. Nothing is downloaded unless the entry sets `allow_download`, and then by the
owning library's loader (`robustbench.utils.load_model`, torchvision's weights, timm's hub files).

MadryLab checkpoints load into atlib's ResNet. Their files (`cifar_l2_1_0.pt`, `imagenet_l2_3_0.pt`, ...)
hold `{"model": state_dict, ...}` (or "state_dict") of an `AttackerModel` under DataParallel:
the network under `module.model.`, a copy under `module.attacker.model.`, and the input
normalization as `module.normalizer.new_mean/new_std`. Their CIFAR ResNets name the head
`linear` and projection shortcuts `shortcut.0/1`; their ImageNet ResNet-50 is torchvision's.
The other kinds are the owner's own network (built by its library) wrapped by `adapter.Adapted`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from atlib.core.runtime import pick_device, seed_everything, set_threads
from atlib.data import Prepared, split_data
from atlib.data.store import sha256
from atlib.models.adapter import (
    Adapted,
    AdapterError,
    build_network,
    find_head_and_last_bn,
    import_robustbench,
    in_channels,
)
from atlib.models.checkpoint import CheckpointError
from atlib.models.resnet import NORMALIZATION, ResNet, build_model, weight_norm
from atlib.spec.grid import eps_str, source_file
from atlib.spec.schema import section_defaults
from atlib.spec.settings import TrainSchedule
from atlib.train import resume
from atlib.train.evaluation import evaluate_dataset, robust_metrics
from atlib.train.source import HISTORY_COLUMNS, model_meta, write_outputs

logger = logging.getLogger("atlib.train.imported")

PREFIXES = ("module.model.", "model.", "module.")


def strip_wrappers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple | None]:
    """The network's own keys of a state_dict saved under MadryLab's AttackerModel and DataParallel
    (or plain), and (mean, std) of their normalizer as (1, C, 1, 1) tensors (None when it has none)."""
    norm = None
    for prefix in ("module.normalizer.", "normalizer."):
        if f"{prefix}new_mean" in state:
            norm = (state[f"{prefix}new_mean"].reshape(1, -1, 1, 1).float(),
                    state[f"{prefix}new_std"].reshape(1, -1, 1, 1).float())
            break
    net = {k: v for k, v in state.items() if "attacker." not in k and "normalizer." not in k}
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in net):
            net = {k[len(prefix):]: v for k, v in net.items() if k.startswith(prefix)}
            break
    return net, norm


def madrylab_to_atlib(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple | None]:
    """Rename a MadryLab (or torchvision) state_dict to ours.

    Returns:
        (our state_dict without the `normalize.*` buffers, (mean, std) from their
        normalizer as tensors, or None when the checkpoint has none).
    """
    net, norm = strip_wrappers(state)
    out = {}
    for k, v in net.items():
        k = re.sub(r"^linear\.", "fc.", k)
        k = re.sub(r"\.shortcut\.", ".downsample.", k)
        out[k] = v
    return out, norm


def _unpack(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if all(torch.is_tensor(v) for v in obj.values()):
        return obj
    raise CheckpointError(f"{path}: no 'model' or 'state_dict' entry (keys: {sorted(obj)[:8]}); expected a "
                          "state_dict, or a dict holding one under 'model' or 'state_dict'")


def convert_command(path: Path) -> str:
    """The one-line command that keeps only the tensors of a checkpoint saved with Python objects."""
    out = path.with_name(f"{path.stem}.weights.pt")
    return (f"python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
            "c = c.state_dict() if hasattr(c, 'state_dict') else c.get('model', c.get('state_dict', c)); "
            f"torch.save({{k: v for k, v in c.items() if torch.is_tensor(v)}}, '{out}')\"")


def read_weights(path: str | Path) -> dict[str, Any]:
    """A weights file's dict: safetensors, or `torch.load(weights_only=True)`.

    Raises:
        CheckpointError: missing, not a checkpoint, or one that needs arbitrary unpickling (the
            message then gives `convert_command`, to run only on a file you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; stage it there or fix the source_models entry")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}); expected the library's "
                                  "weights file: download it again") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for pickles, truncated or foreign files
        if "Weights only load failed" in str(err) and "Unsupported global" in str(err):
            raise CheckpointError(f"{path}: saved with Python objects that weights_only=True refuses to unpickle; "
                                  f"if you trust the file, keep only its tensors with: {convert_command(path)} "
                                  "and point the config at the .weights.pt file") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]}); expected a state_dict saved with torch.save "
                              "or a .safetensors file: check the path, or download the file again") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a dict of weights (a state_dict)")
    return obj


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, fix: str) -> None:
    """`load_state_dict(strict=True)`, or one CheckpointError naming the file, the architecture and the fix."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {what} ({' '.join(str(err).split())[:300]}); {fix}") \
            from None


def check_sha256(path: Path, declared: str | None, where: str) -> str:
    """The file's sha256; CheckpointError when it differs from the `declared` one."""
    digest = sha256(path)
    if declared and digest != declared.lower():
        raise CheckpointError(f"{path}: sha256 {digest} differs from {declared} declared at {where}.sha256: it is "
                              "not the file the config names; stage the right file, or declare the new hash if "
                              "this file is intended")
    return digest


def load_pretrained(path: str | Path, arch: str, normalization: str | None = None) -> ResNet:
    """Our `arch` with the weights (and normalization, if it has one) of a MadryLab checkpoint.

    Args:
        path: MadryLab `robustness` checkpoint or torchvision ResNet state_dict.
        arch: our architecture name (`resnet50` for MadryLab CIFAR, `resnet50_imagenet`).
        normalization: dataset whose mean/std are used when the checkpoint has no normalizer.
    Raises:
        CheckpointError: unreadable file, or weights that do not fit `arch` (names the file).
    """
    path = Path(path)
    state, norm = madrylab_to_atlib(_unpack(read_weights(path), path))
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise CheckpointError(f"{path}: no conv1/fc weights after renaming (first keys: {sorted(state)[:5]}); "
                              f"expected a MadryLab `robustness` ResNet checkpoint for {arch}")
    num_classes, in_channels = state["fc.weight"].shape[0], state["conv1.weight"].shape[1]
    width = state["conv1.weight"].shape[0] / 64
    model = build_model(arch, num_classes, in_channels, width, normalization)
    if norm is not None:
        state["normalize.mean"], state["normalize.std"] = norm
    else:
        state["normalize.mean"], state["normalize.std"] = model.normalize.mean, model.normalize.std
    _load_strict(model, state, path, arch, "set the experiment's arch to the checkpoint's architecture")
    return model.eval()


def _normalization(entry: dict[str, Any], default: tuple) -> tuple:
    name = entry.get("normalization")
    if name is None:
        return default
    return ((0.0,) * 3, (1.0,) * 3) if name == "none" else NORMALIZATION[name]


def _robustbench(entry: dict[str, Any], where: str) -> tuple[nn.Module, dict[str, Any], Path]:
    """The zoo's network with the weights of its pre-staged (or, if allowed, downloaded) file."""
    import timm

    zoo = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model

    ds, tm, name = entry["dataset"], entry["threat_model"], entry["name"]
    models = zoo.model_dicts[BenchmarkDataset(ds)][ThreatModel(tm)]
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3)
        raise CheckpointError(f"{where}.name: {name!r} is not in RobustBench's {ds} {tm} zoo ({len(models)} models"
                              f"{'; closest: ' + ', '.join(close) if close else ''}); use a name of "
                              f"robustbench.model_zoo.model_dicts[{ds}][{tm}]")
    served_by_timm = timm.is_model(f"{name.lower().replace('-', '_')}_{ds}_{tm.lower()}")
    if isinstance(models[name]["gdrive_id"], list) or served_by_timm or (ds == "imagenet" and "Standard" in name):
        raise CheckpointError(f"{where}.name: RobustBench's {name!r} is an ensemble or served by another library "
                              "(timm's hub, torchvision's weights); import a single network, or that library's "
                              "weights with kind timm / torchvision")
    path = source_file(entry)
    if not path.is_file() and not entry["allow_download"]:
        raise CheckpointError(f"{path}: RobustBench model {name} is not pre-staged ({where}); put its file there "
                              "(RobustBench's layout {model_dir}/{dataset}/{threat_model}/{name}.pt) or set "
                              f"{where}.allow_download: true")
    if path.is_file():
        read_weights(path)  # refuses files that need arbitrary unpickling before RobustBench loads them
    try:
        net = load_model(name, entry["model_dir"], ds, tm)  # downloads only when the file is missing
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit RobustBench's {name} ({ds}, {tm}) architecture "
                              f"({str(err).splitlines()[0][:200]}); stage the file of {name}, or name the model "
                              "these weights belong to") from None
    return net, {"library": "robustbench", "name": name, "dataset": ds, "threat_model": tm}, path


def _download(entry: dict[str, Any]) -> Path:
    """Fetch a torchvision / timm weights file with the library's own loader; its cached path."""
    if entry["kind"] == "torchvision":
        from atlib.core.compat import import_torchvision

        weights = import_torchvision().models.get_model_weights(entry["arch"])[entry["weights"]]
        weights.get_state_dict(progress=False, check_hash=True)
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.create_model(entry["arch"], pretrained=False).pretrained_cfg
    return Path(hf_hub_download(cfg["hf_hub_id"], "model.safetensors"))


def _library_net(entry: dict[str, Any], where: str) -> tuple[nn.Module, dict[str, Any], Path, tuple | None]:
    """A torchvision / timm architecture with the weights of the entry's file (a plain state_dict, or
    one saved by MadryLab's code, e.g. Salman et al.'s ImageNet models), and the file's normalizer."""
    path = source_file(entry)
    if (path is None or not path.is_file()) and entry["allow_download"]:
        path = _download(entry)
    elif path is None:
        raise CheckpointError(f"{where}.file: no weights file named and allow_download is false; name the file")
    state, norm = strip_wrappers(_unpack(read_weights(path), path))
    spec = {"library": entry["kind"], "arch": entry["arch"], "num_classes": 1000}
    try:
        net = build_network(spec)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{where}.arch: {entry['arch']!r} is not a {entry['kind']} model ({err})") from None
    head = entry.get("head") or find_head_and_last_bn(net)[0]
    n = state.get(f"{head}.weight", torch.empty(spec["num_classes"])).shape[0]
    if n != spec["num_classes"]:
        spec["num_classes"] = int(n)
        net = build_network(spec)
    _load_strict(net, state, path, f"{entry['kind']}'s {entry['arch']}", f"set {where}.arch to the weights' "
                 "architecture")
    return net, spec, path, norm


def load_source(entry: dict[str, Any], arch: str, where: str, normalization: str | None = None,
                image_size: int = 32) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a source_models entry and its provenance (kind, file, sha256, ...).

    Args:
        entry: a source_models entry (missing keys take the schema defaults).
        arch: the experiment's arch (robustness: the atlib architecture to load into).
        where: the entry's config key, for messages.
        normalization: the source dataset (robustness checkpoints without a normalizer use its statistics).
        image_size: side of the probe images that check the wrapped model against the owner's.
    Raises:
        CheckpointError: one message naming the file (or key), what was expected and the fix.
    """
    entry = section_defaults(entry, "source_model")  # callers may pass only the keys that differ
    kind, path = entry["kind"], source_file(entry)
    # The declared hash is checked before anything is read; a downloaded file right after the download.
    digest = check_sha256(path, entry["sha256"], where) if path is not None and path.is_file() else None
    if kind == "robustness":
        model = load_pretrained(path, arch, normalization)
        return model, {"kind": kind, "file": str(path), "sha256": digest}
    if kind == "robustbench":
        net, spec, path = _robustbench(entry, where)
        norm = _normalization(entry, ((0.0,) * 3, (1.0,) * 3))
    else:
        net, spec, path, saved = _library_net(entry, where)
        cfg = getattr(net, "pretrained_cfg", None) or {}
        default = (tuple(cfg["mean"]), tuple(cfg["std"])) if "mean" in cfg else NORMALIZATION["imagenet"]
        norm = _normalization(entry, default if saved is None else tuple(tuple(t.flatten().tolist()) for t in saved))
    digest = digest or check_sha256(path, entry["sha256"], where)
    model = _wrap(net.eval(), spec, entry, norm, image_size, path)
    keys = ("name", "dataset", "threat_model") if kind == "robustbench" else ("arch", "weights")
    return model, {"kind": kind, "file": str(path), "sha256": digest, **{k: entry[k] for k in keys if entry.get(k)}}


def _wrap(net: nn.Module, spec: dict[str, Any], entry: dict[str, Any], norm: tuple, image_size: int,
          path: Path) -> Adapted:
    """`Adapted(net)`, checked to give the owner's logits on random images."""
    try:
        head, last_bn = entry["head"], entry["last_bn"]
        if head is None or last_bn is None:  # what is not declared is found by tracing
            found = find_head_and_last_bn(net)
            head, last_bn = head or found[0], last_bn or found[1]
        c = in_channels(net)
        probe = torch.rand(2, c, image_size, image_size, generator=torch.Generator().manual_seed(0))
        mean, std = torch.tensor(norm[0][:c]).view(1, -1, 1, 1), torch.tensor(norm[1][:c]).view(1, -1, 1, 1)
        with torch.no_grad():
            want = net((probe - mean) / std)
        model = Adapted(net, head, last_bn, norm[0][:c], norm[1][:c], spec).eval()
        with torch.no_grad():
            got = model(probe)
    except (AdapterError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot adapt {type(net).__name__} ({str(err).splitlines()[0][:200]}); "
                              "declare head and last_bn in its source_models entry") from None
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        raise CheckpointError(f"{path}: {type(net).__name__}'s output is not its linear layer {head!r} applied to "
                              "the layer's input (it transforms the logits); declare the right head in its "
                              "source_models entry")
    return model


def import_source(
    entry: dict[str, Any],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    arch: str,
    eps: float,
    seed: int,
    schedule: TrainSchedule | None = None,
    device: str | torch.device = "cpu",
    threads: int = 2,
    log: logging.Logger = logger,
    rng_seed: int | None = None,
    where: str = "source_models entry",
) -> dict[str, Any]:
    """Import a published model as the source model `out_dir` (instead of training it).

    Writes the same three files as `train.train_source`: model.pt (its meta records the import:
    kind, file, sha256; and for wrapped networks the adapter), metrics.json (evaluated on the
    source test set with the schedule's evaluation block; epochs 0, train_time_s 0) and a one-row
    history.csv (epoch 0: test accuracies and weight norm, train columns empty). `seed` is
    recorded; `rng_seed` (default `seed`) seeds the attacks' random restarts.

    Args:
        entry: the source_models entry (missing keys take the schema defaults); `where` names it in
            messages.
        schedule: the experiment's train schedule (its evaluation and attack norm); None: the schema's
            defaults.
    """
    sched = schedule or TrainSchedule.from_config()
    seed_everything(seed if rng_seed is None else rng_seed)
    set_threads(threads)
    dev = pick_device(str(device))
    prep = Prepared(data_dir)
    model, provenance = load_source(entry, arch, where, prep.name, prep.image_size)
    file = provenance["file"]
    if model.fc.out_features != prep.num_classes:
        raise CheckpointError(f"{file}: {model.fc.out_features} classes, but the source dataset {prep.name} has "
                              f"{prep.num_classes}; import it for a source with {model.fc.out_features} classes")
    chans = model.conv1.in_channels if isinstance(model, ResNet) else in_channels(model.net)
    if chans != prep.channels:
        raise CheckpointError(f"{file}: takes {chans}-channel images, but the source dataset {prep.name} has "
                              f"{prep.channels}; use a source dataset of the model's kind")
    t0 = time.time()
    test = split_data(prep, "test")
    evaluation = dict(sched.evaluation)
    evaluation["eps"] = sorted({*map(float, evaluation["eps"]), float(eps)})
    aa = evaluation["autoattack"]  # AutoAttack at the configured eps only, not the added training eps
    evaluation["autoattack"] = {**aa, "eps": aa["eps"] if aa["eps"] is not None else sched.evaluation["eps"]}
    rdir = Path(out_dir) / "resume"
    ev = evaluate_dataset(model, test, evaluation, dev, sched.attack["norm"], seed=seed if rng_seed is None
                          else rng_seed, state_dir=rdir, log=log)
    keep = {eps_str(e) for e in sched.evaluation["eps"]}
    wn = weight_norm(model)
    row = {c: float("nan") for c in HISTORY_COLUMNS}
    row.update(epoch=0, test_acc=ev["natural_acc"], test_adv_acc=ev["pgd_acc"].get(eps_str(eps), float("nan")),
               weight_norm=wn, time_s=time.time() - t0)
    metrics = {"natural_acc": ev["natural_acc"], "natural_acc_ci": ev["natural_acc_ci"],
               **robust_metrics({**ev, "pgd_acc": {k: v for k, v in ev["pgd_acc"].items() if k in keep}}),
               "weight_norm": wn, "epochs": 0, "train_time_s": 0.0, "eps": float(eps), "source": prep.name,
               "arch": arch, "seed": int(seed)}
    if isinstance(model, Adapted):
        extra = {"adapter": model.spec}
        width = 1.0
    else:
        extra, width = {}, model.conv1.out_channels / 64
    meta = model_meta(prep, arch, width, eps, seed, pretrained=file, imported=provenance, **extra)
    write_outputs(Path(out_dir), model, meta, [row], metrics)
    resume.clear(rdir)  # AutoAttack's progress
    log.info("imported %s (%s, sha256 %s) as %s: natural %.2f%%, pgd %s", file, provenance["kind"],
             provenance["sha256"], out_dir, metrics["natural_acc"], metrics["pgd_acc"])
    return metrics
