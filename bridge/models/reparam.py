"""Train-time (over-parameterized) blocks that structural re-parameterization merges.

Every block here is *linear in eval mode* (batch norm uses its running statistics), so it
is one convolution ``y = K * x + b``; the papers below train the wide form and deploy the
merged one, each with its own hand-written merge.  The blocks are ordinary ``nn.Module``s
(traceable with ``torch.fx``) so that a generic converter can be checked against them, and
each carries its paper's merge as ``reparameterize()`` (one ``nn.Conv2d``).

Eval-mode batch norm is ``BN(t) = γ (t - μ) / σ + β`` with ``σ = sqrt(var + eps)``; after a
convolution ``W * x + c`` it folds into ``(γ/σ) W * x + (β + (c - μ) γ/σ)`` (per output
channel).  Parallel branches on the same input with the same stride and *centred* padding
add their kernels (the smaller ones zero-padded to the largest size); the BN identity
branch is the Dirac kernel scaled by ``γ/σ``.

* :class:`RepVGGBlock` — Ding et al., "RepVGG: Making VGG-style ConvNets Great Again"
  (CVPR 2021): ``BN(3×3) + BN(1×1) + BN(x)`` (the identity branch only when
  ``c_in == c_out`` and stride 1) → one 3×3.
* :class:`ACBlock` — Ding et al., "ACNet: Strengthening the Kernel Skeletons for Powerful
  CNN via Asymmetric Convolution Blocks" (ICCV 2019): ``BN(3×3) + BN(3×1) + BN(1×3)`` →
  one 3×3 (the 3×1 and 1×3 kernels land on the skeleton).
* :class:`DBBBlock` — Ding et al., "Diverse Branch Block: Building a Convolution as an
  Inception-like Unit" (CVPR 2021): ``BN(k×k) + BN(1×1) + BN(k×k ∘ BN(1×1)) +
  BN(avg ∘ BN(1×1))``.  The two sequential branches are exact as one k×k only if the map
  between the 1×1 and the k×k (or the pool) is padded with the BN's *output* at zero
  (``BN(0) = β - μγ/σ``, the paper's ``BNAndPadLayer``); with ordinary zero padding
  (``border="zeros"``, the default here) the merged kernel is wrong on a ``k//2``-pixel
  border.  ``border="bn_pad"`` builds the exact form as ``BN(ZeroPad(1×1 x))``, which is
  ``BNAndPad`` because a bias-free 1×1 maps the zero padding to zero.
* :class:`MobileOneBlock` — Vasu et al., "MobileOne: An Improved One millisecond Mobile
  Backbone" (CVPR 2023): ``Σ_k BN(k×k) + BN(1×1) + BN(x)`` → one k×k; ``groups=channels``
  gives the depthwise block (followed in the network by a pointwise 1×1 block).
* :class:`DiracBlock` — Zagoruyko & Komodakis, "DiracNets: Training Very Deep Neural
  Networks Without Skip-Connections" (2017): ``a·x + b·(W * x)`` with learnable scalars or
  per-channel ``a, b`` → the kernel ``a·δ + b·W`` (optionally with ``W`` normalised per
  filter, ``Ŵ = W / ‖W‖``, and a batch norm after).

Networks (:class:`ReparamNet`, built by :func:`repvgg_net`, :func:`acnet_net`,
:func:`dbb_net`, :func:`mobileone_net`, :func:`diracnet_net`): a conv+BN stem, stages of
blocks with an activation after every block (ReLU, hardswish, or a squeeze-and-excitation
gate then hardswish), global average pooling and a linear head.  :func:`deploy` applies
the hand-written merges to a whole network.  :func:`resnet18_relu` is a torchvision-style
ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) for
3×32×32 or 1×28×28 inputs.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...algebra.errors import InvalidInputError
from .resnet import randomize_batchnorm_

__all__ = [
    "ConvBN", "RepVGGBlock", "ACBlock", "DBBBlock", "MobileOneBlock", "DiracBlock",
    "SqueezeExcite", "ReparamNet", "repvgg_net", "acnet_net", "dbb_net", "mobileone_net",
    "diracnet_net", "deploy", "ReLUBasicBlock", "ReLUResNet", "resnet18_relu",
    "randomize_bn_", "ACTIVATIONS", "DBB_BORDERS",
]

ACTIVATIONS = ("relu", "hardswish")
DBB_BORDERS = ("zeros", "bn_pad")

Kernel = tuple[torch.Tensor, torch.Tensor]  # (weight, bias) of one convolution


# ----------------------------------------------------------------------------- merging


def _pair(k: int | Sequence[int]) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> Kernel:
    """Fold eval-mode ``bn`` into the conv ``(weight, bias)``:
    ``(s W, β + (c - μ) s)`` with ``s = γ / sqrt(var + eps)``."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    c = torch.zeros_like(beta) if bias is None else bias
    return weight * scale.view(-1, 1, 1, 1), beta + (c - bn.running_mean) * scale


def centre_pad(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a ``kh×kw`` kernel to ``size`` keeping it centred (odd sizes)."""
    dh, dw = size[0] - weight.shape[2], size[1] - weight.shape[3]
    return F.pad(weight, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def dirac_kernel(channels: int, groups: int, size: tuple[int, int],
                 like: torch.Tensor) -> torch.Tensor:
    """The identity as a grouped ``size`` kernel: ``δ`` at the centre, channel i → i."""
    w = torch.zeros(channels, channels // groups, *size, dtype=like.dtype, device=like.device)
    return nn.init.dirac_(w, groups)


def bn_identity(bn: nn.BatchNorm2d, groups: int, size: tuple[int, int],
                like: torch.Tensor) -> Kernel:
    """``BN(x)`` as a grouped convolution: the Dirac kernel with ``bn`` folded in."""
    return fold_bn(dirac_kernel(bn.num_features, groups, size, like), None, bn)


def sum_kernels(parts: Sequence[Kernel], size: tuple[int, int]) -> Kernel:
    """Parallel branches on one input: ``Σ (W_i padded to size, b_i)``."""
    weight = sum(centre_pad(w, size) for w, _ in parts)
    return weight, sum(b for _, b in parts)


def as_conv(kernel: Kernel, stride: tuple[int, int] | int, groups: int = 1) -> nn.Conv2d:
    """An ``nn.Conv2d`` computing ``W * x + b`` with centred zero padding."""
    weight, bias = kernel
    c_out, c_in_g, kh, kw = weight.shape
    conv = nn.Conv2d(c_in_g * groups, c_out, (kh, kw), stride, (kh // 2, kw // 2),
                     groups=groups, bias=True).to(weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


# ------------------------------------------------------------------------------ blocks


class ConvBN(nn.Sequential):
    """``BN(W * x)``: a bias-free convolution (centred padding by default) and a batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | Sequence[int],
                 stride: int = 1, padding: int | Sequence[int] | None = None,
                 groups: int = 1):
        kh, kw = _pair(kernel_size)
        padding = (kh // 2, kw // 2) if padding is None else padding
        super().__init__(OrderedDict(
            conv=nn.Conv2d(c_in, c_out, (kh, kw), stride, padding, groups=groups, bias=False),
            bn=nn.BatchNorm2d(c_out)))

    def kernel(self) -> Kernel:
        """``(s W, β - μ s)``: the folded conv (valid with centred padding)."""
        return fold_bn(self.conv.weight, self.conv.bias, self.bn)

    @torch.no_grad()
    def reparameterize(self, allow_inexact: bool = False) -> nn.Conv2d:
        """The conv with the batch norm folded in."""
        return as_conv(self.kernel(), self.conv.stride, self.conv.groups)


class RepVGGBlock(nn.Module):
    """RepVGG: ``y = BN(W3 * x) + BN(W1 * x) [+ BN(x)]`` → one 3×3 conv.

    The 1×1 kernel sits at the centre of the 3×3 (padding 1 vs 0 keeps the sampling grids
    equal for stride 1 and 2); the identity branch exists when ``c_in == c_out`` and
    ``stride == 1``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.dense = ConvBN(c_in, c_out, 3, stride, groups=groups)
        self.pointwise = ConvBN(c_in, c_out, 1, stride, groups=groups)
        self.identity = nn.BatchNorm2d(c_in) if c_in == c_out and stride == 1 else None
        self.stride, self.groups = stride, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return y

    @torch.no_grad()
    def reparameterize(self, allow_inexact: bool = False) -> nn.Conv2d:
        """``(s3 W3 + pad(s1 W1) + s0 δ, Σ biases)`` as one 3×3 conv."""
        parts = [self.dense.kernel(), self.pointwise.kernel()]
        if self.identity is not None:
            parts.append(bn_identity(self.identity, self.groups, (3, 3), parts[0][0]))
        return as_conv(sum_kernels(parts, (3, 3)), self.stride, self.groups)


class ACBlock(nn.Module):
    """ACNet: ``y = BN(W3×3 * x) + BN(W3×1 * x) + BN(W1×3 * x)`` → one 3×3 conv.

    The 3×1 (padding (1, 0)) and 1×3 (padding (0, 1)) kernels are the centre column and
    row of the square kernel's skeleton; zero padding is the same for all three.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.square = ConvBN(c_in, c_out, 3, stride, groups=groups)
        self.vertical = ConvBN(c_in, c_out, (3, 1), stride, groups=groups)
        self.horizontal = ConvBN(c_in, c_out, (1, 3), stride, groups=groups)
        self.stride, self.groups = stride, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.square(x) + self.vertical(x) + self.horizontal(x)

    @torch.no_grad()
    def reparameterize(self, allow_inexact: bool = False) -> nn.Conv2d:
        """``(s W3×3 + pad(s' W3×1) + pad(s'' W1×3), Σ biases)`` as one 3×3 conv."""
        parts = [self.square.kernel(), self.vertical.kernel(), self.horizontal.kernel()]
        return as_conv(sum_kernels(parts, (3, 3)), self.stride, self.groups)


class DBBBlock(nn.Module):
    """Diverse Branch Block: four branches on ``x``, summed (``k = kernel_size``, ``p = k//2``):

    * ``BN(Wk * x)`` and ``BN(W1 * x)``;
    * sequential ``BN2(Wk ∘ P(BN1(W1' * x)))`` with ``internal`` middle channels;
    * average ``BN2(avg_k ∘ P(BN1(W1'' * x)))``, the pool a k×k box filter ``1/k²``;

    where ``P`` is the padding of the middle map.  ``border="zeros"``: ``P`` pads with 0
    (``nn.Conv2d(padding=p)``, ``nn.AvgPool2d(padding=p)``), while one merged k×k conv
    pads ``x`` with 0, i.e. the middle map with ``BN1(0) = β1 - μ1 s1``: the two agree only
    ``p`` pixels away from the border.  ``border="bn_pad"``: the middle map is
    ``BN1(ZeroPad_p(W1' * x))`` (the paper's ``BNAndPadLayer``), exact as one conv.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 internal: int | None = None, border: str = "zeros"):
        super().__init__()
        if border not in DBB_BORDERS:
            raise InvalidInputError(f"border {border!r} not in {DBB_BORDERS}")
        if kernel_size % 2 != 1 or kernel_size < 3:
            raise InvalidInputError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        k, p, mid = kernel_size, kernel_size // 2, internal or c_in
        self.kernel_size, self.stride, self.border = k, stride, border
        self.dense = ConvBN(c_in, c_out, k, stride)
        self.pointwise = ConvBN(c_in, c_out, 1, stride)
        inner = 0 if border == "bn_pad" else p
        self.sequential = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(c_in, mid, 1, bias=False), **self._middle(mid, p),
            conv2=nn.Conv2d(mid, c_out, k, stride, inner, bias=False),
            bn2=nn.BatchNorm2d(c_out)))
        self.average = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(c_in, c_out, 1, bias=False), **self._middle(c_out, p),
            pool=nn.AvgPool2d(k, stride, inner), bn2=nn.BatchNorm2d(c_out)))

    def _middle(self, channels: int, p: int) -> dict[str, nn.Module]:
        """``P ∘ BN1`` of the middle map: BN only, or zero-pad then BN (= BNAndPad)."""
        if self.border == "zeros":
            return {"bn1": nn.BatchNorm2d(channels)}
        return {"pad": nn.ZeroPad2d(p), "bn1": nn.BatchNorm2d(channels)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x) + self.pointwise(x) + self.sequential(x) + self.average(x)

    def _sequential_kernel(self) -> Kernel:
        """``BN2(Wk ∘ (s1 W1', b1))``: ``W[o,i] = Σ_m Wk[o,m] s1[m] W1'[m,i]``, bias
        ``Σ_m (Σ_taps Wk[o,m]) b1[m]``, then BN2 folded."""
        seq = self.sequential
        w1, b1 = fold_bn(seq.conv1.weight, None, seq.bn1)
        weight = torch.einsum("omhw,mi->oihw", seq.conv2.weight, w1[:, :, 0, 0])
        bias = seq.conv2.weight.sum((2, 3)) @ b1
        return fold_bn(weight, bias, seq.bn2)

    def _average_kernel(self) -> Kernel:
        """``BN2(avg_k ∘ (s1 W1'', b1))``: ``W[o,i] = s1[o] W1''[o,i] / k²`` on every tap."""
        avg = self.average
        w1, b1 = fold_bn(avg.conv1.weight, None, avg.bn1)
        k = self.kernel_size
        weight = w1.expand(-1, -1, k, k) / k**2
        return fold_bn(weight, b1, avg.bn2)

    @torch.no_grad()
    def reparameterize(self, allow_inexact: bool = False) -> nn.Conv2d:
        """The DBB merge as one k×k conv.  Exact for ``border="bn_pad"``; for
        ``border="zeros"`` it is wrong on the ``k//2``-pixel border (by ``BN1(0)`` pushed
        through the taps that fall outside the image), so it raises unless
        ``allow_inexact``."""
        if self.border == "zeros" and not allow_inexact:
            raise InvalidInputError("DBB with zero-padded middle maps is not one convolution at the "
                                    "border; use border='bn_pad' or allow_inexact=True")
        k = (self.kernel_size, self.kernel_size)
        parts = [self.dense.kernel(), self.pointwise.kernel(), self._sequential_kernel(),
                 self._average_kernel()]
        return as_conv(sum_kernels(parts, k), self.stride)


class MobileOneBlock(nn.Module):
    """MobileOne: ``y = Σ_{j<k} BN_j(W_j * x) + BN(W1 * x) + BN(x)`` → one conv.

    ``branches`` (MobileOne's ``k``) parallel ``kernel_size`` conv+BN branches; the 1×1
    "scale" branch only when ``kernel_size > 1``; the BN identity when ``c_in == c_out`` and
    ``stride == 1``.  ``groups = c_in = c_out`` is the depthwise block.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, branches: int = 2):
        super().__init__()
        if branches < 1:
            raise InvalidInputError(f"branches must be >= 1, got {branches}")
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.convs = nn.ModuleList(ConvBN(c_in, c_out, kernel_size, stride, groups=groups)
                                   for _ in range(branches))
        self.scale = ConvBN(c_in, c_out, 1, stride, groups=groups) if kernel_size > 1 else None
        self.identity = nn.BatchNorm2d(c_in) if c_in == c_out and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs[0](x)
        for conv in self.convs[1:]:
            y = y + conv(x)
        if self.scale is not None:
            y = y + self.scale(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return y

    @torch.no_grad()
    def reparameterize(self, allow_inexact: bool = False) -> nn.Conv2d:
        """``(Σ s_j W_j + pad(s W1) + s0 δ, Σ biases)`` as one conv."""
        k = (self.kernel_size, self.kernel_size)
        parts = [conv.kernel() for conv in self.convs]
        if self.scale is not None:
            parts.append(self.scale.kernel())
        if self.identity is not None:
            parts.append(bn_identity(self.identity, self.groups, k, parts[0][0]))
        return as_conv(sum_kernels(parts, k), self.stride, self.groups)


class DiracBlock(nn.Module):
    """DiracNet: ``y = BN(a·x + b·(Ŵ * x + c))`` → one conv with kernel ``a·δ + b·Ŵ``.

    ``a, b`` are learnable scalars (``per_channel=False``) or per-channel vectors (shape
    ``(C, 1, 1)``), initialised to ``alpha``/``beta``; ``Ŵ = W`` or, with ``normalize``,
    ``W / ‖W‖`` per output filter (computed in ``forward`` from the parameter, as the
    paper does); ``c`` is the conv bias (only without the batch norm).
    """

    def __init__(self, channels: int, kernel_size: int = 3, per_channel: bool = True,
                 normalize: bool = False, bn: bool = True, alpha: float = 1.0,
                 beta: float = 0.1):
        super().__init__()
        shape = (channels, 1, 1) if per_channel else ()
        self.alpha = nn.Parameter(torch.full(shape, float(alpha)))
        self.beta = nn.Parameter(torch.full(shape, float(beta)))
        self.conv = nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(channels) if bn else None
        self.normalize = normalize

    def weight(self) -> torch.Tensor:
        """``Ŵ``: the conv weight, normalised per output filter if ``normalize``."""
        w = self.conv.weight
        if not self.normalize:
            return w
        return w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            conv = F.conv2d(x, self.weight(), self.conv.bias, padding=self.conv.padding)
        else:
            conv = self.conv(x)
        y = self.alpha * x + self.beta * conv
        return y if self.bn is None else self.bn(y)

    @torch.no_grad()
    def reparameterize(self, allow_inexact: bool = False) -> nn.Conv2d:
        """``(a δ + b Ŵ, b c)`` per output channel, then the batch norm folded."""
        w = self.weight()
        c = w.shape[0]
        a = self.alpha.reshape(-1).expand(c)
        b = self.beta.reshape(-1).expand(c)
        weight = a.view(-1, 1, 1, 1) * dirac_kernel(c, 1, tuple(w.shape[2:]), w) \
            + b.view(-1, 1, 1, 1) * w
        bias = b * (torch.zeros_like(a) if self.conv.bias is None else self.conv.bias)
        if self.bn is not None:
            weight, bias = fold_bn(weight, bias, self.bn)
        return as_conv((weight, bias), 1)


class SqueezeExcite(nn.Module):
    """Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018):
    ``y = x · σ(W2 relu(W1 mean_hw(x) + b1) + b2)`` per channel (fully connected layers)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean((2, 3))
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
        return x * g[:, :, None, None]


# ---------------------------------------------------------------------------- networks


def _activation(kind: str, se: bool, channels: int) -> nn.Module:
    """The nonlinearity after a block: ReLU or hardswish, optionally after an SE gate."""
    if kind not in ACTIVATIONS:
        raise InvalidInputError(f"activation {kind!r} not in {ACTIVATIONS}")
    act = nn.ReLU() if kind == "relu" else nn.Hardswish()
    return nn.Sequential(SqueezeExcite(channels), act) if se else act


def _plan(in_width: int, widths: Sequence[int], depth: int) -> list[tuple[int, int, int]]:
    """``(c_in, c_out, stride)`` of every block: ``depth`` per stage, the first block of
    every stage after the first with stride 2."""
    if not widths or depth < 1 or min(widths) < 1:
        raise InvalidInputError(f"widths {tuple(widths)} must be non-empty and positive, depth >= 1")
    plan, c_in = [], in_width
    for k, width in enumerate(widths):
        for b in range(depth):
            plan.append((c_in, int(width), 2 if k > 0 and b == 0 else 1))
            c_in = int(width)
    return plan


class ReparamNet(nn.Module):
    """``head(act(block_n(... act(block_1(act(BN(conv(x))))))))``.

    ``stem``: 3×3 conv + BN (stride 1); ``body``: the blocks, each followed by its own
    activation module; ``head``: global average pooling, flatten, linear.  Every block is
    affine in eval mode, so a converter that merges every linear segment leaves one conv
    per block (and the stem) — :func:`deploy` does it with the hand-written merges.
    """

    def __init__(self, blocks: Sequence[tuple[nn.Module, int]], in_channels: int,
                 stem_width: int, num_classes: int, activation: str, se: bool):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(in_channels, stem_width, 3),
                                  _activation(activation, se, stem_width))
        body: list[nn.Module] = []
        for block, width in blocks:
            body += [block, _activation(activation, se, width)]
        self.body = nn.Sequential(*body)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Linear(blocks[-1][1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))

    def blocks(self) -> list[nn.Module]:
        """The re-parameterizable units, outermost first: the stem's conv+BN, every block
        (and DiracNet's conv+BN transitions); one convolution each after :func:`deploy`."""
        return _outermost(self)


def _outermost(module: nn.Module) -> list[nn.Module]:
    """The re-parameterizable submodules of ``module`` not inside another one, in order."""
    found: list[nn.Module] = []
    for child in module.children():
        found += [child] if isinstance(child, _REPARAMETERIZABLE) else _outermost(child)
    return found


BlockFactory = Callable[[int, int, int], Sequence[tuple[nn.Module, int]]]


def _build(factory: BlockFactory, in_channels: int, num_classes: int, widths: Sequence[int],
           depth: int, activation: str, se: bool) -> ReparamNet:
    """A :class:`ReparamNet` whose blocks ``factory(c_in, c_out, stride)`` returns, each as
    ``(module, output channels)``; the stem has ``widths[0]`` channels."""
    blocks = [unit for c_in, c_out, stride in _plan(widths[0], widths, depth)
              for unit in factory(c_in, c_out, stride)]
    return ReparamNet(blocks, in_channels, widths[0], num_classes, activation, se)


def repvgg_net(in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (8, 16, 32),
               depth: int = 2, activation: str = "relu", se: bool = False) -> ReparamNet:
    """A RepVGG-style network: ``depth`` :class:`RepVGGBlock` per stage."""
    return _build(lambda i, o, s: [(RepVGGBlock(i, o, s), o)], in_channels, num_classes,
                  widths, depth, activation, se)


def acnet_net(in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (8, 16, 32),
              depth: int = 2, activation: str = "relu", se: bool = False) -> ReparamNet:
    """An ACNet-style network: ``depth`` :class:`ACBlock` per stage."""
    return _build(lambda i, o, s: [(ACBlock(i, o, s), o)], in_channels, num_classes,
                  widths, depth, activation, se)


def dbb_net(in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (8, 16, 32),
            depth: int = 2, activation: str = "relu", se: bool = False,
            border: str = "zeros") -> ReparamNet:
    """A DBB-style network: ``depth`` :class:`DBBBlock` (3×3, ``border``) per stage."""
    return _build(lambda i, o, s: [(DBBBlock(i, o, 3, s, border=border), o)], in_channels,
                  num_classes, widths, depth, activation, se)


def mobileone_net(in_channels: int = 3, num_classes: int = 10,
                  widths: Sequence[int] = (8, 16, 32), depth: int = 2,
                  activation: str = "relu", se: bool = False, branches: int = 2) -> ReparamNet:
    """A MobileOne-style network: every unit is a depthwise 3×3 :class:`MobileOneBlock`
    (``groups = c_in``, carrying the stride), an activation, then a pointwise 1×1 block."""
    def unit(c_in: int, c_out: int, stride: int) -> list[tuple[nn.Module, int]]:
        return [(MobileOneBlock(c_in, c_in, 3, stride, groups=c_in, branches=branches), c_in),
                (MobileOneBlock(c_in, c_out, 1, 1, branches=branches), c_out)]
    return _build(unit, in_channels, num_classes, widths, depth, activation, se)


def diracnet_net(in_channels: int = 3, num_classes: int = 10,
                 widths: Sequence[int] = (8, 16, 32), depth: int = 2,
                 activation: str = "relu", se: bool = False, per_channel: bool = True,
                 normalize: bool = False) -> ReparamNet:
    """A DiracNet-style network: a block keeps its width and resolution, so the first unit
    of every later stage is a strided 3×3 conv+BN transition, then a :class:`DiracBlock`."""
    def unit(c_in: int, c_out: int, stride: int) -> list[tuple[nn.Module, int]]:
        dirac = (DiracBlock(c_out, per_channel=per_channel, normalize=normalize), c_out)
        if c_in == c_out and stride == 1:
            return [dirac]
        return [(ConvBN(c_in, c_out, 3, stride), c_out), dirac]
    return _build(unit, in_channels, num_classes, widths, depth, activation, se)


_REPARAMETERIZABLE = (ConvBN, RepVGGBlock, ACBlock, DBBBlock, MobileOneBlock, DiracBlock)


@torch.no_grad()
def deploy(model: nn.Module, allow_inexact: bool = False) -> nn.Module:
    """A copy of ``model`` (eval mode) with every re-parameterizable block replaced by its
    hand-written merge (``reparameterize()``: one ``nn.Conv2d``); the rest is unchanged.
    ``allow_inexact`` is passed on (only :class:`DBBBlock` with zero borders needs it)."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, _REPARAMETERIZABLE):
        return model.reparameterize(allow_inexact).eval()
    _deploy_children_(model, allow_inexact)
    return model


def _deploy_children_(module: nn.Module, allow_inexact: bool) -> None:
    for name, child in module.named_children():
        if isinstance(child, _REPARAMETERIZABLE):
            setattr(module, name, child.reparameterize(allow_inexact).eval())
        else:
            _deploy_children_(child, allow_inexact)


# ----------------------------------------------------------------------------- ResNet-18


class ReLUBasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + down(x))``,
    ``down`` the identity or ``BN ∘ conv1×1(stride)`` when the shape changes; in-place ReLUs
    and torchvision's attribute names (``conv1 bn1 relu conv2 bn2 downsample``)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ReLUResNet(nn.Module):
    """torchvision's ResNet layout with basic blocks, for small images.

    ``stem="cifar"``: 3×3 stride-1 ``conv1`` and no max pool (the usual CIFAR / MNIST
    variant); ``stem="imagenet"``: torchvision's 7×7 stride-2 ``conv1`` then a 3×3 stride-2
    max pool.  Then ``layer1..4`` (widths ``width·(1, 2, 4, 8)``, strides 1, 2, 2, 2),
    ``avgpool`` (adaptive, 1×1), flatten, ``fc``.  Kaiming-normal conv init, BN γ=1 β=0.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), in_channels: int = 3,
                 num_classes: int = 10, width: int = 64, stem: str = "cifar"):
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise InvalidInputError(f"stem {stem!r} not in ('cifar', 'imagenet')")
        if len(layers) != 4 or min(layers) < 1 or width < 1:
            raise InvalidInputError(f"need four positive stage depths and width >= 1, got {layers}")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c_in = width
        for k, n in enumerate(layers):
            planes = width * 2**k
            blocks = [ReLUBasicBlock(c_in if b == 0 else planes, planes,
                                     2 if k > 0 and b == 0 else 1) for b in range(n)]
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
            c_in = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_relu(in_channels: int = 3, num_classes: int = 10, width: int = 64,
                  stem: str = "cifar") -> ReLUResNet:
    """ResNet-18 with ReLUs (stages [2, 2, 2, 2]); ``width=64`` has ~11.2M parameters.
    For 3×32×32 (``in_channels=3``) or 1×28×28 (``in_channels=1``) inputs."""
    return ReLUResNet((2, 2, 2, 2), in_channels, num_classes, width, stem)


def randomize_bn_(model: nn.Module, generator: torch.Generator | None = None,
                  spread: float = 0.5) -> nn.Module:
    """Give every batch norm of ``model`` non-trivial running statistics and affine
    parameters (``μ, β ~ N(0, spread²)``, ``var, γ ~ U(1 ± spread)``; see
    :func:`~.resnet.randomize_batchnorm_`), so that folding BN is actually exercised —
    the default ``μ=0, var=1, γ=1, β=0`` makes every BN nearly the identity.  Returns
    ``model``."""
    return randomize_batchnorm_(model, generator, spread=spread)
