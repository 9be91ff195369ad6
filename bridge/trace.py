"""Tracing a torch model to one ATen graph: the front end of the converter.

``trace(model, example_input)`` returns a :class:`torch.export.ExportedProgram` whose graph
holds ATen operators, so that ``nn.Conv2d(x)``, ``F.conv2d(x, w)`` and ``x.conv2d`` all
arrive as the same node (``aten.conv2d``), ``x.mean((2, 3))`` as ``aten.mean.dim``, and so on.
The graph the converter reads is *functional*: an in-place op such as ``relu_`` would
otherwise change a value that a later linear op reads.  An in-place op whose written tensor
is a fresh result nothing else reads is simply replaced by its out-of-place form
(:func:`out_of_place`, the common ``nn.ReLU(inplace=True)`` case); if any other remains,
the program goes through ``run_decompositions({})`` (an empty decomposition table:
functionalization only, so ``aten.pad``, ``aten.conv2d``, ``aten.linear`` stay as they are).

Front ends, tried in order (:func:`trace_model` says which one was used):

1. ``torch.export.export(model, (x,))`` with the batch dimension marked ``Dim.AUTO``
   (traced at batch 2 when the example has batch 1, because torch specializes sizes 0/1);
   if the model fixes its batch (``x.view(2, -1)``), the program is re-exported at the
   example's own batch and the batch is static;
2. ``torch.fx.symbolic_trace(model)`` followed by ``torch.export`` of the traced graph (for
   models whose Python ``forward`` export cannot run but fx can record);
3. a given :class:`~torch.export.ExportedProgram` is used as it is.

:class:`TracedModel` answers the questions the converter asks about the graph: the static
per-sample shape of a value (``(C, *n)`` or ``(N,)``, without the batch), whether a node
depends on the input, and the value of a node that does not (parameters, buffers and
anything computed from them, evaluated in float64 from the original values, so folded
weights such as ``w / ||w||`` are as exact as the float64 reference of the model).
"""
from __future__ import annotations

import contextlib
import functools
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import fx, nn

from ..algebra.errors import LaurentnetError

__all__ = ["ConversionError", "TracedModel", "trace", "trace_model", "check_example_input",
           "model_dtype", "out_of_place", "quiet_torch"]


class ConversionError(LaurentnetError, ValueError):
    """The converter refuses: the message names the node, the op and what to do."""


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {line[:limit]}"


def check_example_input(example_input: Any) -> torch.Tensor:
    """The example input must be one real floating tensor with a batch axis."""
    if not isinstance(example_input, torch.Tensor):
        raise ConversionError(
            f"example_input must be a torch.Tensor of shape (batch, C, *spatial), got "
            f"{type(example_input).__name__}; the model is traced on it, so give one batch "
            "of real inputs (e.g. torch.randn(1, 3, 32, 32))")
    if example_input.is_complex() or not example_input.is_floating_point():
        raise ConversionError(f"example_input has dtype {example_input.dtype}; give a real "
                              "floating tensor (float32 or float64)")
    if example_input.ndim < 2:
        raise ConversionError(f"example_input of shape {tuple(example_input.shape)} has no "
                              "batch axis: give (batch, C, *spatial) or (batch, features)")
    if example_input.shape[0] < 1 or min(example_input.shape) < 1:
        raise ConversionError(f"example_input of shape {tuple(example_input.shape)} is empty")
    return example_input.detach()


def model_dtype(model: nn.Module | torch.export.ExportedProgram, fallback: torch.dtype
                ) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer (``fallback`` if none)."""
    tensors = (list(model.state_dict.values()) if isinstance(model, torch.export.ExportedProgram)
               else list(model.parameters()) + list(model.buffers()))
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype
    return fallback


def _batch_for_tracing(x: torch.Tensor) -> torch.Tensor:
    """A batch of at least 2: torch.export specializes sizes 0 and 1, so a batch-1 example
    would fix the batch of the traced program."""
    return torch.cat([x, x]) if x.shape[0] == 1 else x


def _placeholder(program: torch.export.ExportedProgram) -> torch.fx.Node:
    users = [s for s in program.graph_signature.input_specs
             if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(users) != 1:
        raise ConversionError(f"the program takes {len(users)} user inputs; the converter "
                              "needs a model with exactly one tensor input")
    name = users[0].arg.name
    return next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)


def _is_dynamic(size: Any) -> bool:
    return isinstance(size, torch.SymInt) and not isinstance(size.node.maybe_as_int(), int)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch 2.13's export machinery warns about its own deprecated pytree API."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*treespec.*")
        yield


def _writes(op: torch._ops.OpOverload) -> list[int]:
    """Positions of the arguments an ATen op writes to (``Tensor(a!)``)."""
    return [i for i, a in enumerate(op._schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write]


def _returns_alias(node: fx.Node) -> bool:
    """Whether the node's result may share memory with an argument (a view)."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return True
    return any(r.alias_info is not None for r in target._schema.returns)


def out_of_place(module: fx.GraphModule) -> bool:
    """Rewrite in-place ops (``relu_``, ``add_``) to their out-of-place form where that
    changes nothing: the tensor written is a fresh result (not an input, a parameter or a
    view) that nothing else reads.  Returns False, leaving the rest as it is, when some
    in-place op cannot be rewritten (then the whole program must be functionalized)."""
    ok = True
    for node in module.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        written = _writes(target)
        if not written:
            continue
        name = target.overloadpacket.__name__
        functional = getattr(getattr(torch.ops.aten, name.rstrip("_"), None),
                             target._overloadname, None) if name.endswith("_") else None
        args = [node.args[i] if i < len(node.args) else None for i in written]
        safe = functional is not None and len(written) == 1 and all(
            isinstance(a, fx.Node) and a.op == "call_function" and not _returns_alias(a)
            and list(a.users) == [node] for a in args)
        if safe:
            node.target = functional
        else:
            ok = False
    module.recompile()
    return ok


def _export(model: nn.Module, x: torch.Tensor) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` with a dynamic batch if the model allows it, else at ``x``'s batch;
    returns the program and whether its batch is dynamic."""
    traced_batch = _batch_for_tracing(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (traced_batch,),
                                      dynamic_shapes=({0: torch.export.Dim.AUTO},))
        if _is_dynamic(_placeholder(program).meta["val"].shape[0]):
            return program, True
        if traced_batch is not x:   # batch specialized at 2: re-export at the example's batch
            program = torch.export.export(model, (x,))
    return program, False


@dataclass
class TracedModel:
    """One functional ATen graph of the model and what the converter needs to know about it.

    ``graph_module`` is ``program.module()``: parameters, buffers and constants are
    ``get_attr`` nodes, the input is the one ``placeholder``."""
    program: torch.export.ExportedProgram
    graph_module: fx.GraphModule
    front_end: str
    dynamic_batch: bool
    example_input: torch.Tensor
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        inputs = [n for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ConversionError(f"the traced graph has {len(inputs)} inputs; the converter "
                                  "needs a model with exactly one tensor input")
        self.input_node: fx.Node = inputs[0]
        self.nodes: list[fx.Node] = list(self.graph_module.graph.nodes)
        self.position = {n: i for i, n in enumerate(self.nodes)}
        self.output_node: fx.Node = next(n for n in self.nodes if n.op == "output")
        self._depends: dict[fx.Node, bool] = {}
        for node in self.nodes:
            self._depends[node] = node is self.input_node or any(
                self._depends.get(a, False) for a in node.all_input_nodes)
        self._constants: dict[fx.Node, Any] = {}
        batch = self.input_node.meta["val"].shape[0]
        self.batch_size: Any = batch
        if tuple(self.input_node.meta["val"].shape[1:]) != tuple(self.example_input.shape[1:]):
            raise ConversionError(
                f"the program takes inputs (batch, {tuple(self.input_node.meta['val'].shape[1:])}), "
                f"the example input has shape {tuple(self.example_input.shape)}")

    # -- questions about nodes ------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape without the batch axis."""
        return tuple(int(v) for v in self.example_input.shape[1:])

    def depends_on_input(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and self._depends.get(node, False)

    def value(self, node: fx.Node) -> Any:
        """The traced (fake) value of ``node``: a tensor, a tuple of them, a SymInt, ..."""
        return node.meta.get("val")

    def shape(self, node: Any) -> tuple[int, ...] | None:
        """The static per-sample shape of a batch-first tensor value (batch axis dropped),
        or None: not a tensor, fewer than 2 axes, a size that is not static, or a first
        axis that is not the batch."""
        if not isinstance(node, fx.Node):
            return None
        val = self.value(node)
        if not isinstance(val, torch.Tensor) or val.ndim < 2:
            return None
        first = val.shape[0]
        if self.dynamic_batch:
            if not isinstance(first, torch.SymInt) or str(first) != str(self.batch_size):
                return None
        elif not isinstance(first, int) or first != int(self.batch_size):
            return None
        rest = []
        for size in val.shape[1:]:
            concrete = size.node.maybe_as_int() if isinstance(size, torch.SymInt) else size
            if not isinstance(concrete, int):
                return None
            rest.append(int(concrete))
        return tuple(rest)

    def dtype(self, node: fx.Node) -> torch.dtype | None:
        val = self.value(node)
        return val.dtype if isinstance(val, torch.Tensor) else None

    def attribute(self, target: str) -> Any:
        """The module attribute a ``get_attr`` node names (``"layer1.0.conv1.weight"``)."""
        return functools.reduce(getattr, target.split("."), self.graph_module)

    def constant(self, arg: Any) -> Any:
        """The value of an argument that does not depend on the input: python values as
        they are, nodes evaluated from the model's tensors in float64 (memoized).  Raises
        ConversionError for an input-dependent node."""
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.constant(a) for a in arg)
        if not isinstance(arg, fx.Node):
            return arg
        if self.depends_on_input(arg):
            raise ConversionError(f"node {arg.name!r} depends on the input; it is not a constant")
        if arg not in self._constants:
            self._constants[arg] = self._evaluate_constant(arg)
        return self._constants[arg]

    def _evaluate_constant(self, node: fx.Node) -> Any:
        if node.op == "get_attr":
            value = self.attribute(node.target)
            if isinstance(value, torch.Tensor):
                value = value.detach()
                return value.to(torch.float64) if value.is_floating_point() else value.clone()
            return value
        if node.op != "call_function":
            raise ConversionError(f"node {node.name!r} ({node.op} {node.target}) is not a "
                                  "constant the converter can evaluate")
        args = fx.node.map_arg(node.args, self.constant)
        kwargs = fx.node.map_arg(node.kwargs, self.constant)
        with torch.no_grad():
            return node.target(*args, **kwargs)

    def op_name(self, node: fx.Node) -> str:
        """``aten.conv2d.default``, ``getitem``, ... (for reports and errors)."""
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            return f"aten.{target.overloadpacket.__name__}.{target._overloadname}" \
                if target.namespace == "aten" else str(target)
        if node.op == "call_function":
            return getattr(target, "__name__", str(target))
        return f"{node.op} {target}"

    def module_path(self, node: fx.Node) -> str:
        """The innermost module the node came from (``layer1.0.conv1``), or ''."""
        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in reversed(list(stack.values())):
            if path:
                return str(path)
        return ""

    def describe(self, node: fx.Node) -> str:
        """``name (op, from module.path)`` for messages."""
        where = self.module_path(node)
        return f"{node.name} ({self.op_name(node)}{', in ' + where if where else ''})"


def trace_model(model: nn.Module | torch.export.ExportedProgram, example_input: Any
                ) -> TracedModel:
    """Trace ``model`` on ``example_input`` to a functional ATen graph (module docstring).

    A model in training mode is refused (batch norm would use batch statistics and
    dropout is random: convert the eval-mode model, ``model.eval()``)."""
    x = check_example_input(example_input)
    if isinstance(model, torch.export.ExportedProgram):
        with quiet_torch():
            program, module = model, model.module()
            if not out_of_place(module):
                program = model.run_decompositions({})
                module = program.module()
        dynamic = _is_dynamic(_placeholder(program).meta["val"].shape[0])
        return TracedModel(program, module, "torch.export.ExportedProgram (given)", dynamic, x)
    if not isinstance(model, nn.Module):
        raise ConversionError(f"model must be an nn.Module or a torch.export.ExportedProgram, "
                              f"got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ConversionError(
            f"the model is in training mode ({', '.join(training[:3])}"
            f"{' and more' if len(training) > 3 else ''}): batch norm would use batch "
            "statistics and dropout is random; call model.eval() before converting")
    failures: list[str] = []
    front_ends: list[tuple[str, Callable[[], nn.Module]]] = [
        ("torch.export", lambda: model),
        ("torch.fx.symbolic_trace + torch.export", lambda: fx.symbolic_trace(model)),
    ]
    for name, front in front_ends:
        try:
            with quiet_torch():
                program, dynamic = _export(front(), x)
                module = program.module()
                if not out_of_place(module):
                    program = program.run_decompositions({})
                    module = program.module()
        except Exception as exc:  # noqa: BLE001 - every front end's failure is reported
            failures.append(f"{name}: {_first_line(exc)}")
            continue
        label = name + ("" if dynamic else f" (batch fixed at {x.shape[0]}: the model "
                                           "specializes its batch size)")
        return TracedModel(program, module, label, dynamic, x, notes=failures)
    raise ConversionError("cannot trace the model: " + "; ".join(failures)
                          + ". The converter needs a forward() that torch.export or "
                          "torch.fx can trace (no data-dependent Python control flow)")


def trace(model: nn.Module | torch.export.ExportedProgram, example_input: torch.Tensor
          ) -> torch.export.ExportedProgram:
    """The model as an ATen-level :class:`~torch.export.ExportedProgram` (batch dynamic when
    the model allows it; functionalized when it has in-place ops that matter);
    :func:`trace_model` also says which front end produced it."""
    return trace_model(model, example_input).program


#: ``operator.getitem`` on a tuple-valued node (split, batch norm's three outputs, ...)
GETITEM = operator.getitem
