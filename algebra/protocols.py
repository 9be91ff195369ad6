"""The written contract between the twins: the exact side (:mod:`laurentnet.algebra`) and
the float side (:mod:`laurentnet.numeric`) hold the same concepts under the same names.

* :class:`Operator` — ``down_s ∘ K(z) ∘ up_u + b`` with ``K`` a ``C_out x C_in`` matrix of
  Laurent polynomials: :class:`~laurentnet.algebra.ConvOperator` (exact, any up-sampling)
  and :class:`~laurentnet.numeric.KernelOperator` (dense float tensors, any up-sampling).
* :class:`PolyphaseOperatorLike` — a linear periodically shift-varying operator (input
  period ``P``, output period ``Q``) as one stride-1 block operator on polyphase components,
  what a multirate collapse gives when no single ``down_s K up_u + b`` exists:
  :class:`laurentnet.algebra.polyphase.PolyphaseOperator` and
  :class:`laurentnet.numeric.polyphase.PolyphaseOperator`.
* :class:`AffineMapLike` — ``f(X) = W X + B`` on inputs flattened in C order:
  :class:`~laurentnet.algebra.AffineMap` (exact, sparse) and
  :class:`~laurentnet.numeric.AffineMap` (float tensors).
* :class:`CollapseBackend` — what :func:`~laurentnet.algebra.collapse.collapse_walk` needs
  to collapse a :class:`~laurentnet.algebra.Network`: one implementation per twin.

The protocols are ``runtime_checkable``; ``tests/test_twins.py`` checks that both twins
satisfy them member by member.  Spellings follow PyTorch: padding modes ``"zeros"``,
``"circular"``, ``"reflect"``, ``"replicate"``; ``from_weight``/``to_weight`` for the
layout of ``torch.nn.functional.conv{n}d`` (:class:`~laurentnet.algebra.TorchLayout`).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Operator", "AffineMapLike", "CollapseBackend", "PolyphaseOperatorLike",
           "OPERATOR_MEMBERS", "AFFINE_MAP_MEMBERS", "COLLAPSE_BACKEND_MEMBERS",
           "POLYPHASE_MEMBERS"]

#: Tap pattern of an operator: ``{exponent e: mask}``, ``mask[o, c]`` set where ``K_{o,c}``
#: has a nonzero ``z^e`` term.
TapPattern = dict[tuple[int, ...], np.ndarray]


@runtime_checkable
class Operator(Protocol):
    """A multi-rate convolution operator ``A = down_s ∘ K(z) ∘ up_u + b``.

    Algebra: ``A2 @ A1`` is the composition (``A1`` first) by the noble identities,
    ``A1 + A2`` parallel branches, ``c * A`` a scalar multiple, ``A[rows]`` a channel split,
    ``A.columns(cols)`` an input restriction, ``A.adjoint()`` the transposed convolution
    ``K(1/z)^T``, ``A.dilate(d)`` is ``K(z^d)``, ``A.at_one()`` is ``K(1)`` (what a constant
    image is multiplied by)."""

    stride: tuple[int, ...]

    @property
    def upsample(self) -> tuple[int, ...]: ...
    @property
    def bias(self) -> Any: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def kernel_size(self) -> tuple[int, ...]: ...
    @property
    def has_bias(self) -> bool: ...

    def __matmul__(self, other: Any) -> Any: ...
    def __add__(self, other: Any) -> Any: ...
    def __sub__(self, other: Any) -> Any: ...
    def __neg__(self) -> Any: ...
    def __mul__(self, scalar: Any) -> Any: ...
    def __getitem__(self, rows: Any) -> Any: ...
    def columns(self, cols: Any) -> Any: ...
    def adjoint(self) -> Any: ...
    def dilate(self, factors: int | Sequence[int]) -> Any: ...
    def at_one(self) -> Any: ...
    def linear_part(self) -> Any: ...
    def with_bias(self, bias: Any) -> Any: ...
    def to_weight(self) -> Any: ...


@runtime_checkable
class AffineMapLike(Protocol):
    """``f(X) = W X + B``: ``W`` is ``(n_out, n_in)``, ``B`` has ``n_out`` entries, and
    ``input_shape``/``output_shape`` exclude the batch.  ``amap(X)`` applies the map to a
    batch ``(N, *input_shape) -> (N, *output_shape)``; ``amap.apply(x)`` to one input."""

    W: Any
    B: Any
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def n_in(self) -> int: ...
    @property
    def n_out(self) -> int: ...

    def __call__(self, X: Any) -> Any: ...
    def apply(self, x: Any) -> Any: ...


@runtime_checkable
class CollapseBackend(Protocol):
    """How :func:`~laurentnet.algebra.collapse.collapse_walk` makes and combines one twin's
    operators while it walks a network."""

    def identity(self, channels: int) -> Operator:
        """``K = I`` on ``channels`` channels (the network input)."""
    def node_operator(self, node: Any, in_shape: tuple[int, ...]) -> Operator:
        """The operator of one single-input layer, relative to its input of ``in_shape``."""
    def combine(self, ops: Sequence[Operator], coefficients: Sequence[Any]) -> Operator:
        """``sum_k c_k A_k`` (an ``Add`` node)."""
    def vstack(self, ops: Sequence[Operator]) -> Operator:
        """``[A_1; ...; A_k]`` (a channel ``Concat``)."""
    def tap_pattern(self, op: Operator) -> TapPattern:
        """``{e: mask}``, ``mask[o, c]`` where ``K_{o,c}`` has a nonzero ``z^e`` term."""
    def bias_mask(self, op: Operator) -> np.ndarray:
        """Which output channels carry a nonzero bias."""
    # the memory guard's model (algebra.footprint.FootprintModel): estimated before the walk
    def operator_bytes(self, shape: Any) -> int:
        """An operator of this :class:`~laurentnet.algebra.footprint.OperatorShape`, held."""
    def layer_bytes(self, shape: Any) -> int:
        """Building one layer's operator of this shape."""
    def product_bytes(self, outer: Any, inner: Any, result: Any) -> int:
        """Composing ``outer ∘ inner`` into ``result``, beyond holding the three."""


@runtime_checkable
class PolyphaseOperatorLike(Protocol):
    """``A`` with ``A ∘ shift_P = shift_Q ∘ A`` held as ``block``: a stride-1 operator of
    ``C_out · prod(Q)`` rows (``o · M + t``) and ``C_in · prod(P)`` columns (``c · N + r``)
    on the polyphase components ``x_r[k] = x[k P + r]``, the channel order of
    ``pixel_unshuffle``/``pixel_shuffle``.  ``@``, ``+`` re-block to a common period
    (the lcm); ``to_conv()`` is the single ``down_s K up_u + b`` when one exists, else None."""
    in_period: tuple[int, ...]
    out_period: tuple[int, ...]
    is_polyphase: bool

    @property
    def block(self) -> Operator: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    def __matmul__(self, other: Any) -> Any: ...
    def __add__(self, other: Any) -> Any: ...
    def from_conv(self, op: Any) -> Any: ...
    def reblock(self, factors: Any) -> Any: ...
    def minimal(self) -> Any: ...
    def to_conv(self) -> Any: ...
    def apply(self, x: Any, *args: Any, **kwargs: Any) -> Any: ...
    def bias_mask(self) -> np.ndarray: ...
    def bias_classes(self) -> np.ndarray: ...
    def to_weights(self) -> Any: ...
    def describe(self) -> str: ...


def _members(protocol: type) -> tuple[str, ...]:
    names = {n for n in vars(protocol) if not n.startswith("_") or n in
             ("__matmul__", "__add__", "__sub__", "__neg__", "__mul__", "__getitem__", "__call__")}
    names |= set(getattr(protocol, "__annotations__", {}))
    return tuple(sorted(names))


#: the member names each protocol requires (for tests and error messages)
OPERATOR_MEMBERS = _members(Operator)
AFFINE_MAP_MEMBERS = _members(AffineMapLike)
COLLAPSE_BACKEND_MEMBERS = _members(CollapseBackend)
POLYPHASE_MEMBERS = _members(PolyphaseOperatorLike)
