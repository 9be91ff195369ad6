"""ResNets for small images with a per-block skip weight (the reference paper's setting).

A residual block computes

    y = act(λ · S(x) + F(x)),

where ``F`` is the residual branch, ``S`` the shortcut and ``λ = skip_weight`` a 0-d float
buffer (saved in the state dict, cast with the model).  ``S`` is the identity, or — when
the shape changes — a strided 1×1 convolution plus batch norm (the *projection*), and λ
scales the projection too: at λ = 0 neither is needed, so the block is ``act(F(x))``.
λ = 1 is the ordinary ResNet; the skip-removal homotopy (:mod:`laurentnet.bridge.trainer`)
drives λ from 1 to 0 during training, and :func:`remove_zero_skips_` then deletes the
shortcuts of every block whose λ is exactly 0.

Two blocks:

* :class:`BasicBlock` (ResNet-18/34): ``F = BN2 ∘ conv3x3 ∘ act ∘ BN1 ∘ conv3x3(stride)``,
  output channels ``planes``;
* :class:`Bottleneck` (ResNet-50): ``F = BN3 ∘ conv1x1 ∘ act ∘ BN2 ∘ conv3x3(stride) ∘ act
  ∘ BN1 ∘ conv1x1``, output channels ``4 · planes``.

With ``activation = nn.Identity()`` every layer is affine in eval mode, so the whole
network on a fixed input size is one affine map ``f(X) = W X + B`` (``numeric.affine``).

Layout: stem (3×3 stride 1, or 7×7 stride 2 followed by a 3×3 stride-2 pool) on 1 (MNIST,
digits) or 3 (RGB) input channels, stages of blocks (the first stage keeps the resolution,
every later one halves it in its first block), global average pooling and a linear
classifier.  ResNet-34 has basic-block stages [3, 4, 6, 3], ResNet-18 [2, 2, 2, 2],
ResNet-50 bottleneck stages [3, 4, 6, 3]; widths 64-128-256-512 scaled by
``width_multiplier`` (and ``base_width / 64``).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn

from ...algebra.errors import InvalidInputError

__all__ = [
    "ResidualBlock", "BasicBlock", "Bottleneck", "BLOCKS", "ResNet", "resnet34", "resnet18",
    "resnet50", "resnet_tiny", "resnet_small", "MODELS", "build_resnet",
    "randomize_batchnorm_", "calibrate_batchnorm_", "set_skip_weight_", "skip_weights",
    "remove_zero_skips_", "fix_unit_skips_", "PADDING_MODES",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _activation(activation: nn.Module | None, linear: bool) -> nn.Module:
    """The activation template: ``activation`` if given, else Identity (linear) or ReLU."""
    if activation is not None:
        return activation
    return nn.Identity() if linear else nn.ReLU(inplace=False)


def _conv3x3(c_in: int, c_out: int, stride: int, padding_mode: str) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (the batch norm after it carries the bias)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False,
                     padding_mode=padding_mode)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """Base of the blocks: ``y = out_act(λ · shortcut(x) + residual(x))``, λ = ``skip_weight``.

    The shortcut is ``nn.Identity()`` when the shape is kept, the projection
    ``BN ∘ conv1x1(stride)`` otherwise, and ``None`` after :func:`remove_zero_skips_` (then
    ``y = out_act(residual(x))``: no skip computation at all).  ``scaled_skip`` (a Python
    flag, default True) multiplies the shortcut by λ; :func:`fix_unit_skips_` clears it on
    blocks whose λ is exactly 1, so an ordinary ResNet does not pay for a multiply by 1
    (``1 · s == s`` exactly: the output is unchanged bit for bit).
    """

    expansion = 1
    shortcut: nn.Module | None

    def _init_shortcut(self, in_planes: int, out_planes: int, stride: int,
                       skip_weight: float) -> None:
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(_conv1x1(in_planes, out_planes, stride),
                                          nn.BatchNorm2d(out_planes))
        else:
            self.shortcut = nn.Identity()
        self.scaled_skip = True
        self.register_buffer("skip_weight", torch.tensor(float(skip_weight)))

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_activation(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut is not None:
            skip = self.shortcut(x)
            out = (self.skip_weight * skip if self.scaled_skip else skip) + out
        return self.output_activation()(out)


class BasicBlock(ResidualBlock):
    """``y = act2(λ · shortcut(x) + bn2(conv2(act1(bn1(conv1(x))))))``, two 3×3 convs.

    ``conv1`` carries the stride; the output has ``planes`` channels (expansion 1).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 activation: nn.Module | None = None, padding_mode: str = "zeros",
                 skip_weight: float = 1.0):
        super().__init__()
        act = _activation(activation, linear=False)
        self.conv1 = _conv3x3(in_planes, planes, stride, padding_mode)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = copy.deepcopy(act)
        self.conv2 = _conv3x3(planes, planes, 1, padding_mode)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = copy.deepcopy(act)
        self._init_shortcut(in_planes, planes, stride, skip_weight)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch ``F(x) = bn2(conv2(act1(bn1(conv1(x)))))``."""
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def output_activation(self) -> nn.Module:
        return self.act2


class Bottleneck(ResidualBlock):
    """``y = act3(λ · shortcut(x) + bn3(conv3(act2(bn2(conv2(act1(bn1(conv1(x)))))))))``.

    ``conv1``/``conv3`` are 1×1 (reduce to ``planes``, expand to ``4 · planes``), ``conv2``
    is the 3×3 carrying the stride (as in torchvision's ResNet-50 "v1.5").
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 activation: nn.Module | None = None, padding_mode: str = "zeros",
                 skip_weight: float = 1.0):
        super().__init__()
        act = _activation(activation, linear=False)
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = copy.deepcopy(act)
        self.conv2 = _conv3x3(planes, planes, stride, padding_mode)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = copy.deepcopy(act)
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.act3 = copy.deepcopy(act)
        self._init_shortcut(in_planes, out_planes, stride, skip_weight)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x) = bn3(conv3(act2(bn2(conv2(act1(bn1(conv1(x))))))))``."""
        h = self.act1(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(self.act2(self.bn2(self.conv2(h)))))

    def output_activation(self) -> nn.Module:
        return self.act3


BLOCKS: dict[str, type[ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block_class(block: str | type[ResidualBlock]) -> type[ResidualBlock]:
    if isinstance(block, type) and issubclass(block, ResidualBlock):
        return block
    if block not in BLOCKS:
        raise InvalidInputError(f"block {block!r} not in {tuple(BLOCKS)}")
    return BLOCKS[block]


def _scaled_widths(widths: Sequence[int], multiplier: float) -> tuple[int, ...]:
    """``max(1, round(w · multiplier))`` per stage; the multiplier must be positive."""
    if not (isinstance(multiplier, (int, float)) and math.isfinite(multiplier) and multiplier > 0):
        raise InvalidInputError(f"width_multiplier must be a positive number, got {multiplier!r}")
    return tuple(max(1, int(round(int(w) * multiplier))) for w in widths)


def _stem(in_channels: int, width: int, stem: str, stem_pool: str | None, act: nn.Module,
          linear: bool, padding_mode: str) -> nn.Sequential:
    """conv (3×3 stride 1, or 7×7 stride 2 + a 3×3 stride-2 pool), BN, activation."""
    if stem == "3x3":
        conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False, padding_mode=padding_mode)
        pool: nn.Module = nn.Identity()
    elif stem == "7x7":
        conv = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False, padding_mode=padding_mode)
        if stem_pool == "avg":
            pool = nn.AvgPool2d(3, 2, padding=1)
        elif stem_pool == "max":
            if linear:
                raise InvalidInputError("max pooling is nonlinear: the linear ResNet needs "
                                        "stem_pool='avg' or None")
            pool = nn.MaxPool2d(3, 2, padding=1)
        elif stem_pool is None:
            pool = nn.Identity()
        else:
            raise InvalidInputError(f"stem_pool {stem_pool!r} not in ('avg', 'max', None)")
    else:
        raise InvalidInputError(f"stem {stem!r} not in ('3x3', '7x7')")
    return nn.Sequential(conv, nn.BatchNorm2d(width), copy.deepcopy(act), pool)


class ResNet(nn.Module):
    """A ResNet for small images, every block with its own skip weight λ.

    Parameters
    ----------
    layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
    widths: channels per stage (``planes``; a bottleneck stage outputs ``4 · planes``),
        same length as ``layers``; default ``base_width · 2^k``; each scaled by
        ``width_multiplier`` (rounded, at least 1).
    block: ``"basic"`` (:class:`BasicBlock`), ``"bottleneck"`` (:class:`Bottleneck`) or a
        :class:`ResidualBlock` subclass.
    in_channels, num_classes: input channels (1 for MNIST / digits, 3 for RGB) and
        classifier outputs.
    activation: module copied into every activation slot; ``nn.Identity()`` gives the
        linear ResNet.  Default ReLU.
    stem: ``"3x3"`` (stride 1, for 8×8 / 28×28 / 32×32 inputs) or ``"7x7"`` (stride 2, then a
        3×3 stride-2 pool, the ImageNet stem).
    stem_pool: ``"avg"``, ``"max"`` or ``None`` (pool after a 7×7 stem; max pooling is
        nonlinear and refused when the activation is the identity).
    padding_mode: of every 3×3 / 7×7 convolution (``zeros``, ``reflect``, ``replicate``,
        ``circular``).
    skip_weight: initial skip weight λ of every block.
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] | None = None, *,
                 base_width: int = 64, in_channels: int = 1, num_classes: int = 10,
                 activation: nn.Module | None = None, stem: str = "3x3",
                 stem_pool: str | None = "avg", padding_mode: str = "zeros",
                 skip_weight: float = 1.0, block: str | type[ResidualBlock] = "basic",
                 width_multiplier: float = 1.0):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if widths is None:
            widths = tuple(base_width * 2**k for k in range(len(layers)))
        widths = tuple(int(w) for w in widths)
        if len(widths) != len(layers) or not layers or min(layers) < 1 or min(widths) < 1:
            raise InvalidInputError(f"layers {layers} and widths {widths} must be non-empty, "
                                    "of equal length, and positive")
        widths = _scaled_widths(widths, width_multiplier)
        if padding_mode not in PADDING_MODES:
            raise InvalidInputError(f"padding_mode {padding_mode!r} not in {PADDING_MODES}")
        if int(in_channels) < 1 or int(num_classes) < 1:
            raise InvalidInputError(f"in_channels ({in_channels}) and num_classes "
                                    f"({num_classes}) must be positive")
        block_cls = _block_class(block)
        act = _activation(activation, linear=False)
        linear = isinstance(act, nn.Identity)
        self.layers, self.widths, self.linear = layers, widths, linear
        self.block_type = block_cls.__name__
        self.stem = _stem(in_channels, widths[0], stem, stem_pool, act, linear, padding_mode)

        stages, c_in = [], widths[0]
        for k, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (k > 0 and b == 0) else 1
                blocks.append(block_cls(c_in, width, stride, act, padding_mode, skip_weight))
                c_in = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c_in, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))

    def blocks(self) -> list[ResidualBlock]:
        """All residual blocks, shallowest first."""
        return [m for m in self.modules() if isinstance(m, ResidualBlock)]


def _make(layers: Sequence[int], linear: bool, activation: nn.Module | None,
          **kwargs) -> ResNet:
    return ResNet(layers, activation=_activation(activation, linear), **kwargs)


def resnet34(in_channels: int = 1, num_classes: int = 10, linear: bool = True,
             activation: nn.Module | None = None, **kwargs) -> ResNet:
    """ResNet-34: stages [3, 4, 6, 3], widths 64-128-256-512 (scaled by ``base_width/64``)."""
    return _make((3, 4, 6, 3), linear, activation, in_channels=in_channels,
                 num_classes=num_classes, **kwargs)


def resnet18(in_channels: int = 1, num_classes: int = 10, linear: bool = True,
             activation: nn.Module | None = None, **kwargs) -> ResNet:
    """ResNet-18: stages [2, 2, 2, 2], widths 64-128-256-512 (scaled by ``base_width/64``)."""
    return _make((2, 2, 2, 2), linear, activation, in_channels=in_channels,
                 num_classes=num_classes, **kwargs)


def resnet50(in_channels: int = 1, num_classes: int = 10, linear: bool = True,
             activation: nn.Module | None = None, **kwargs) -> ResNet:
    """ResNet-50: bottleneck stages [3, 4, 6, 3], planes 64-128-256-512 (outputs ×4)."""
    kwargs.setdefault("block", "bottleneck")
    return _make((3, 4, 6, 3), linear, activation, in_channels=in_channels,
                 num_classes=num_classes, **kwargs)


def resnet_tiny(in_channels: int = 1, num_classes: int = 10, linear: bool = True,
                activation: nn.Module | None = None, **kwargs) -> ResNet:
    """A tiny ResNet for tests: stages [1, 1], widths 4-8 (one strided stage)."""
    kwargs.setdefault("widths", (4, 8))
    return _make((1, 1), linear, activation, in_channels=in_channels,
                 num_classes=num_classes, **kwargs)


def resnet_small(in_channels: int = 1, num_classes: int = 10, linear: bool = True,
                 activation: nn.Module | None = None, **kwargs) -> ResNet:
    """A small ResNet for 8×8 digits: stages [2, 2, 2], widths 16-32-64 (two strided
    stages: 8×8 → 8×8 → 4×4 → 2×2)."""
    kwargs.setdefault("widths", (16, 32, 64))
    return _make((2, 2, 2), linear, activation, in_channels=in_channels,
                 num_classes=num_classes, **kwargs)


MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet_tiny": resnet_tiny, "resnet_small": resnet_small, "resnet18": resnet18,
    "resnet34": resnet34, "resnet50": resnet50}


def build_resnet(name: str, *, in_channels: int = 1, num_classes: int = 10,
                 block: str | None = None, width_multiplier: float = 1.0,
                 linear: bool = False, **kwargs) -> ResNet:
    """``MODELS[name]`` with ReLUs (``linear=False``, the homotopy's setting) by default;
    ``block`` overrides the family's block type (``"basic"`` / ``"bottleneck"``)."""
    if name not in MODELS:
        raise InvalidInputError(f"model {name!r} not in {tuple(MODELS)}")
    if block is not None:
        kwargs["block"] = block
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, linear=linear,
                        width_multiplier=width_multiplier, **kwargs)


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None,
                         spread: float = 0.5, stats: bool = True, affine: bool = True) -> nn.Module:
    """Give every batch norm non-trivial eval-mode statistics and affine parameters.

    ``running_mean ~ N(0, spread²)``, ``running_var ~ U(1 - spread, 1 + spread)``,
    ``weight ~ U(1 - spread, 1 + spread)``, ``bias ~ N(0, spread²)`` — so eval-mode BN,
    ``y = weight (x - mean) / sqrt(var + eps) + bias``, is a real per-channel scale and
    shift (the default init makes it almost the identity, which would flatter a benchmark).
    ``stats`` / ``affine`` select which of the two pairs are drawn.  Draws on the CPU
    from ``generator``; returns ``model``.
    """
    if not 0 <= spread < 1:
        raise InvalidInputError(f"spread must be in [0, 1), got {spread}")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            c = m.num_features

            def rand(lo: float, hi: float) -> torch.Tensor:
                return lo + (hi - lo) * torch.rand(c, generator=generator, dtype=torch.float64)

            def normal() -> torch.Tensor:
                return spread * torch.randn(c, generator=generator, dtype=torch.float64)

            if stats:
                m.running_mean.copy_(normal())
                m.running_var.copy_(rand(1 - spread, 1 + spread))
            if affine and m.affine:
                m.weight.copy_(rand(1 - spread, 1 + spread))
                m.bias.copy_(normal())
    return model


@torch.no_grad()
def calibrate_batchnorm_(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> nn.Module:
    """Set every batch norm's running statistics from the data ``x`` (as after training:
    each BN then roughly normalises its input).

    The batch norms run in training mode with ``momentum=None`` (cumulative averaging)
    over chunks of ``x``: with one chunk (``len(x) <= chunk``) the running mean and variance
    are exactly the train-mode batch mean and unbiased variance of each BN's input; with
    several, the average of the chunks' values.  Train/eval flags and momenta are restored.
    Returns ``model``.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for start in range(0, x.shape[0], chunk):
            model(x[start:start + chunk])
    finally:
        for m, flag in flags.items():
            m.train(flag)
        for m, mom in momenta.items():
            m.momentum = mom
    return model


def skip_weights(model: nn.Module) -> list[float]:
    """λ of every :class:`ResidualBlock` in ``model``, shallowest first."""
    return [float(m.skip_weight) for m in model.modules() if isinstance(m, ResidualBlock)]


@torch.no_grad()
def set_skip_weight_(model: nn.Module, value: float | Sequence[float]) -> nn.Module:
    """Set ``skip_weight`` of every :class:`ResidualBlock` in ``model``: to ``value``, or
    block by block (shallowest first) to the entries of a sequence of that length."""
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    if isinstance(value, (int, float)):
        values = [float(value)] * len(blocks)
    else:
        values = [float(v) for v in value]
        if len(values) != len(blocks):
            raise InvalidInputError(f"{len(values)} skip weights for {len(blocks)} blocks")
    for m, v in zip(blocks, values):
        if not math.isfinite(v):
            raise InvalidInputError(f"skip weight {v} is not finite")
        m.skip_weight.fill_(v)
    return model


def remove_zero_skips_(model: nn.Module) -> int:
    """Drop the shortcut (identity or projection) of every block whose ``skip_weight`` is
    exactly 0.

    Such a block computes ``act(0 · S(x) + F(x)) = act(F(x))`` (for finite ``S(x)``);
    without the shortcut it no longer evaluates ``S`` nor the add (the saving the
    skip-removal homotopy is for).  Returns the number of shortcuts removed.
    """
    removed = 0
    for m in model.modules():
        if isinstance(m, ResidualBlock) and m.shortcut is not None and float(m.skip_weight) == 0.0:
            m.shortcut = None
            removed += 1
    return removed


def fix_unit_skips_(model: nn.Module) -> int:
    """Stop multiplying by λ in every block whose ``skip_weight`` is exactly 1 (the
    ordinary ResNet: ``y = act(S(x) + F(x))``, bit for bit the same output).  Returns the
    number of blocks changed; :func:`set_skip_weight_` does not undo it (set
    ``block.scaled_skip = True`` to scale again)."""
    changed = 0
    for m in model.modules():
        if isinstance(m, ResidualBlock) and m.scaled_skip and float(m.skip_weight) == 1.0:
            m.scaled_skip = False
            changed += 1
    return changed
