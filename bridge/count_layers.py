"""Counting the layers of a model: convolutions, batch norms and linear layers.

Used to check what a conversion did ("one conv per RepVGG block and no batch norm"): a
plain module is counted by its submodules, a ``torch.fx.GraphModule`` (a converted model,
an exported program's module) by its graph, so functional and ATen forms count too.
"""
from __future__ import annotations

from typing import Any

from torch import fx, nn

from ..algebra.errors import InvalidTypeError

__all__ = ["count_layers"]

_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_FUNCTION_KINDS = {
    "conv": {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
             "conv_transpose2d", "conv_transpose3d"},
    "batch_norm": {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
                   "_native_batch_norm_legit"},
    "linear": {"linear", "addmm"},
}


def _function_kind(target: Any) -> str | None:
    packet = getattr(target, "overloadpacket", None)
    name = packet.__name__ if packet is not None else getattr(target, "__name__", None)
    for kind, names in _FUNCTION_KINDS.items():
        if name in names:
            return kind
    return None


def _module_kind(module: nn.Module) -> str | None:
    if isinstance(module, _CONV_MODULES):
        return "conv"
    if isinstance(module, _BN_MODULES):
        return "batch_norm"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def count_layers(module: nn.Module) -> dict[str, int]:
    """Convolutions (incl. transposed), batch norms and linear layers of a module.

    A ``GraphModule`` is counted by its graph: ``call_module`` nodes by their module
    (recursively for non-leaf ones) and ``call_function`` nodes by their function
    (``aten.conv2d``, ``aten.convolution``, ``F.conv2d``, ``aten.batch_norm``,
    ``aten.linear``, ``aten.addmm``, ...); any other module by its submodules."""
    counts = {"conv": 0, "batch_norm": 0, "linear": 0}
    if not isinstance(module, nn.Module):
        raise InvalidTypeError(f"count_layers needs an nn.Module, got {type(module).__name__}")
    if isinstance(module, fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "call_function":
                kind = _function_kind(node.target)
                if kind:
                    counts[kind] += 1
            elif node.op == "call_module":
                for key, value in count_layers(module.get_submodule(node.target)).items():
                    counts[key] += value
        return counts
    for sub in module.modules():
        kind = _module_kind(sub)
        if kind:
            counts[kind] += 1
    return counts
