"""Import published checkpoints as source models (MadryLab `robustness`, torchvision).

MadryLab's checkpoints (`cifar_l2_1_0.pt`, `imagenet_l2_3_0.pt`, ...) hold
`{"model": state_dict, ...}` (or "state_dict") of an `AttackerModel` under DataParallel:
the network under `module.model.`, a copy under `module.attacker.model.`, and the input
normalization as `module.normalizer.new_mean/new_std`. Their CIFAR ResNets name the head
`linear` and projection shortcuts `shortcut.0/1`; their ImageNet ResNet-50 is torchvision's.
Plain torchvision state_dicts (ImageNet weights) load by name as well.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, safe_load
from .config import eps_str
from .data import Prepared
from .models import ResNet, build_model
from .runtime import pick_device, seed_everything, set_threads
from .train import HISTORY_COLUMNS, evaluate_dataset, model_meta, schedule_defaults, split_data, weight_norm, \
    write_outputs

logger = logging.getLogger("atlib.pretrained")

PREFIXES = ("module.model.", "model.", "module.")


def madrylab_to_atlib(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple | None]:
    """Rename a MadryLab (or torchvision) state_dict to ours.

    Returns:
        (our state_dict without the `normalize.*` buffers, (mean, std) from their
        normalizer as tensors, or None when the checkpoint has none).
    """
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
    raise CheckpointError(f"{path}: no 'model' or 'state_dict' entry (keys: {sorted(obj)[:8]})")


def load_pretrained(path: str | Path, arch: str, normalization: str | None = None) -> ResNet:
    """Our `arch` with the weights (and normalization, if it has one) of a published checkpoint.

    Args:
        path: MadryLab `robustness` checkpoint or torchvision state_dict.
        arch: our architecture name (`resnet50` for MadryLab CIFAR, `resnet50_imagenet`).
        normalization: dataset whose mean/std are used when the checkpoint has no normalizer.
    Raises:
        CheckpointError: unreadable file, or weights that do not fit `arch` (names the file).
    """
    path = Path(path)
    try:
        obj = safe_load(path)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}. If it is a MadryLab checkpoint saved with extra Python objects, keep only its weights: "
            f"torch.save(torch.load(p, weights_only=False)['model'], 'weights.pt') and point the config there"
        ) from None
    state, norm = madrylab_to_atlib(_unpack(obj, path))
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise CheckpointError(f"{path}: no conv1/fc weights after renaming (first keys: {sorted(state)[:5]})")
    num_classes, in_channels = state["fc.weight"].shape[0], state["conv1.weight"].shape[1]
    width = state["conv1.weight"].shape[0] / 64
    model = build_model(arch, num_classes, in_channels, width, normalization)
    if norm is not None:
        state["normalize.mean"], state["normalize.std"] = norm
    else:
        state["normalize.mean"], state["normalize.std"] = model.normalize.mean, model.normalize.std
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {arch} ({str(err).splitlines()[0]}; "
                              f"{' '.join(str(err).split())[:300]})") from None
    return model.eval()


def import_source(
    checkpoint: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    arch: str,
    eps: float,
    seed: int,
    schedule: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    threads: int = 2,
    log: logging.Logger = logger,
    rng_seed: int | None = None,
) -> dict[str, Any]:
    """Import a published checkpoint as the source model `out_dir` (instead of training it).

    Writes the same three files as `train.train_source`: model.pt, metrics.json (evaluated
    on the source test set with the schedule's evaluation block; epochs 0, train_time_s 0)
    and a one-row history.csv (epoch 0: test accuracies and weight norm, train columns empty).
    `seed` is recorded; `rng_seed` (default `seed`) seeds the attacks' random restarts.
    """
    sched = schedule_defaults(schedule)
    seed_everything(seed if rng_seed is None else rng_seed)
    set_threads(threads)
    dev = pick_device(str(device))
    prep = Prepared(data_dir)
    model = load_pretrained(checkpoint, arch, prep.name)
    if model.fc.out_features != prep.num_classes:
        raise CheckpointError(f"{checkpoint}: {model.fc.out_features} classes, but {prep.name} has "
                              f"{prep.num_classes}")
    t0 = time.time()
    test = split_data(prep, "test")
    evaluation = dict(sched["evaluation"])
    evaluation["eps"] = sorted({*map(float, evaluation["eps"]), float(eps)})
    ev = evaluate_dataset(model, test, evaluation, dev, sched["attack"]["norm"])
    keep = {eps_str(e) for e in sched["evaluation"]["eps"]}
    wn = weight_norm(model)
    row = {c: float("nan") for c in HISTORY_COLUMNS}
    row.update(epoch=0, test_acc=ev["natural_acc"], test_adv_acc=ev["pgd_acc"].get(eps_str(eps), float("nan")),
               weight_norm=wn, time_s=time.time() - t0)
    metrics = {"natural_acc": ev["natural_acc"], "pgd_acc": {k: v for k, v in ev["pgd_acc"].items() if k in keep},
               "weight_norm": wn, "epochs": 0, "train_time_s": 0.0, "eps": float(eps), "source": prep.name,
               "arch": arch, "seed": int(seed)}
    width = model.conv1.out_channels / 64
    meta = model_meta(prep, arch, width, eps, seed, pretrained=str(checkpoint))
    write_outputs(Path(out_dir), model, meta, [row], metrics)
    log.info("imported %s as %s: natural %.2f%%, pgd %s", checkpoint, out_dir, metrics["natural_acc"],
             metrics["pgd_acc"])
    return metrics
