"""A linear network as a DAG of layers with PyTorch semantics.

Each node keeps its layer in PyTorch's own terms (weights in PyTorch layout, padding on
both sides, padding mode), so it can be evaluated by explicit index sums
(:mod:`algebra.affine_map`), and also yields its exact operator
``down_s ∘ K(z) ∘ up_u + b`` relative to its input (:meth:`Node.operator`), so the network
can be collapsed (:mod:`algebra.collapse`).

Build networks with :class:`Network` — every method returns a :class:`Value` handle::

    net = Network(ndim=2, in_channels=1)
    x = net.input
    h = net.conv(x, w1, b1, padding=1)
    y = x + net.conv(h, w2, padding=1)          # a residual block
    net.set_output(net.batch_norm(y, mean, var, gamma, beta))
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ
from sympy.polys.domains.domain import Domain

from .errors import InvalidInputError, InvalidTypeError, UnknownNameError
from .exact import as_array, check_finite, exact_rational, exact_sympy, to_domain
from .laurent import LaurentRing, per_axis
from .layout import default_ring, operator_from_weight
from .operator import ConvOperator
from .pooling import (PoolWindows, StridedPool, adaptive_axis, avg_pool_axis, fit_strided,
                      pool_output_size)
from .validate import (bool_arg, describe, int_arg, is_int, optional_int_arg, real_arg,
                       sequence_arg, shape_arg, str_arg)

__all__ = ["Network", "Value", "Node", "Input", "Conv", "ConvTranspose", "ChannelAffine",
           "Add", "Concat", "Split", "AvgPool", "AdaptiveAvgPool", "GlobalAvgPool", "Flatten",
           "Linear",
           "PADDING_MODES"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")

Shape = tuple[int, ...]  # (C, *spatial) for images, (N,) after Flatten


def _scalar_like(value: Any) -> bool:
    """Not a sequence: a number, a 0-d array or tensor, a string, None, ..."""
    return isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or \
        getattr(value, "ndim", None) == 0


def _pairs(padding: Any, ndim: int) -> tuple[tuple[int, int], ...]:
    """Padding per axis as ``(left, right)``: an int, a per-axis tuple, or per-axis pairs."""
    expected = "an int, per-axis ints or per-axis (left, right) pairs of ints"
    if _scalar_like(padding) and not isinstance(padding, (str, bytes)):
        p = int_arg(padding, "padding", minimum=0)
        return ((p, p),) * ndim
    padding = sequence_arg(padding, "padding", expected=expected)
    if len(padding) != ndim:
        raise InvalidInputError(f"padding needs {ndim} entries (one per axis), got {padding}")
    out = []
    for p in padding:
        if _scalar_like(p):
            v = int_arg(p, "padding")
            out.append((v, v))
        else:
            pair = tuple(p)
            if len(pair) != 2:
                raise InvalidInputError(f"padding must be {expected}, got {padding}")
            out.append((int_arg(pair[0], "padding"), int_arg(pair[1], "padding")))
    if any(v < 0 for pair in out for v in pair):
        raise InvalidInputError(f"padding must be non-negative, got {padding}")
    return tuple(out)


def _positive(values: tuple[int, ...], what: str, minimum: int = 1) -> tuple[int, ...]:
    if any(v < minimum for v in values):
        raise InvalidInputError(f"{what} must be >= {minimum} on every axis, got {values}")
    return values


def _axis_ints(value: Any, ndim: int, what: str, minimum: int) -> tuple[int, ...]:
    """An int or per-axis ints (not floats), each at least ``minimum``."""
    items = (value,) if isinstance(value, (int, np.integer)) else value
    try:
        items = tuple(items)
    except TypeError:
        raise InvalidTypeError(f"{what} must be an int or one int per axis, got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise InvalidTypeError(f"{what} must be an int or one int per axis, got {value!r}")
    return _positive(per_axis(value, ndim, what), what, minimum)


def _check_values(values: Sequence[Any], what: str) -> None:
    """Refuse NaN, infinities, complex numbers and strings (symbols are fine)."""
    for v in values:
        try:
            exact_sympy(v)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{what}: {exc}") from None


def _exact_array(values: Any, what: str) -> np.ndarray:
    """A numpy array of exact entries (floats kept as floats, converted later exactly)."""
    try:
        array = as_array(values)
    except ValueError as exc:  # a ragged nested list
        raise InvalidInputError(f"{what} must be a rectangular array (numpy array, tensor or "
                                f"nested lists of equal lengths): {exc}") from None
    if array.dtype.kind == "c":
        raise InvalidTypeError(f"{what} is complex: only real weights are supported")
    if array.dtype.kind in "USV":
        raise InvalidTypeError(f"{what} must hold numbers, got dtype {array.dtype}")
    check_finite(array, what)
    if array.dtype == object:
        _check_values(array.flat, what)
    if array.size == 0:
        raise InvalidInputError(f"{what} is empty (shape {array.shape})")
    array = np.array(array, copy=True)  # a network is a value: later edits of the
    array.setflags(write=False)         # caller's array must not change it
    return array


def _short_repr(value: Any, limit: int = 60) -> str:
    """``value`` for an error message: its type, and its repr when that is short."""
    text, kind = repr(value), type(value).__name__
    return f"{text} ({kind})" if len(text) <= limit else f"a {kind}"


def _image(shape: Shape, what: str) -> Shape:
    if len(shape) < 2:
        raise InvalidInputError(f"{what} needs an image (C, *spatial), got the flat shape {shape}")
    return shape


class Node:
    """A layer.  ``inputs`` are node names; subclasses define the shape rule, the exact
    operator relative to the input, and carry the PyTorch parameters."""
    inputs: tuple[str, ...] = ()
    spatial: bool = True  # acts on (C, *n) images, so it has a convolution operator

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        raise NotImplementedError

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        raise NotImplementedError(f"{type(self).__name__} has no convolution operator")

    def describe(self) -> str:
        return type(self).__name__


class UnaryNode(Node):
    """A layer with one input, named by its ``input`` field."""
    input: str

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.input,)


@dataclass(frozen=True)
class Input(Node):
    channels: int
    ndim: int

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        raise RuntimeError("the input shape is given by the caller")


@dataclass(frozen=True, eq=False)
class Conv(UnaryNode):
    """``F.conv{n}d(F.pad(x, padding, mode), weight, bias, stride, dilation, groups)``.

    ``padding`` is ``(left, right)`` per axis; ``mode`` one of ``zeros``, ``circular``,
    ``reflect``, ``replicate`` (``valid`` is zeros with padding 0)."""
    input: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    mode: str = "zeros"

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (c, *n), = [_image(in_shapes[0], "conv")]
        groups = self.groups
        if c != self.weight.shape[1] * groups:
            raise InvalidInputError(f"conv expects {self.weight.shape[1] * groups} input channels, got {c}")
        out = []
        for size, (left, right), k, s, d in zip(n, self.padding, self.kernel_size, self.stride,
                                                self.dilation):
            if self.mode == "reflect" and (left >= size or right >= size):
                raise InvalidInputError(f"reflect padding {left, right} needs an input larger than {size}")
            if self.mode == "circular" and (left > size or right > size):
                raise InvalidInputError(f"circular padding {left, right} wraps more than once around "
                                        f"an input of size {size}")
            span = size + left + right - d * (k - 1)
            if span <= 0:
                raise InvalidInputError(f"input size {size} is too small for kernel {k} (dilation {d}) "
                                        f"with padding {(left, right)}")
            out.append((span - 1) // s + 1)
        return (self.weight.shape[0], *out)

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        return operator_from_weight(self.weight, self.bias, stride=self.stride,
                                    padding=tuple(l for l, _ in self.padding),
                                    dilation=self.dilation, groups=self.groups, ring=ring,
                                    domain=ring.domain)

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        extras = [f"s={self.stride}"] if any(s > 1 for s in self.stride) else []
        if any(d > 1 for d in self.dilation):
            extras.append(f"d={self.dilation}")
        if self.groups > 1:
            extras.append(f"g={self.groups}")
        pad = "valid" if all(p == (0, 0) for p in self.padding) else f"{self.mode} {self.padding}"
        return f"conv {self.weight.shape[1] * self.groups}->{self.weight.shape[0]} {k} {pad} {' '.join(extras)}".strip()


@dataclass(frozen=True, eq=False)
class ConvTranspose(UnaryNode):
    """``F.conv_transpose{n}d(x, weight, bias, stride, padding, output_padding, groups,
    dilation)``; weight ``(C_in, C_out/g, *k)``.  Zero-insertion up-sampling is the case of a
    ``1 x 1`` identity weight."""
    input: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (c, *n), = [_image(in_shapes[0], "conv_transpose")]
        if c != self.weight.shape[0]:
            raise InvalidInputError(f"transposed conv expects {self.weight.shape[0]} input channels, got {c}")
        out = [(size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
               zip(n, self.stride, self.padding, self.dilation, self.weight.shape[2:],
                   self.output_padding)]
        if any(o <= 0 for o in out):
            raise InvalidInputError(f"transposed conv output size {out} is empty")
        return (self.weight.shape[1] * self.groups, *out)

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        return operator_from_weight(self.weight, self.bias, stride=self.stride,
                                    padding=self.padding, dilation=self.dilation,
                                    groups=self.groups, transposed=True, ring=ring,
                                    domain=ring.domain)

    def describe(self) -> str:
        return f"conv_transpose {self.weight.shape[0]}->{self.weight.shape[1] * self.groups} s={self.stride}"


@dataclass(frozen=True, eq=False)
class ChannelAffine(UnaryNode):
    """``y_c = scale_c x_c + shift_c`` (eval-mode batch norm, a per-channel or scalar scale)."""
    input: str
    scale: tuple[Any, ...]
    shift: tuple[Any, ...] | None
    label: str = "affine"

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = in_shapes
        if len(self.scale) != shape[0]:
            raise InvalidInputError(f"{self.label} has {len(self.scale)} channels, its input {shape[0]}")
        return shape

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        return ConvOperator.scale(ring, [to_domain(v, ring.domain) for v in self.scale],
                                  None if self.shift is None else
                                  [to_domain(v, ring.domain) for v in self.shift])

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True, eq=False)
class Add(Node):
    """``y = sum_k c_k x_k`` (skip connections, parallel branches, skip weights)."""
    terms: tuple[str, ...]
    coefficients: tuple[Any, ...] | None = None

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.terms

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        if len(set(in_shapes)) != 1:
            raise InvalidInputError(f"add needs inputs of one shape, got {list(in_shapes)}")
        return in_shapes[0]

    def describe(self) -> str:
        if len(self.terms) == 1:
            return f"scale by {self.coefficients[0]}"
        return f"add ({len(self.terms)} terms)"


@dataclass(frozen=True, eq=False)
class Concat(Node):
    """Channel concatenation ``torch.cat(xs, dim=1)``."""
    parts: tuple[str, ...]

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.parts

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        spatial = {s[1:] for s in in_shapes}
        if len(spatial) != 1:
            raise InvalidInputError(f"concat needs equal spatial sizes, got {list(in_shapes)}")
        return (sum(s[0] for s in in_shapes), *in_shapes[0][1:])

    def describe(self) -> str:
        return f"concat ({len(self.parts)} parts)"


@dataclass(frozen=True, eq=False)
class Split(UnaryNode):
    """Channels ``start:stop`` of the input (``torch.split``/slicing)."""
    input: str
    start: int
    stop: int

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = in_shapes
        if not 0 <= self.start < self.stop <= shape[0]:
            raise InvalidInputError(f"split {self.start}:{self.stop} is outside the {shape[0]} channels")
        return (self.stop - self.start, *shape[1:])

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        return ConvOperator.identity(ring, in_shape[0])[self.start:self.stop]

    def describe(self) -> str:
        return f"split {self.start}:{self.stop}"


def _pool_operator(ring: LaurentRing, form: StridedPool, channels: int) -> ConvOperator:
    """The depthwise operator ``(1 / D) Σ_{a < k} z^(p - a)`` with stride ``s``."""
    weight = 1 / sympy.Integer(form.divisor)
    tap = ring.from_dict({e: weight for e in form.taps()})
    return ConvOperator(ring, [[tap if i == j else ring.zero for j in range(channels)]
                               for i in range(channels)], stride=form.stride)


@dataclass(frozen=True, eq=False)
class AvgPool(UnaryNode):
    """``F.avg_pool{n}d(x, kernel, stride, padding, ceil_mode, count_include_pad,
    divisor_override)``; the windows and divisors are :mod:`algebra.pooling`'s."""
    input: str
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    count_include_pad: bool = True
    ceil_mode: bool = False
    divisor_override: int | None = None

    def windows(self, spatial: Sequence[int]) -> PoolWindows:
        """Every output's window and divisor for an input of spatial size ``spatial``."""
        return PoolWindows(tuple(avg_pool_axis(n, k, s, p, self.ceil_mode, self.count_include_pad)
                                 for n, k, s, p in zip(spatial, self.kernel_size, self.stride,
                                                       self.padding)),
                           self.divisor_override)

    def strided_form(self, spatial: Sequence[int]) -> StridedPool:
        """The operator form: kernel, stride and padding as given, divisor
        ``divisor_override`` or ``prod(kernel)``."""
        divisor = self.divisor_override or int(np.prod(self.kernel_size))
        return StridedPool(self.kernel_size, self.stride, self.padding, divisor)

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (c, *n), = [_image(in_shapes[0], "avg_pool")]
        out = [pool_output_size(size, k, s, p, self.ceil_mode) for size, k, s, p in
               zip(n, self.kernel_size, self.stride, self.padding)]
        if any(o <= 0 for o in out):
            raise InvalidInputError(f"average pooling {self.kernel_size} does not fit the input {tuple(n)}")
        return (c, *out)

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        return _pool_operator(ring, self.strided_form(in_shape[1:]), in_shape[0])

    def describe(self) -> str:
        extras = ("" if self.count_include_pad or not any(self.padding) else " (exclude pad)") + \
            (" ceil" if self.ceil_mode else "") + \
            ("" if self.divisor_override is None else f" divisor={self.divisor_override}")
        return f"avg_pool {self.kernel_size} s={self.stride} p={self.padding}" + extras


@dataclass(frozen=True, eq=False)
class AdaptiveAvgPool(UnaryNode):
    """``F.adaptive_avg_pool{n}d(x, output_size)``: window ``i`` of an ``n``-long axis is
    ``[floor(i n / o), ceil((i + 1) n / o))``, divided by its size.  Its operator is the
    strided pool that agrees with the most windows (:func:`algebra.pooling.fit_strided`):
    exact everywhere when ``o`` divides ``n``, elsewhere on the agreeing positions only."""
    input: str
    output_size: tuple[int, ...]

    def windows(self, spatial: Sequence[int]) -> PoolWindows:
        return PoolWindows(tuple(adaptive_axis(n, o) for n, o in zip(spatial, self.output_size)))

    def strided_form(self, spatial: Sequence[int]) -> StridedPool:
        """The fitted strided pool (divisor ``prod(kernel)``)."""
        fits = [fit_strided(ax) for ax in self.windows(spatial).axes]
        kernel = tuple(k for k, _, _, _ in fits)
        return StridedPool(kernel, tuple(s for _, s, _, _ in fits),
                           tuple(p for _, _, p, _ in fits), int(np.prod(kernel)))

    def uniform(self, spatial: Sequence[int]) -> bool:
        """Every window has one size and stride (``o`` divides ``n`` on every axis)."""
        return all(n % o == 0 for n, o in zip(spatial, self.output_size))

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (c, *n), = [_image(in_shapes[0], "adaptive_avg_pool")]
        return (c, *self.output_size)

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        return _pool_operator(ring, self.strided_form(in_shape[1:]), in_shape[0])

    def describe(self) -> str:
        return f"adaptive_avg_pool {self.output_size}"


@dataclass(frozen=True, eq=False)
class GlobalAvgPool(UnaryNode):
    """``x.mean(spatial axes, keepdim=True)``: output size 1 per axis."""
    input: str

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (c, *n), = [_image(in_shapes[0], "global_avg_pool")]
        return (c, *([1] * len(n)))

    def operator(self, ring: LaurentRing, in_shape: Shape) -> ConvOperator:
        c, *n = in_shape
        weight = 1 / sympy.Integer(int(np.prod(n)))
        tap = ring.from_dict({tuple(-a for a in index): weight for index in np.ndindex(*n)})
        return ConvOperator(ring, [[tap if i == j else ring.zero for j in range(c)]
                                   for i in range(c)], stride=tuple(n))

    def describe(self) -> str:
        return "global_avg_pool"


@dataclass(frozen=True, eq=False)
class Flatten(UnaryNode):
    """``x.flatten(1)`` (C-order: channel, then the spatial axes)."""
    input: str
    spatial = False

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = in_shapes
        return (int(np.prod(shape)),)

    def describe(self) -> str:
        return "flatten"


@dataclass(frozen=True, eq=False)
class Linear(UnaryNode):
    """``F.linear(x, weight, bias)``: ``y = W x + b`` on flat vectors."""
    input: str
    weight: np.ndarray
    bias: np.ndarray | None
    spatial = False

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        (shape,) = in_shapes
        if len(shape) != 1:
            raise InvalidInputError(f"linear needs a flat input (use flatten), got shape {shape}")
        if shape[0] != self.weight.shape[1]:
            raise InvalidInputError(f"linear expects {self.weight.shape[1]} inputs, got {shape[0]}")
        return (self.weight.shape[0],)

    def describe(self) -> str:
        return f"linear {self.weight.shape[1]}->{self.weight.shape[0]}"


class Value:
    """A handle on a node's output, for building networks that read like the math:
    ``x + net.conv(x, w)`` adds a skip, ``0.5 * h`` scales."""

    __slots__ = ("network", "name")

    def __init__(self, network: "Network", name: str):
        self.network, self.name = network, name

    def __add__(self, other: "Value") -> "Value":
        if not isinstance(other, Value):
            raise InvalidTypeError(f"a Value can be added to another Value of its network, not "
                                   f"to {describe(other)} (for a constant per channel use "
                                   "net.channel_affine(x, scale, shift))")
        return self.network.add(self, other)

    __radd__ = __add__

    def __mul__(self, scalar: Any) -> "Value":
        """``c * x``: a one-term weighted sum (any shape, symbolic ``c`` allowed)."""
        if isinstance(scalar, Value):
            return NotImplemented
        return self.network.add(self, coefficients=[scalar])

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Value({self.name!r})"


class Network:
    """A DAG of linear layers with one input (``(C, *n)`` images in ``ndim`` dimensions)."""

    def __init__(self, ndim: int, in_channels: int, domain: Domain = QQ):
        ndim = int_arg(ndim, "ndim", minimum=1, maximum=3)
        if not is_int(in_channels) or in_channels < 1:
            raise InvalidInputError(f"in_channels must be a positive int, got "
                                    f"{describe(in_channels)}")
        in_channels = int(in_channels)
        if not isinstance(domain, Domain):
            raise InvalidTypeError(f"domain must be a sympy Domain such as QQ, got {domain!r}")
        self.ndim = ndim
        self.in_channels = in_channels
        self.base_domain = domain
        self.nodes: dict[str, Node] = {"input": Input(in_channels, ndim)}
        self._channels: dict[str, int | None] = {"input": in_channels}
        self._extra_domains: list[Domain] = []
        self.output_name = "input"

    # -- builder --------------------------------------------------------------------------
    @property
    def input(self) -> Value:
        return Value(self, "input")

    def _name(self, node: Node, name: str | None) -> str:
        if name is None:
            prefix = type(node).__name__.lower()
            count = sum(1 for n in self.nodes if n.startswith(prefix))
            name = f"{prefix}{count + 1}"
            while name in self.nodes:
                count += 1
                name = f"{prefix}{count + 1}"
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"name must be a non-empty string (or None), got "
                                   f"{_short_repr(name)}")
        if name in self.nodes:
            raise InvalidInputError(f"name: a node named {name!r} already exists")
        return name

    def _ref(self, value: Value | str, what: str = "x") -> str:
        """The node name of ``value`` (an argument called ``what``), refused with a message
        naming the argument when it is not a Value of this network or one of its nodes."""
        if not isinstance(value, (Value, str)):
            raise InvalidTypeError(f"{what} must be a Value of this network (e.g. net.input) or "
                                   f"a node name, got {_short_repr(value)}")
        name = value.name if isinstance(value, Value) else value
        if isinstance(value, Value) and value.network is not self:
            raise InvalidInputError(f"{what}: the value {name!r} belongs to another network")
        if name not in self.nodes:
            known = list(self.nodes)
            listed = ", ".join(map(repr, known[:12])) + (", ..." if len(known) > 12 else "")
            raise UnknownNameError(f"{what}: no node named {name!r} in this network "
                                   f"(its nodes: {listed})")
        return name

    def _add_node(self, node: Node, name: str | None) -> Value:
        name = self._name(node, name)
        self.nodes[name] = node
        self.output_name = name
        return Value(self, name)

    def channels(self, value: Value | str) -> int:
        """Channels of a node's output, from the layers alone (no input size needed).
        Raises after ``flatten``, whose length depends on the input size."""
        name = self._ref(value, "value")
        node = self.nodes[name]
        if isinstance(node, Input):
            return node.channels
        if isinstance(node, Conv):
            return node.weight.shape[0]
        if isinstance(node, ConvTranspose):
            return node.weight.shape[1] * node.groups
        if isinstance(node, Linear):
            return node.weight.shape[0]
        if isinstance(node, Split):
            return node.stop - node.start
        if isinstance(node, Concat):
            return sum(self.channels(p) for p in node.parts)
        if isinstance(node, Flatten):
            raise InvalidInputError(f"the length of {name!r} (a flatten) depends on the input size")
        return self.channels(node.inputs[0])

    def conv(self, x: Value | str, weight: Any, bias: Any = None, *, stride: Any = 1,
             padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
             name: str | None = None) -> Value:
        """``nn.Conv{n}d`` semantics.  ``padding`` may be an int, per-axis ints, per-axis
        ``(left, right)`` pairs, ``'valid'`` or ``'same'``."""
        w = _exact_array(weight, "weight")
        if w.ndim != self.ndim + 2:
            raise InvalidInputError(f"a {self.ndim}-D conv needs a weight with {self.ndim + 2} axes, got {w.shape}")
        b = None if bias is None else _exact_array(bias, "bias")
        if b is not None and b.shape != (w.shape[0],):
            raise InvalidInputError(f"bias must have shape ({w.shape[0]},), got {b.shape}")
        if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
            raise InvalidInputError(f"padding_mode must be one of {PADDING_MODES}, got "
                                    f"{describe(padding_mode)}")
        stride = _axis_ints(stride, self.ndim, "stride", 1)
        dilation = _axis_ints(dilation, self.ndim, "dilation", 1)
        groups = int_arg(groups, "groups", minimum=1)
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                if any(s != 1 for s in stride):
                    raise InvalidInputError("padding='same' needs stride 1")
                total = [d * (k - 1) for k, d in zip(w.shape[2:], dilation)]
                padding = tuple((t // 2, t - t // 2) for t in total)
            else:
                raise InvalidInputError(f"padding must be an int, tuple, 'valid' or 'same', got {padding!r}")
        if groups < 1 or w.shape[0] % groups:
            raise InvalidInputError(f"groups={groups} must divide the {w.shape[0]} output channels")
        self._note_domain(w, b)
        node = Conv(self._ref(x), w, b, stride, _pairs(padding, self.ndim), dilation, groups,
                    padding_mode)
        return self._add_node(node, name)

    def conv_operator(self, x: Value | str, op: ConvOperator, *, padding: Any = None,
                      padding_mode: str = "zeros", name: str | None = None) -> Value:
        """A conv given by an exact (possibly symbolic) operator ``down_s K``: its PyTorch
        layout (left padding = the largest exponent) with ``padding`` on the right
        (default: the same as the left)."""
        if not isinstance(op, ConvOperator):
            raise InvalidTypeError(f"op must be a laurentnet.algebra.ConvOperator, got "
                                   f"{describe(op)} (for weight arrays use net.conv)")
        if any(u != 1 for u in op.upsample):
            raise InvalidInputError("use conv_transpose for up-sampling operators")
        layout = op.to_weight(dtype=object)
        left = layout.padding
        if padding is None:
            right = left
        else:
            right = per_axis(padding, self.ndim, "padding")
        self._extra_domains.append(op.ring.domain)
        return self.conv(x, layout.weight, layout.bias, stride=layout.stride,
                         padding=tuple(zip(left, right)), padding_mode=padding_mode, name=name)

    def conv_transpose(self, x: Value | str, weight: Any, bias: Any = None, *, stride: Any = 1,
                       padding: Any = 0, output_padding: Any = 0, dilation: Any = 1,
                       groups: int = 1, name: str | None = None) -> Value:
        """``nn.ConvTranspose{n}d`` semantics (weight ``(C_in, C_out/g, *k)``)."""
        w = _exact_array(weight, "weight")
        if w.ndim != self.ndim + 2:
            raise InvalidInputError(f"a {self.ndim}-D transposed conv needs a weight with "
                                    f"{self.ndim + 2} axes (C_in, C_out/groups, *k), got {w.shape}")
        groups = int_arg(groups, "groups", minimum=1)
        if w.shape[0] % groups:
            raise InvalidInputError(f"groups={groups!r} must be a positive int dividing the "
                                    f"{w.shape[0]} input channels")
        b = None if bias is None else _exact_array(bias, "bias")
        if b is not None and b.shape != (w.shape[1] * groups,):
            raise InvalidInputError(f"bias must have shape ({w.shape[1] * groups},), got {b.shape}")
        stride = _axis_ints(stride, self.ndim, "stride", 1)
        dilation = _axis_ints(dilation, self.ndim, "dilation", 1)
        padding = _axis_ints(padding, self.ndim, "padding", 0)
        output_padding = _axis_ints(output_padding, self.ndim, "output_padding", 0)
        for op, s_, d in zip(output_padding, stride, dilation):
            if op >= max(s_, d):
                raise InvalidInputError(f"output_padding {output_padding} must be smaller than the "
                                        f"stride {stride} or the dilation {dilation} (as in PyTorch)")
        self._note_domain(w, b)
        node = ConvTranspose(self._ref(x), w, b, stride, padding, output_padding, dilation,
                             int(groups))
        return self._add_node(node, name)

    def upsample(self, x: Value | str, factor: Any, name: str | None = None) -> Value:
        """Zero-insertion up-sampling ``X(z) -> X(z^u)`` (output size ``(n-1) u + 1``)."""
        x = self._ref(x)
        _axis_ints(factor, self.ndim, "factor", 1)
        channels = self.channels(x)
        weight = np.zeros((channels, 1, *([1] * self.ndim)), dtype=np.int64)
        weight[:, 0] = 1
        return self.conv_transpose(x, weight, stride=factor, groups=channels, name=name)

    def channel_affine(self, x: Value | str, scale: Sequence[Any], shift: Sequence[Any] | None = None,
                       *, label: str = "affine", name: str | None = None) -> Value:
        """``y_c = scale_c x_c + shift_c``."""
        label = str_arg(label, "label")
        scale = sequence_arg(scale, "scale", expected="a sequence of numbers, one per channel")
        shift = None if shift is None else \
            sequence_arg(shift, "shift", expected="a sequence of numbers, one per channel")
        if shift is not None and len(shift) != len(scale):
            raise InvalidInputError(f"{label}: {len(shift)} shifts for {len(scale)} scales")
        _check_values(scale, f"{label} scale")
        _check_values(shift or (), f"{label} shift")
        self._note_domain(np.array(list(scale + (shift or ())), dtype=object))
        return self._add_node(ChannelAffine(self._ref(x), scale, shift, label), name)

    def batch_norm(self, x: Value | str, running_mean: Any, running_var: Any, weight: Any = None,
                   bias: Any = None, eps: float = 1e-5, name: str | None = None) -> Value:
        """Eval-mode ``nn.BatchNorm``: ``y = gamma (x - mean) / sqrt(var + eps) + beta``.

        ``sqrt`` is irrational in general: the factor ``a = gamma / sqrt(var + eps)`` is
        computed in float64 (``var + eps``, the square root and the division round once
        each) and then taken exactly; the shift ``beta - mean a`` is exact given ``a``.
        Give ``channel_affine`` exact or symbolic values when the exact root matters."""
        mean = np.asarray(_exact_array(running_mean, "running_mean"), dtype=np.float64)
        var = np.asarray(_exact_array(running_var, "running_var"), dtype=np.float64)
        gamma = np.ones_like(mean) if weight is None else \
            np.asarray(_exact_array(weight, "batch norm weight"), np.float64)
        beta = np.zeros_like(mean) if bias is None else \
            np.asarray(_exact_array(bias, "batch norm bias"), np.float64)
        shapes = {"running_mean": mean.shape, "running_var": var.shape, "weight": gamma.shape,
                  "bias": beta.shape}
        if mean.ndim != 1 or len(set(shapes.values())) != 1:
            raise InvalidInputError(f"batch norm parameters must be 1-D of one length, got {shapes}")
        eps = real_arg(eps, "eps (batch norm)", minimum=0)
        if np.any(var + eps <= 0):
            raise InvalidInputError("batch norm running_var + eps must be positive")
        scale = [exact_rational(a) for a in gamma / np.sqrt(var + eps)]
        shift = [exact_rational(b) - exact_rational(m) * a for b, m, a in zip(beta, mean, scale)]
        return self.channel_affine(x, scale, shift, label="batch_norm", name=name)

    def add(self, *terms: Value | str, coefficients: Sequence[Any] | None = None,
            name: str | None = None) -> Value:
        """``y = sum_k c_k x_k`` (``c_k = 1`` without ``coefficients``); one term with a
        coefficient is a scalar multiple."""
        if len(terms) < (1 if coefficients is not None else 2):
            raise InvalidInputError("add needs at least two terms (or one term with a coefficient)")
        if coefficients is not None:
            coefficients = sequence_arg(coefficients, "coefficients",
                                        expected="a sequence of numbers, one per term")
        if coefficients is not None and len(coefficients) != len(terms):
            raise InvalidInputError("add needs one coefficient per term")
        if coefficients is not None:
            _check_values(coefficients, "add coefficients")
            self._note_domain(np.array(list(coefficients), dtype=object))
        return self._add_node(Add(tuple(self._ref(t, f"terms[{i}]") for i, t in enumerate(terms)),
                                  None if coefficients is None else tuple(coefficients)), name)

    def concat(self, *parts: Value | str, name: str | None = None) -> Value:
        if len(parts) < 2:
            raise InvalidInputError("concat needs at least two parts")
        refs = tuple(self._ref(p, f"parts[{i}]") for i, p in enumerate(parts))
        return self._add_node(Concat(refs), name)

    def split(self, x: Value | str, sizes: Sequence[int]) -> list[Value]:
        """``torch.split(x, sizes, dim=1)``: the sizes must be positive and add up to the
        channels."""
        x = self._ref(x)
        sizes = list(shape_arg(sizes, "sizes", example="(2, 6)"))
        total = self.channels(x)
        if any(v < 1 for v in sizes) or sum(sizes) != total:
            raise InvalidInputError(f"split sizes {sizes} must be positive and add up to the {total} channels")
        out, start = [], 0
        for size in sizes:
            out.append(self._add_node(Split(self._ref(x), start, start + int(size)), None))
            start += int(size)
        return out

    def channels_slice(self, x: Value | str, start: int, stop: int, name: str | None = None) -> Value:
        """Channels ``start:stop`` of ``x`` (``0 <= start < stop <= channels``)."""
        ref = self._ref(x)
        start = int_arg(start, "start", minimum=0)
        stop = int_arg(stop, "stop", minimum=start + 1)
        try:
            total = self.channels(ref)
        except InvalidInputError:  # after a flatten: checked when the shapes are known
            total = None
        if total is not None and stop > total:
            raise InvalidInputError(f"stop={stop} is beyond the {total} channels of {ref!r}")
        return self._add_node(Split(ref, start, stop), name)

    def avg_pool(self, x: Value | str, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 count_include_pad: bool = True, name: str | None = None, *,
                 ceil_mode: bool = False, divisor_override: int | None = None) -> Value:
        """``nn.AvgPool{n}d(kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override)`` (the windows: :mod:`algebra.pooling`)."""
        count_include_pad = bool_arg(count_include_pad, "count_include_pad")
        ceil_mode = bool_arg(ceil_mode, "ceil_mode")
        if divisor_override is not None:
            divisor_override = int_arg(divisor_override, "divisor_override", minimum=1)
        k = _axis_ints(kernel_size, self.ndim, "kernel_size", 1)
        s = k if stride is None else _axis_ints(stride, self.ndim, "stride", 1)
        p = _axis_ints(padding, self.ndim, "padding", 0)
        if any(2 * pi > ki for pi, ki in zip(p, k)):
            raise InvalidInputError(f"pad should be at most half of the kernel size, got {p} for {k}")
        return self._add_node(AvgPool(self._ref(x), k, s, p, count_include_pad, ceil_mode,
                                      divisor_override), name)

    def adaptive_avg_pool(self, x: Value | str, output_size: Any, name: str | None = None
                          ) -> Value:
        """``nn.AdaptiveAvgPool{n}d(output_size)`` (an int or one int per axis; ``None``
        entries are not supported: give the size)."""
        size = _axis_ints(output_size, self.ndim, "output_size", 1)
        return self._add_node(AdaptiveAvgPool(self._ref(x), size), name)

    def global_avg_pool(self, x: Value | str, name: str | None = None) -> Value:
        return self._add_node(GlobalAvgPool(self._ref(x)), name)

    def flatten(self, x: Value | str, name: str | None = None) -> Value:
        return self._add_node(Flatten(self._ref(x)), name)

    def linear(self, x: Value | str, weight: Any, bias: Any = None, name: str | None = None) -> Value:
        w = _exact_array(weight, "weight")
        if w.ndim != 2:
            raise InvalidInputError(f"linear weight must be 2-D, got shape {w.shape}")
        b = None if bias is None else _exact_array(bias, "bias")
        if b is not None and b.shape != (w.shape[0],):
            raise InvalidInputError(f"linear bias must have shape ({w.shape[0]},), got {b.shape}")
        self._note_domain(w, b)
        return self._add_node(Linear(self._ref(x), w, b), name)

    def set_output(self, value: Value | str) -> None:
        self.output_name = self._ref(value, "value")

    # -- queries --------------------------------------------------------------------------
    def _note_domain(self, *arrays: np.ndarray | None) -> None:
        """Widen the network's domain by the symbols of object-array weights/biases."""
        symbols: set[sympy.Symbol] = set()
        for array in arrays:
            if array is not None and array.dtype == object:
                for v in array.flat:
                    if isinstance(v, sympy.Basic):
                        symbols |= v.free_symbols
        if symbols:
            self._extra_domains.append(self.base_domain[sorted(symbols, key=str)])

    @property
    def domain(self) -> Domain:
        """The coefficient domain of the network: the base domain, or a polynomial ring over
        it holding every weight symbol."""
        return reduce(lambda a, b: a.unify(b), self._extra_domains, self.base_domain)

    def ring(self) -> LaurentRing:
        return default_ring(self.ndim, self.domain)

    def order(self, stop: str | None = None) -> list[str]:
        """Node names in a topological order ending at ``stop`` (default: the output),
        restricted to the nodes it depends on."""
        target = self.output_name if stop is None else self._ref(stop, "stop")
        seen: dict[str, None] = {}
        stack: list[tuple[str, bool]] = [(target, False)]
        while stack:  # a depth-first post-order without recursion (deep networks)
            name, expanded = stack.pop()
            if name in seen:
                continue
            if expanded:
                seen[name] = None
                continue
            stack.append((name, True))
            stack.extend((parent, False) for parent in reversed(self.nodes[name].inputs)
                         if parent not in seen)
        return list(seen)

    def shapes(self, input_shape: Sequence[int], stop: str | None = None
               ) -> dict[str, Shape]:
        """Output shape of every node for an input of shape ``(C, *n)``."""
        example = f"({self.in_channels}, {', '.join(['8'] * self.ndim)})"
        input_shape = shape_arg(input_shape, "input_shape", example=example)
        if len(input_shape) != self.ndim + 1:
            raise InvalidInputError(f"input_shape must be (C, {', '.join('n' * self.ndim)}) for "
                                    f"this {self.ndim}-D network (no batch axis), e.g. "
                                    f"{example}; got {input_shape}")
        if input_shape[0] != self.in_channels:
            raise InvalidInputError(f"input_shape {input_shape}: the network takes "
                                    f"{self.in_channels} channels, got {input_shape[0]}")
        out: dict[str, Shape] = {"input": input_shape}
        for name in self.order(stop):
            if name == "input":
                continue
            node = self.nodes[name]
            try:
                out[name] = node.out_shape([out[p] for p in node.inputs])
            except InvalidInputError as exc:
                raise InvalidInputError(f"node {name!r} ({node.describe()}): {exc}") from None
        return out

    def summary(self, input_shape: Sequence[int] | None = None) -> str:
        shapes = self.shapes(input_shape) if input_shape is not None else {}
        lines = []
        for name in self.order():
            node = self.nodes[name]
            src = ", ".join(node.inputs)
            shape = f"  -> {shapes[name]}" if name in shapes else ""
            lines.append(f"{name:<12} {node.describe():<40} <- {src}{shape}" if src else
                         f"{name:<12} input{shape}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Network({self.ndim}-D, {len(self.nodes)} nodes, output {self.output_name!r})"
