"""Any classifier with atlib's model interface: representation z, head, last BatchNorm, every BatchNorm.

Downstream code (transfer modes 0/1/2 and the mode-0 cache, Fisher, t-SNE, inversion, task
distances) needs four things of a source model:

    model.features(x)  the representation z: the input of the final linear layer
    model.fc           that linear layer (the head a transfer replaces)
    model.last_bn()    the BatchNorm right before the head (mode 0 trains it with the head)
    BatchNorm modules  every `_BatchNorm` in `model.modules()` (mode 1 trains them all)

atlib's ResNet declares them by construction. `Adapted` wraps any other classifier (a RobustBench
WideResNet or PreActResNet, a torchvision or timm network) so that it declares them too. The head and
the last BN are found by tracing the network with torch.fx and walking back from its output along
each operation's first input: the first linear layer met is the head, the first BatchNorm after it
the last BN. The first-input walk follows the main branch through residual additions (`out +
shortcut`), so a post-activation ResNet gives its last block's bn2/bn3 (not the shortcut's BN) and a
pre-activation net its final BN. Both can be declared instead, for networks that do not trace.

`TailSplit` cuts any traceable model at its last BN for the mode-0 cache: the trunk's outputs (every
tensor the rest of the network reads) are computed once; training then runs only the tail.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from atlib.core.runtime import eval_mode
from atlib.models.resnet import Normalize

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
LIBRARIES = ("robustbench", "torchvision", "timm")


class AdapterError(ValueError):
    """A network the adapter cannot describe; the message says what to declare."""


def import_robustbench() -> Any:
    """`robustbench.model_zoo` (and the torchvision it imports), importable on this environment.

    RobustBench imports `autoattack`, the module name of fra31's repository; PyPI ships the same
    code as `pyautoattack` (the package robustbench itself depends on), so the name is aliased.
    """
    from atlib.core.compat import import_torchvision

    import_torchvision()
    try:
        importlib.import_module("autoattack")
    except ImportError:
        sys.modules["autoattack"] = importlib.import_module("pyautoattack")
        sys.modules["autoattack.state"] = importlib.import_module("pyautoattack.state")
    with warnings.catch_warnings():  # its timm and pkg_resources imports warn about their own deprecations
        warnings.simplefilter("ignore", (FutureWarning, UserWarning, DeprecationWarning))
        return importlib.import_module("robustbench.model_zoo")


def trace(net: nn.Module) -> fx.GraphModule:
    """torch.fx graph of `net`, or an AdapterError naming the network."""
    try:
        return fx.symbolic_trace(net)
    except Exception as err:  # fx raises many types for data-dependent control flow
        raise AdapterError(f"{type(net).__name__} cannot be traced with torch.fx ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200]}); declare its head and last_bn") from None


def find_head_and_last_bn(net: nn.Module) -> tuple[str, str | None]:
    """(head, last BN) module names of `net` by the first-input walk back from its output.

    The last BN is None when no BatchNorm precedes the head (then mode 0 is not available).
    """
    gm = trace(net)
    mods = dict(gm.named_modules())
    node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    head = None
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            m = mods[node.target]
            if head is None and isinstance(m, nn.Linear):
                head = node.target
            elif head is not None and isinstance(m, BN_TYPES):
                return head, node.target
        node = next((a for a in node.args if isinstance(a, fx.Node)), None)
    if head is None:
        raise AdapterError(f"{type(net).__name__}: no linear layer on the path to the output; declare its head")
    return head, None


class Adapted(nn.Module):
    """A foreign classifier `net` as an atlib source model (pixel-space input, `features`, `fc`).

    Args:
        net: the owner's network (weights loaded); its head is moved to `fc` and replaced by
            an identity, so `net(x)` returns z.
        head: module name of the final linear layer in `net`.
        last_bn: module name of the BatchNorm right before the head (None: no mode 0).
        mean, std: normalization applied before `net` (identity 0/1 for nets that normalize
            inside, as RobustBench's do).
        spec: how to rebuild `net` without weights (`build_network`), saved in the model's meta.
    """

    def __init__(self, net: nn.Module, head: str, last_bn: str | None, mean: Sequence[float],
                 std: Sequence[float], spec: dict[str, Any]) -> None:
        super().__init__()
        fc = net.get_submodule(head)
        if not isinstance(fc, nn.Linear):
            raise AdapterError(f"{type(net).__name__}.{head} is a {type(fc).__name__}, not a linear head")
        self.normalize = Normalize(mean, std)
        net.set_submodule(head, nn.Identity())
        self.net, self.fc = net, fc
        self.feature_dim = fc.in_features
        self.spec = {**spec, "head": head, "last_bn": last_bn}
        if last_bn is not None and not isinstance(net.get_submodule(last_bn), BN_TYPES):
            raise AdapterError(f"{type(net).__name__}.{last_bn} is not a BatchNorm layer")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """z: the input of the final linear layer, flattened."""
        return torch.flatten(self.net(self.normalize(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def last_bn(self) -> nn.Module:
        """The BatchNorm right before the head (mode 0 trains it with `fc`)."""
        if self.spec["last_bn"] is None:
            raise AdapterError(f"{type(self.net).__name__} has no BatchNorm before its head: transfer mode 0 "
                               "needs one; use mode 1 or 2")
        return self.net.get_submodule(self.spec["last_bn"])

    def bn_layers(self) -> list[nn.Module]:
        """Every BatchNorm (mode 1 trains them with the head)."""
        return [m for m in self.modules() if isinstance(m, BN_TYPES)]


def in_channels(net: nn.Module) -> int:
    """Input channels of the first convolution (3 for every RGB zoo model)."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if conv is None else int(conv.in_channels)


def build_network(spec: dict[str, Any]) -> nn.Module:
    """The owner's network of `spec`, randomly initialized (nothing is downloaded).

    spec: {"library": "robustbench", "name", "dataset", "threat_model"} or
          {"library": "torchvision" | "timm", "arch", "num_classes"}.
    """
    lib = spec["library"]
    if lib == "robustbench":
        zoo = import_robustbench()
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        return zoo.model_dicts[BenchmarkDataset(spec["dataset"])][ThreatModel(spec["threat_model"])][
            spec["name"]]["model"]()
    if lib == "torchvision":
        from atlib.core.compat import import_torchvision

        return import_torchvision().models.get_model(spec["arch"], weights=None, num_classes=spec["num_classes"])
    if lib == "timm":
        import timm

        return timm.create_model(spec["arch"], pretrained=False, num_classes=spec["num_classes"])
    raise AdapterError(f"unknown library {lib!r}: expected one of {LIBRARIES}")


def rebuild(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> Adapted:
    """An `Adapted` model shaped like a saved one (meta["adapter"], head resized to meta's classes)."""
    spec = dict(meta["adapter"])
    head, last_bn = spec.pop("head"), spec.pop("last_bn")
    c = int(meta["in_channels"])
    model = Adapted(build_network(spec), head, last_bn, (0.0,) * c, (1.0,) * c, spec)
    if model.fc.out_features != meta["num_classes"] or ("fc.bias" in state) != (model.fc.bias is not None):
        model.fc = nn.Linear(model.feature_dim, int(meta["num_classes"]), bias="fc.bias" in state)
    return model


# --------------------------------------------------------------------------- mode-0 tail


class TailSplit:
    """A model cut at a BatchNorm: `trunk(x)` gives every tensor the rest reads, `tail(parts)`
    the logits from them. Both share the model's modules (training the tail trains the model)."""

    def __init__(self, trunk: fx.GraphModule, tail: fx.GraphModule) -> None:
        self.trunk_module, self.tail_module = trunk, tail

    @torch.no_grad()
    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.trunk_module(x))

    def tail(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.tail_module(*parts)


def _split_graph(model: nn.Module, bn_name: str) -> TailSplit:
    gm = trace(model)
    nodes = list(gm.graph.nodes)
    start = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == bn_name), None)
    if start is None:
        raise AdapterError(f"{bn_name} is not called in {type(model).__name__}'s traced forward")
    tail = {nodes[start]}
    for n in nodes[start + 1:]:
        if n.op == "output" or any(a in tail for a in n.all_input_nodes):
            tail.add(n)
    # Tensors computed before the cut that the tail reads (the BN's input, shortcuts, ...).
    frontier: list[fx.Node] = []
    for n in nodes:
        if n in tail:
            frontier += [a for a in n.all_input_nodes if a not in tail and a.op != "get_attr" and a not in frontier]
    trunk, env = fx.Graph(), {}
    for n in nodes:
        if n not in tail:
            env[n] = trunk.node_copy(n, lambda a: env[a])
    trunk.output(tuple(env[a] for a in frontier))
    tail_g, env = fx.Graph(), {}
    for i, a in enumerate(frontier):
        env[a] = tail_g.placeholder(f"part{i}")
    for n in nodes:
        if n in tail or (n.op == "get_attr" and any(u in tail for u in n.users)):
            env[n] = tail_g.node_copy(n, lambda a: env[a])
    return TailSplit(fx.GraphModule(gm, trunk), fx.GraphModule(gm, tail_g))


def tail_split(model: nn.Module, probe: torch.Tensor) -> tuple[TailSplit | None, str]:
    """Cut `model` at `model.last_bn()`, checked on `probe` images; (None, why) when it cannot be.

    The check (eval mode, no autocast) guards against networks whose traced graph hides state:
    tail(trunk(x)) must give model(x), and every trunk output must be a per-image tensor.
    """
    try:
        bn = model.last_bn()
        name = next(n for n, m in model.named_modules() if m is bn)
        split = _split_graph(model, name)
    except AdapterError as err:
        return None, str(err)
    with eval_mode(model), torch.no_grad():
        parts = split.trunk(probe)
        if not all(torch.is_tensor(p) and p.dim() > 0 and p.shape[0] == len(probe) for p in parts):
            return None, "the tail reads values that are not per-image tensors"
        got, want = split.tail(parts).float(), model(probe).float()
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        return None, f"the traced tail differs from the model (max |diff| {float((got - want).abs().max()):.3g})"
    return split, ""
