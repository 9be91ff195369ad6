"""``BasisConv``: a convolution run as ``r`` basis convolutions followed by a 1×1 mixing.

For a weight ``W`` reshaped to ``C_out × (C_in·k^d)`` and factored ``W = C · B`` (``B``: ``r``
basis filters, ``C``: ``C_out × r``), the layer

    y = b + conv(x, W) = b + conv1x1(conv(x, B), C)

(``W(z) = C · B(z)`` in the algebra, :mod:`laurentnet.algebra.basis`): the basis
convolution keeps the original stride, padding, padding mode and dilation, the mixing is a
1×1 convolution with the bias.  It is exact for every padding mode (the mixing acts
pointwise after the padding and the stride).  Multiply-adds per output position:
``r C_in k^d + C_out r`` against ``C_out C_in k^d``.

Two forms of the mixing:

* ``"general"`` — ``C`` is the weight of an ordinary ``nn.Conv{n}d`` 1×1 (``mixing``);
* ``"subset"`` — seed 003's ``C = [I; A]``: the basis filters are ``r`` of the original
  filters (``basis_rows``), whose rows of ``C`` are the identity — fixed, not trained — and
  only ``A`` (``(C_out − r) × r``, the parameter ``mixing.coefficients``) is trained.

``BasisConv.to_conv()`` collapses it back into one ``nn.Conv{n}d`` with ``W = C·B``;
:func:`collapse_basis_convs_` does that, in a model, for every ``BasisConv`` where the
single convolution needs fewer multiply-adds.  ``torch.export`` traces a ``BasisConv`` as
two convolutions, which :func:`laurentnet.bridge.convert` merges like any linear segment
(where it is cheaper).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import int_arg

__all__ = ["BasisConv", "SubsetMixing", "collapse_basis_convs_", "CONV_TYPES"]

CONV_TYPES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_FUNCTIONAL = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_type(ndim: int) -> type[nn.Module]:
    if ndim not in CONV_TYPES:
        raise InvalidInputError(f"ndim must be 1, 2 or 3 (spatial axes), got {ndim!r}")
    return CONV_TYPES[ndim]


class SubsetMixing(nn.Module):
    """The 1×1 mixing ``C = [I; A]`` up to the order of the outputs: row ``basis_rows[j]`` of
    ``C`` is the unit vector ``e_j`` (a buffer), the other rows are the trainable
    ``coefficients`` ``A`` (in increasing output order).  ``weight()`` builds ``C`` as
    ``cat([I, A])[order]`` (``order`` the inverse of the permutation ``basis_rows + rest``)."""

    def __init__(self, out_channels: int, basis_rows: Sequence[int], bias: bool = True,
                 ndim: int = 2):
        super().__init__()
        rows = [int(r) for r in basis_rows]
        rank = len(rows)
        if not rows or len(set(rows)) != rank or min(rows) < 0 or max(rows) >= out_channels:
            raise InvalidInputError(f"basis_rows must be distinct output channels in "
                                    f"[0, {out_channels}), got {rows}")
        rest = [o for o in range(out_channels) if o not in set(rows)]
        order = torch.empty(out_channels, dtype=torch.long)
        order[torch.tensor(rows + rest)] = torch.arange(out_channels)
        self.out_channels, self.rank, self.ndim = out_channels, rank, ndim
        self.register_buffer("order", order)
        self.register_buffer("basis_rows", torch.tensor(rows, dtype=torch.long))
        self.register_buffer("eye", torch.eye(rank), persistent=False)
        self.coefficients = nn.Parameter(torch.zeros(out_channels - rank, rank))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def weight(self) -> torch.Tensor:
        """``C`` (``C_out × r``): identity rows at ``basis_rows``, ``A`` elsewhere."""
        eye = self.eye.to(self.coefficients.dtype)
        return torch.cat([eye, self.coefficients])[self.order]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight().reshape(self.out_channels, self.rank, *(1,) * self.ndim)
        return _FUNCTIONAL[self.ndim](h, w, self.bias)


class BasisConv(nn.Module):
    """``mixing ∘ basis``: ``basis`` is ``nn.Conv{n}d(C_in, r, k, stride, padding, dilation,
    padding_mode, bias=False)``, ``mixing`` a 1×1 ``nn.Conv{n}d(r, C_out)`` with the bias
    (or a :class:`SubsetMixing` when ``basis_rows`` is given).  See the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, rank: int,
                 kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1,
                 bias: bool = True, padding_mode: str = "zeros", *, ndim: int = 2,
                 basis_rows: Sequence[int] | None = None):
        super().__init__()
        conv = _conv_type(ndim)
        in_channels = int_arg(in_channels, "in_channels", minimum=1)
        out_channels = int_arg(out_channels, "out_channels", minimum=1)
        rank = int_arg(rank, "rank", minimum=1, maximum=out_channels)
        self.basis = conv(in_channels, rank, kernel_size, stride=stride, padding=padding,
                          dilation=dilation, bias=False, padding_mode=padding_mode)
        if basis_rows is None:
            self.mixing: nn.Module = conv(rank, out_channels, 1, bias=bias)
        else:
            if len(basis_rows) != rank:
                raise InvalidInputError(f"basis_rows names {len(basis_rows)} filters, rank is {rank}")
            self.mixing = SubsetMixing(out_channels, basis_rows, bias, ndim)
        self.ndim = ndim

    # -- construction from factors --------------------------------------------------------
    @classmethod
    def from_factors(cls, conv: nn.Module, coefficients: torch.Tensor, basis: torch.Tensor,
                     basis_rows: Sequence[int] | None = None,
                     bias: torch.Tensor | None = None) -> "BasisConv":
        """A ``BasisConv`` standing for ``conv`` (an ``nn.Conv{n}d``, groups 1) with the
        factors ``C`` (``C_out × r``) and ``B`` (``r × C_in·k^d``); ``bias`` defaults to
        ``conv.bias``.  With ``basis_rows`` the mixing is the subset form and the rows of
        ``C`` at ``basis_rows`` must be the identity."""
        ndim = next((n for n, t in CONV_TYPES.items() if type(conv) is t), None)
        if ndim is None:
            raise InvalidTypeError(f"conv must be an nn.Conv1d/2d/3d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise InvalidInputError(f"a basis decomposition needs groups=1, the conv has "
                                    f"groups={conv.groups}")
        weight = conv.weight
        rank = int(coefficients.shape[1])
        if tuple(coefficients.shape) != (conv.out_channels, rank) or \
                tuple(basis.shape) != (rank, weight[0].numel()):
            raise InvalidInputError(f"factors of shapes {tuple(coefficients.shape)} and "
                                    f"{tuple(basis.shape)} do not fit a {tuple(weight.shape)} weight")
        bias = conv.bias if bias is None else bias
        module = cls(conv.in_channels, conv.out_channels, rank, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, bias is not None, conv.padding_mode,
                     ndim=ndim, basis_rows=basis_rows)
        module.to(device=weight.device, dtype=weight.dtype)
        module.set_factors(coefficients, basis, bias)
        return module

    @torch.no_grad()
    def set_factors(self, coefficients: torch.Tensor, basis: torch.Tensor,
                    bias: torch.Tensor | None = None) -> None:
        """Write ``C``, ``B`` (and the bias) into the parameters, in their dtype."""
        dtype = self.basis.weight.dtype
        self.basis.weight.copy_(basis.reshape(self.basis.weight.shape).to(dtype))
        if isinstance(self.mixing, SubsetMixing):
            c = coefficients.to(dtype)
            rows = self.mixing.basis_rows
            if not torch.equal(c[rows], torch.eye(self.rank, dtype=dtype)):
                raise InvalidInputError("the subset form needs C[basis_rows] = I exactly")
            rest = torch.ones(self.out_channels, dtype=torch.bool)
            rest[rows] = False
            self.mixing.coefficients.copy_(c[rest])
        else:
            self.mixing.weight.copy_(coefficients.reshape(self.mixing.weight.shape).to(dtype))
        if bias is not None and self.mixing.bias is not None:
            self.mixing.bias.copy_(bias.to(dtype))

    # -- shape ----------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.basis.out_channels

    @property
    def in_channels(self) -> int:
        return self.basis.in_channels

    @property
    def out_channels(self) -> int:
        return self.mixing.out_channels

    @property
    def bias(self) -> torch.Tensor | None:
        return self.mixing.bias

    @property
    def basis_rows(self) -> tuple[int, ...] | None:
        if isinstance(self.mixing, SubsetMixing):
            return tuple(int(r) for r in self.mixing.basis_rows)
        return None

    def coefficients(self) -> torch.Tensor:
        """``C`` (``C_out × r``)."""
        if isinstance(self.mixing, SubsetMixing):
            return self.mixing.weight()
        return self.mixing.weight.reshape(self.out_channels, self.rank)

    def dense_weight(self) -> torch.Tensor:
        """``W = C · B`` in PyTorch layout ``(C_out, C_in, *k)``."""
        b = self.basis.weight
        return (self.coefficients() @ b.reshape(self.rank, -1)).reshape(
            self.out_channels, *b.shape[1:])

    # -- counts ---------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Trainable parameters: ``r C_in k^d + C_out r`` (subset form ``(C_out − r) r``),
        plus the ``C_out`` biases."""
        return sum(p.numel() for p in self.parameters())

    def dense_parameter_count(self) -> int:
        """Parameters of the single convolution ``to_conv()``."""
        return self.out_channels * self.basis.weight[0].numel() + \
            (self.out_channels if self.bias is not None else 0)

    def multiply_adds(self, positions: int = 1) -> int:
        """``positions · (r C_in k^d + C_out r)``."""
        return int(positions) * (self.basis.weight.numel() + self.out_channels * self.rank)

    def dense_multiply_adds(self, positions: int = 1) -> int:
        """``positions · C_out C_in k^d``."""
        return int(positions) * self.out_channels * self.basis.weight[0].numel()

    def cheaper_as_conv(self) -> bool:
        """Whether one convolution with ``W = C·B`` needs fewer multiply-adds."""
        return self.dense_multiply_adds() < self.multiply_adds()

    # -- forward and collapse -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixing(self.basis(x))

    @torch.no_grad()
    def to_conv(self) -> nn.Module:
        """One ``nn.Conv{n}d`` with ``W = C·B`` and the bias (same stride, padding, padding
        mode, dilation): the same map, up to round-off."""
        b = self.basis
        conv = CONV_TYPES[self.ndim](self.in_channels, self.out_channels, b.kernel_size,
                                     stride=b.stride, padding=b.padding, dilation=b.dilation,
                                     bias=self.bias is not None, padding_mode=b.padding_mode)
        conv.to(device=b.weight.device, dtype=b.weight.dtype)
        conv.weight.copy_(self.dense_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        form = "general" if self.basis_rows is None else f"subset {list(self.basis_rows)}"
        return f"rank={self.rank}, mixing={form}"


def collapse_basis_convs_(model: nn.Module, only_cheaper: bool = True) -> list[str]:
    """Replace, in place, every :class:`BasisConv` of ``model`` by ``to_conv()`` — where the
    single convolution needs fewer multiply-adds (``only_cheaper``) or everywhere.  Returns
    the names of the replaced modules."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, BasisConv):
        raise InvalidInputError("model is itself a BasisConv: call model.to_conv()")
    names = [name for name, m in model.named_modules()
             if isinstance(m, BasisConv) and (m.cheaper_as_conv() or not only_cheaper)]
    for name in names:
        model.set_submodule(name, model.get_submodule(name).to_conv())
    return names


