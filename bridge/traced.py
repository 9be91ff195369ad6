"""Emitted modules as plain-torch graphs: what a converted model holds.

A converted model must pickle and ``torch.export`` without laurentnet's own classes, so the
modules the converter emits (:class:`~laurentnet.bridge.polyphase_module.PolyphaseConv`,
:class:`~laurentnet.bridge.border_module.BorderCorrectedConv`) are traced by ``torch.fx``
into a ``GraphModule`` of ``F.*`` calls, reshapes and ``nn.Conv{n}d`` children.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import fx, nn

__all__ = ["traced_module", "assert_sample_shape"]


def assert_sample_shape(x: torch.Tensor, shape: Sequence[int], what: str) -> None:
    """Refuse (``AssertionError`` naming both shapes' rule) an input whose per-sample shape
    ``x.shape[1:]`` is not ``shape``: the emitted modules' crops and reshapes are fixed to
    the size they were converted at, and another size that happens to fit them would give
    a wrong answer silently.  Traceable: ``torch.fx`` records it as a ``torch._assert``
    call, and ``torch.export`` as a check on the (static) per-sample sizes."""
    torch._assert(x.shape[1:] == torch.Size(shape),
                  f"{what} was converted for inputs of shape (batch, "
                  f"{', '.join(map(str, shape))}); convert the model again for another size")


def traced_module(module: nn.Module, class_name: str) -> fx.GraphModule:
    """``module`` traced by ``torch.fx`` into a ``GraphModule`` named ``class_name``, in eval
    mode.  The placeholders' and the output's type annotations are dropped: with postponed
    annotations they are strings, which a pickled ``GraphModule`` cannot restore."""
    traced = fx.symbolic_trace(module.eval())
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "output"):
            node.type = None
    return fx.GraphModule(traced, traced.graph, class_name=class_name).eval()
