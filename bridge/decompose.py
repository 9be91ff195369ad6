"""Decomposing the convolutions of a trained model into basis convolutions.

For a layer with weight ``W`` (``C_out × C_in × k…``) reshaped to the filter matrix
``M`` (``C_out × C_in·Π k``), :func:`decompose_layer` factors ``M ≈ C B`` at a rank ``r``
(:mod:`laurentnet.numeric.basis`):

* ``method="qr"`` — ``B`` is a subset of the trained filters chosen by column-pivoted QR
  (seed 003's ``[I; A] B``, reproducing the chosen filters exactly);
* ``method="svd"`` — truncated SVD, the best rank-``r`` approximation, whose error is
  exactly the discarded singular values, ``‖M − C B‖_F = (Σ_{i>r} σ_i²)^{1/2}``;

with ``r`` given, or the smallest rank keeping a share ``energy`` of ``‖W‖_F²``
(``Σ_{i≤r} σ_i² ≥ E Σ σ_i²``).  The reconstruction error ``‖W − C B‖_F`` and its ratio to
``‖W‖_F`` are reported per layer.

:func:`decompose` does it for chosen layers of any model the bridge can trace
(:func:`~laurentnet.bridge.conv_layers.find_conv_layers`) and returns a new model (the
original is not modified) in which each chosen layer is a
:class:`~laurentnet.bridge.basis_conv.BasisConv`:

* a model whose chosen layers are ``nn.Conv{n}d`` modules: the modules are replaced by name
  in a deep copy (the model keeps its class, its other modules and its training code);
* otherwise (a ``torch.export`` program loaded with :func:`~laurentnet.bridge.load`, a
  ``GraphModule``, a model calling ``F.conv2d`` on its own parameters): the traced graph's
  convolution nodes become calls of the ``BasisConv`` submodules, installed under the
  layer's name where that is free.

The result computes exactly what the model computes with the low-rank weights
``W_r = C B`` substituted (up to round-off), which is what ``laurentnet decompose`` checks
before it writes a file.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import fx, nn

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import choice_arg, int_arg, real_arg
from ..numeric.basis import BASIS_METHODS, Factorization, MatrixFactors, energy_rank
from .basis_conv import CONV_TYPES, BasisConv
from .conv_layers import (CONV_OPS, ConvLayer, ConvLayers, conv_arguments, find_conv_layers,
                          tensor_at)
from .trace import quiet_torch

__all__ = ["LayerDecomposition", "Decomposition", "decompose", "decompose_layer",
           "layer_factors", "choose_rank", "low_rank_weights", "low_rank_reference", "METHODS"]

METHODS = BASIS_METHODS


@dataclass
class LayerDecomposition:
    """One layer at one rank: the layer, and the factorization of its filter matrix
    (``C``, ``B``, ``basis_rows``, spectrum, ``error = ‖W − C B‖_F``, ``discarded``)."""
    layer: ConvLayer
    factorization: Factorization

    @property
    def rank(self) -> int:
        return self.factorization.rank

    @property
    def method(self) -> str:
        return self.factorization.method

    def weight(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """``W_r = C B`` in PyTorch layout (in ``like``'s dtype, else float64)."""
        shape = (self.layer.out_channels, self.layer.in_channels, *self.layer.kernel_size)
        w = self.factorization.product().reshape(shape)
        return w if like is None else w.to(like)

    def as_dict(self) -> dict[str, Any]:
        f, layer = self.factorization, self.layer
        return {"layer": layer.name, "method": f.method, "rank": f.rank,
                "max_rank": layer.max_rank, "break_even_rank": layer.break_even_rank,
                "basis_rows": None if f.basis_rows is None else list(f.basis_rows),
                "error": f.error, "relative_error": f.relative_error,
                "discarded_singular_values": f.discarded, "energy": f.energy,
                "multiply_adds_before": layer.multiply_adds(),
                "multiply_adds_after": layer.multiply_adds(f.rank),
                "parameters_before": layer.parameters(),
                "parameters_after": layer.parameters(f.rank),
                "singular_values": f.singular_values.tolist()}


def layer_factors(model: nn.Module, layer: ConvLayer) -> MatrixFactors:
    """The filter matrix ``M`` of ``layer`` (in float64) with its decompositions cached."""
    if not layer.decomposable:
        raise InvalidInputError(f"layer {layer.name} cannot be decomposed: {layer.reason}")
    weight = tensor_at(model, layer.weight_name)
    return MatrixFactors(weight.detach().reshape(layer.out_channels, -1))


def choose_rank(layer: ConvLayer, factors: MatrixFactors, rank: int | None = None,
                energy: float | None = None) -> int:
    """``rank`` (checked: ``1 ≤ rank ≤ min(C_out, C_in Π k)``) or the ``energy`` rank."""
    if (rank is None) == (energy is None):
        raise InvalidInputError("give exactly one of rank and energy")
    if energy is not None:
        return energy_rank(factors.singular_values(), energy)
    rank = int_arg(rank, "rank", minimum=1)
    if rank > layer.max_rank:
        raise InvalidInputError(
            f"rank {rank} is too large for layer {layer.name}: at most min(C_out={layer.out_channels}, "
            f"C_in·k={layer.taps}) = {layer.max_rank}")
    return rank


def decompose_layer(model: nn.Module, layer: ConvLayer, *, rank: int | None = None,
                    energy: float | None = None, method: str = "svd",
                    factors: MatrixFactors | None = None) -> LayerDecomposition:
    """Factor one layer's weight (module docstring); ``factors`` reuses the decompositions
    of an earlier call on the same layer."""
    method = choice_arg(method, "method", METHODS)
    factors = factors or layer_factors(model, layer)
    r = choose_rank(layer, factors, rank, energy)
    return LayerDecomposition(layer, factors.factor(r, method))


def low_rank_weights(model: nn.Module, decompositions: Sequence[LayerDecomposition]
                     ) -> dict[str, torch.Tensor]:
    """``{weight name: W_r}`` for :func:`~laurentnet.bridge.conv_layers.substituted_weights`."""
    return {d.layer.weight_name: d.weight(tensor_at(model, d.layer.weight_name))
            for d in decompositions}


@torch.no_grad()
def low_rank_reference(model: nn.Module, decompositions: Sequence[LayerDecomposition]
                       ) -> nn.Module:
    """A deep copy of ``model`` with each decomposed layer's weight replaced by
    ``W_r = C B``: the map the decomposed model must compute (what it is verified against)."""
    with quiet_torch():   # deep-copying an exported module copies its pytree specs
        reference = copy.deepcopy(model)
    for name, value in low_rank_weights(model, decompositions).items():
        tensor_at(reference, name).copy_(value)
    return reference


@dataclass
class Decomposition:
    """The result of :func:`decompose`: the new ``module``, the per-layer ``layers``, how the
    model was rewritten (``"modules"`` or ``"graph"``), all convolutions ``found``, and the
    model's parameters and per-sample multiply-adds before and after."""
    module: nn.Module
    layers: list[LayerDecomposition]
    rewrite: str
    found: ConvLayers = field(repr=False)
    parameters_before: int = 0
    parameters_after: int = 0

    @property
    def ranks(self) -> dict[str, int]:
        return {d.layer.name: d.rank for d in self.layers}

    @property
    def multiply_adds_before(self) -> int:
        return self.found.multiply_adds()

    @property
    def multiply_adds_after(self) -> int:
        return self.found.multiply_adds(self.ranks)

    def table(self) -> str:
        """One row per decomposed layer, then the totals."""
        head = ("layer", "shape", "rank", "method", "rel. error", "energy", "MACs before",
                "MACs after")
        rows = []
        for d in self.layers:
            layer, f = d.layer, d.factorization
            rows.append((layer.name, f"{layer.out_channels}x{layer.in_channels}x"
                         + "x".join(map(str, layer.kernel_size)),
                         f"{f.rank}/{layer.max_rank}", f.method, f"{f.relative_error:.3g}",
                         f"{f.energy:.4f}", f"{layer.multiply_adds():,}",
                         f"{layer.multiply_adds(f.rank):,}"))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                           enumerate(zip(r, widths))) for r in [head, *rows]]
        lines.append("")
        lines.append(f"model multiply-adds per sample: {self.multiply_adds_before:,} -> "
                     f"{self.multiply_adds_after:,} "
                     f"({self.multiply_adds_after / max(self.multiply_adds_before, 1):.3f}x)")
        lines.append(f"model parameters: {self.parameters_before:,} -> {self.parameters_after:,} "
                     f"({self.parameters_after / max(self.parameters_before, 1):.3f}x)")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write ``module`` as a ``.pt2`` program (``torch.export`` on the traced example
        input, the batch dynamic when the model allows it), atomically (a temporary file in
        the same folder replaced onto ``path``); any other suffix is refused."""
        from .files import atomic_write, check_output_path
        target = check_output_path(path)
        traced = self.found.traced
        dtype = next((p.dtype for p in self.module.parameters() if p.is_floating_point()),
                     traced.example_input.dtype)
        x = traced.example_input.to(dtype)
        with quiet_torch():
            if traced.dynamic_batch:
                batch = torch.cat([x, x]) if x.shape[0] == 1 else x
                program = torch.export.export(self.module, (batch,),
                                              dynamic_shapes=({0: torch.export.Dim.AUTO},))
            else:
                program = torch.export.export(self.module, (x,))
        atomic_write(target, lambda tmp: torch.export.save(program, str(tmp)))
        return target

    def as_dict(self) -> dict[str, Any]:
        return {"layers": [d.as_dict() for d in self.layers], "rewrite": self.rewrite,
                "multiply_adds_before": self.multiply_adds_before,
                "multiply_adds_after": self.multiply_adds_after,
                "parameters_before": self.parameters_before,
                "parameters_after": self.parameters_after}


# ------------------------------------------------------------------------ choosing


def _chosen_layers(found: ConvLayers, layers: Sequence[str] | None) -> list[ConvLayer]:
    if layers is None:
        chosen = found.decomposable
        if not chosen:
            why = "; ".join(f"{layer.name}: {layer.reason}" for layer in found.layers)
            raise InvalidInputError("the model has no convolution layer to decompose"
                                    + (f" ({why})" if why else ""))
        return chosen
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise InvalidTypeError(f"layers must be a list of layer names, got {layers!r}")
    chosen = [found[name] for name in layers]
    for layer in chosen:
        if not layer.decomposable:
            raise InvalidInputError(f"layer {layer.name} cannot be decomposed: {layer.reason}")
    if not chosen:
        raise InvalidInputError("layers is empty: name at least one layer")
    return chosen


def _plan(model: nn.Module, chosen: list[ConvLayer], rank: int | None, energy: float | None,
          ranks: Mapping[str, int] | None, method: str) -> list[LayerDecomposition]:
    """One decomposition per chosen layer: ``ranks[name]`` if given, else ``rank`` or the
    ``energy`` rank."""
    if energy is not None:
        energy = real_arg(energy, "energy", positive=True)
    out = []
    for layer in chosen:
        r = ranks.get(layer.name) if ranks else None
        if r is not None:
            out.append(decompose_layer(model, layer, rank=r, method=method))
        else:
            out.append(decompose_layer(model, layer, rank=rank, energy=energy, method=method))
    return out


# ------------------------------------------------------------------------ rewriting


def _is_conv_module(module: nn.Module) -> bool:
    return type(module) in CONV_TYPES.values()


def _module_path_ok(model: nn.Module, decompositions: list[LayerDecomposition]) -> bool:
    """Every chosen layer is a plain ``nn.Conv{n}d`` of ``model`` owning that weight."""
    if isinstance(model, fx.GraphModule):
        return False
    for d in decompositions:
        name = d.layer.name
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError:
            return False
        if not _is_conv_module(module) or d.layer.weight_name != f"{name}.weight" or \
                (module.bias is None) != (d.layer.bias_name is None):
            return False
    return True


def _basis_module(layer: ConvLayer, f: Factorization, like: torch.Tensor,
                  bias: torch.Tensor | None) -> BasisConv:
    """A BasisConv with the layer's hyper-parameters (zero padding: another padding mode is
    a separate op in the traced graph) holding the factors."""
    module = BasisConv(layer.in_channels, layer.out_channels, f.rank, layer.kernel_size,
                       layer.stride, layer.padding, layer.dilation, bias is not None,
                       ndim=layer.ndim, basis_rows=f.basis_rows)
    module.to(device=like.device, dtype=like.dtype)
    module.set_factors(f.coefficients, f.basis, None if bias is None else bias.detach())
    return module


def _replace_modules(model: nn.Module, decompositions: list[LayerDecomposition]) -> nn.Module:
    with quiet_torch():
        new = copy.deepcopy(model)
    for d in decompositions:
        f = d.factorization
        if not d.layer.name:
            return BasisConv.from_factors(new, f.coefficients, f.basis, f.basis_rows)
        conv = new.get_submodule(d.layer.name)
        new.set_submodule(d.layer.name, BasisConv.from_factors(conv, f.coefficients, f.basis,
                                                               f.basis_rows))
    return new


def _owner_is_free(gm: fx.GraphModule, layer: ConvLayer) -> bool:
    """The layer's weight lives at ``<name>.weight`` in a module holding nothing else than
    that weight and the bias."""
    if not layer.name or layer.weight_name != f"{layer.name}.weight":
        return False
    try:
        owner = gm.get_submodule(layer.name)
    except AttributeError:
        return False
    own = {n for n, _ in owner.named_parameters(recurse=False)} | \
        {n for n, _ in owner.named_buffers(recurse=False)}
    allowed = {"weight"} | ({layer.bias_name.rsplit(".", 1)[-1]} if layer.bias_name and
                            layer.bias_name.rsplit(".", 1)[0] == layer.name else set())
    return own <= allowed and not list(owner.children())


def _delete_tensor(gm: fx.GraphModule, name: str) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    delattr(owner, leaf)


def _install(gm: fx.GraphModule, layer: ConvLayer, module: BasisConv) -> str:
    """Put ``module`` at the layer's name when that module holds only its weight and bias,
    else under a fresh name; the old tensors are removed.  Returns the path."""
    if _owner_is_free(gm, layer):
        if layer.bias_name and not layer.bias_name.startswith(f"{layer.name}."):
            _delete_tensor(gm, layer.bias_name)
        gm.set_submodule(layer.name, module)
        return layer.name
    for name in (layer.weight_name, layer.bias_name):
        if name:
            _delete_tensor(gm, name)
    path, k = "basis_" + layer.name.replace(".", "_"), 1
    while hasattr(gm, path):
        path, k = f"basis_{layer.name.replace('.', '_')}_{k}", k + 1
    gm.add_submodule(path, module)
    return path


def _rewrite_graph(gm: fx.GraphModule, decompositions: list[LayerDecomposition]) -> fx.GraphModule:
    with quiet_torch():
        gm = copy.deepcopy(gm)
    graph = gm.graph
    for d in decompositions:
        layer = d.layer
        weight = tensor_at(gm, layer.weight_name)
        bias = tensor_at(gm, layer.bias_name) if layer.bias_name else None
        module = _basis_module(layer, d.factorization, weight, bias)
        calls = [n for n in graph.nodes if n.op == "call_function" and n.target in CONV_OPS
                 and getattr(conv_arguments(n)["weight"], "target", None) == layer.weight_name]
        attrs = [n for n in graph.nodes if n.op == "get_attr"
                 and n.target in (layer.weight_name, layer.bias_name)]
        path = _install(gm, layer, module)
        for node in calls:
            with graph.inserting_before(node):
                new = graph.call_module(path, (node.args[0],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        for node in attrs:
            if not node.users:
                graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm


def decompose(model: nn.Module, example_input: torch.Tensor, *, rank: int | None = None,
              energy: float | None = None, ranks: Mapping[str, int] | None = None,
              layers: Sequence[str] | None = None, method: str = "svd",
              found: ConvLayers | None = None) -> Decomposition:
    """Decompose chosen layers of ``model`` (eval mode) traced on ``example_input``.

    ``layers``: names (default: every decomposable convolution, or the keys of ``ranks``);
    each at ``ranks[name]``, else at ``rank``, else at its ``energy`` rank; ``method``:
    ``"svd"`` or ``"qr"`` (module docstring); ``found``: the result of an earlier
    :func:`find_conv_layers` on the same model and input.  Returns a
    :class:`Decomposition`; ``model`` itself is not changed."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = choice_arg(method, "method", METHODS)
    if ranks is not None and not isinstance(ranks, Mapping):
        raise InvalidTypeError(f"ranks must be a dict of layer name -> rank, got {ranks!r}")
    if ranks is None and (rank is None) == (energy is None):
        raise InvalidInputError("give exactly one of rank and energy (or ranks per layer)")
    if layers is None and ranks:
        layers = list(ranks)
    found = found or find_conv_layers(model, example_input)
    plan = _plan(model, _chosen_layers(found, layers), rank, energy, ranks, method)
    if _module_path_ok(model, plan):
        module, how = _replace_modules(model, plan), "modules"
    else:
        source = model if isinstance(model, fx.GraphModule) else found.traced.graph_module
        module, how = _rewrite_graph(source, plan), "graph"
    module.eval()
    return Decomposition(module, plan, how, found, _count(model), _count(module))


def _count(module: nn.Module) -> int:
    """Parameters plus floating buffers that are weights of a traced graph (a ``.pt2``
    program may hold its weights as constants), without batch-norm statistics."""
    seen = {id(p) for p in module.parameters()}
    total = sum(p.numel() for p in module.parameters())
    return total + sum(b.numel() for name, b in module.named_buffers()
                       if id(b) not in seen and name.endswith((".weight", ".bias"))
                       and b.is_floating_point())
