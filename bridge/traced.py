"""Emitted modules as plain-torch graphs: what a converted model holds.

A converted model must pickle and ``torch.export`` without laurentnet's own classes, so the
modules the converter emits (:class:`~laurentnet.bridge.polyphase_module.PolyphaseConv`,
:class:`~laurentnet.bridge.border_module.BorderCorrectedConv`) are traced by ``torch.fx``
into a ``GraphModule`` of ``F.*`` calls, reshapes and ``nn.Conv{n}d`` children.
"""
from __future__ import annotations

from torch import fx, nn

__all__ = ["traced_module"]


def traced_module(module: nn.Module, class_name: str) -> fx.GraphModule:
    """``module`` traced by ``torch.fx`` into a ``GraphModule`` named ``class_name``, in eval
    mode.  The placeholders' and the output's type annotations are dropped: with postponed
    annotations they are strings, which a pickled ``GraphModule`` cannot restore."""
    traced = fx.symbolic_trace(module.eval())
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "output"):
            node.type = None
    return fx.GraphModule(traced, traced.graph, class_name=class_name).eval()
