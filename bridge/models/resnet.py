"""ResNets for small images with a per-block skip weight (the reference paper's setting).

A basic block computes

    y = act(skip_weight * S(x) + F(x)),    F = BN2 ∘ conv2 ∘ act ∘ BN1 ∘ conv1,

where ``S`` is the identity, or a strided 1×1 convolution plus batch norm when the shape
changes.  ``skip_weight`` is a 0-d float buffer (saved in the state dict, cast with the
model); 1 is the ordinary ResNet, 0 removes the skip (the end of the paper's homotopy).
With ``activation = nn.Identity()`` every layer is affine in eval mode, so the whole
network on a fixed input size is one affine map ``f(X) = W X + B`` (``numeric.affine``).

Layout: stem (3×3 stride 1, or 7×7 stride 2 followed by a 3×3 stride-2 pool), stages of
basic blocks (the first stage keeps the resolution, every later one halves it in its
first block), global average pooling and a linear classifier.  ResNet-34 has stages
[3, 4, 6, 3], ResNet-18 [2, 2, 2, 2], both with widths 64-128-256-512.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "BasicBlock", "ResNet", "resnet34", "resnet18", "resnet_tiny",
    "randomize_batchnorm_", "calibrate_batchnorm_", "set_skip_weight_", "remove_zero_skips_",
    "PADDING_MODES",
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


class BasicBlock(nn.Module):
    """``y = act2(skip_weight * shortcut(x) + bn2(conv2(act1(bn1(conv1(x))))))``.

    ``conv1`` carries the stride; the shortcut is the identity when the shape is kept and
    ``BN ∘ conv1x1(stride)`` otherwise.  After :func:`remove_zero_skips_` the shortcut is
    ``None`` and the block is ``y = act2(F(x))`` (no skip computation at all).
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
        self.shortcut: nn.Module | None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))
        else:
            self.shortcut = nn.Identity()
        self.register_buffer("skip_weight", torch.tensor(float(skip_weight)))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch ``F(x) = bn2(conv2(act1(bn1(conv1(x)))))``."""
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut is not None:
            out = self.skip_weight * self.shortcut(x) + out
        return self.act2(out)


class ResNet(nn.Module):
    """A ResNet of basic blocks for small images.

    Parameters
    ----------
    layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
    widths: channels per stage (same length as ``layers``); default ``base_width · 2^k``.
    in_channels, num_classes: input channels (1 for MNIST) and classifier outputs.
    activation: module copied into every activation slot; ``nn.Identity()`` gives the
        linear ResNet.  Default ReLU.
    stem: ``"3x3"`` (stride 1, for 28×28 / 32×32 inputs) or ``"7x7"`` (stride 2, then a
        3×3 stride-2 pool, the ImageNet stem).
    stem_pool: ``"avg"``, ``"max"`` or ``None`` (pool after a 7×7 stem; max pooling is
        nonlinear and refused when the activation is the identity).
    padding_mode: of every 3×3 / 7×7 convolution (``zeros``, ``reflect``, ``replicate``,
        ``circular``).
    skip_weight: initial skip weight of every block.
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] | None = None, *,
                 base_width: int = 64, in_channels: int = 1, num_classes: int = 10,
                 activation: nn.Module | None = None, stem: str = "3x3",
                 stem_pool: str | None = "avg", padding_mode: str = "zeros",
                 skip_weight: float = 1.0):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if widths is None:
            widths = tuple(base_width * 2**k for k in range(len(layers)))
        widths = tuple(int(w) for w in widths)
        if len(widths) != len(layers) or not layers or min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"layers {layers} and widths {widths} must be non-empty, of equal "
                             "length, and positive")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode {padding_mode!r} not in {PADDING_MODES}")
        act = _activation(activation, linear=False)
        linear = isinstance(act, nn.Identity)
        self.layers, self.widths, self.linear = layers, widths, linear

        if stem == "3x3":
            conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False, padding_mode=padding_mode)
            pool: nn.Module = nn.Identity()
        elif stem == "7x7":
            conv = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False, padding_mode=padding_mode)
            if stem_pool == "avg":
                pool = nn.AvgPool2d(3, 2, padding=1)
            elif stem_pool == "max":
                if linear:
                    raise ValueError("max pooling is nonlinear: the linear ResNet needs "
                                     "stem_pool='avg' or None")
                pool = nn.MaxPool2d(3, 2, padding=1)
            elif stem_pool is None:
                pool = nn.Identity()
            else:
                raise ValueError(f"stem_pool {stem_pool!r} not in ('avg', 'max', None)")
        else:
            raise ValueError(f"stem {stem!r} not in ('3x3', '7x7')")
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(widths[0]), copy.deepcopy(act), pool)

        stages, c_in = [], widths[0]
        for k, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (k > 0 and b == 0) else 1
                blocks.append(BasicBlock(c_in, width, stride, act, padding_mode, skip_weight))
                c_in = width
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

    def blocks(self) -> list[BasicBlock]:
        """All basic blocks, in order."""
        return [m for m in self.modules() if isinstance(m, BasicBlock)]


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


def resnet_tiny(in_channels: int = 1, num_classes: int = 10, linear: bool = True,
                activation: nn.Module | None = None, **kwargs) -> ResNet:
    """A tiny ResNet for tests: stages [1, 1], widths 4-8 (one strided stage)."""
    kwargs.setdefault("widths", (4, 8))
    return _make((1, 1), linear, activation, in_channels=in_channels,
                 num_classes=num_classes, **kwargs)


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
        raise ValueError(f"spread must be in [0, 1), got {spread}")
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


@torch.no_grad()
def set_skip_weight_(model: nn.Module, value: float) -> nn.Module:
    """Set ``skip_weight`` of every :class:`BasicBlock` in ``model`` to ``value``."""
    for m in model.modules():
        if isinstance(m, BasicBlock):
            m.skip_weight.fill_(float(value))
    return model


def remove_zero_skips_(model: nn.Module) -> int:
    """Drop the shortcut of every block whose ``skip_weight`` is exactly 0.

    Such a block computes ``act(0 · S(x) + F(x)) = act(F(x))``; without the shortcut it
    no longer evaluates ``S`` (the saving the skip-removal homotopy is for).  Returns the
    number of shortcuts removed.
    """
    removed = 0
    for m in model.modules():
        if isinstance(m, BasicBlock) and m.shortcut is not None and float(m.skip_weight) == 0.0:
            m.shortcut = None
            removed += 1
    return removed
