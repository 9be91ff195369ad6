"""``laurentnet demo``: the real path, from a trained torch model to a faster, proved one.

1. **Train** (seeded, a few seconds) a small *linear* residual CNN on scikit-learn's 8x8
   digits: a circular 3x3 stem, residual blocks ``y = S x + BN(K2 BN(K1 x))`` (``S`` the
   identity, or a strided 1x1 shortcut), flatten and a linear classifier.
2. **Save** it as a ``torch.export`` program (``model.pt2``) and **load** it back with the
   package's safe loader (nothing in the file is unpickled).
3. **Convert** it with the same code path as ``laurentnet collapse`` (``mode="auto"``): a
   linear classifier on a fixed input size is one affine map ``f(X) = W X + B``.
4. **Verify** the converted program against a float64 reference of the original, and
   compare the accuracy of both on held-out digits; time both.
5. **Prove** (up to :data:`EXACT_PROOF_MAX_CHANNELS` channels unless asked) the
   convolutional body exactly: every conv is circular and every stride
   divides the size, so the body is exactly one strided convolution
   ``y = down_S((K_total X) mod (z^n - 1)) + b``; collapse it over ``QQ`` (the trained
   float weights taken as the exact rationals they are) and check the collapse by explicit
   index sums (:func:`~laurentnet.algebra.prove_collapse`), then run it as one circular
   ``conv2d`` in float64 against the body.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..algebra.errors import DependencyError, InvalidInputError
from ..algebra import Network, collapse, prove_collapse
from ..numeric import DirectConv, KernelOperator
from ..algebra.memory import check_budget, memory_limit
from .timing import interleaved_times

__all__ = ["DemoReport", "DigitsResNet", "EXACT_PROOF_MAX_CHANNELS", "body_network",
           "load_digits", "run_demo", "train", "training_bytes"]


class DigitsResNet(nn.Module):
    """A linear residual CNN for ``1 x 8 x 8`` digits (no nonlinearity: it is affine).

    ``body``: circular 3x3 stem, then one residual block per entry of ``strides``
    (``x + BN(conv(BN(conv(x))))``, with a 1x1 strided conv + BN shortcut when strided);
    ``head``: flatten and ``Linear``."""

    def __init__(self, channels: int = 8, strides: tuple[int, ...] = (1, 2), classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, padding_mode="circular")
        self.blocks = nn.ModuleList()
        size = 8
        for s in strides:
            block = nn.ModuleDict({
                "conv1": nn.Conv2d(channels, channels, 3, s, 1, bias=False, padding_mode="circular"),
                "bn1": nn.BatchNorm2d(channels),
                "conv2": nn.Conv2d(channels, channels, 3, 1, 1, bias=False, padding_mode="circular"),
                "bn2": nn.BatchNorm2d(channels)})
            if s > 1:
                block["shortcut"] = nn.Conv2d(channels, channels, 1, s, bias=False)
                block["bn_shortcut"] = nn.BatchNorm2d(channels)
            self.blocks.append(block)
            size //= s
        self.head = nn.Linear(channels * size * size, classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            branch = block["bn2"](block["conv2"](block["bn1"](block["conv1"](h))))
            skip = block["bn_shortcut"](block["shortcut"](h)) if "shortcut" in block else h
            h = skip + branch
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def body_network(model: DigitsResNet) -> Network:
    """The model's convolutional body as an exact :class:`~laurentnet.algebra.Network`
    (float weights taken as the exact rationals they are; batch norm as its exact scale and
    shift, ``γ/√(σ²+ε)`` computed in float64)."""
    def weights(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray | None]:
        w = conv.weight.detach().double().numpy()
        return w, None if conv.bias is None else conv.bias.detach().double().numpy()

    def bn(x, norm: nn.BatchNorm2d):
        return net.batch_norm(x, norm.running_mean.double().numpy(), norm.running_var.double().numpy(),
                              norm.weight.detach().double().numpy(),
                              norm.bias.detach().double().numpy(), eps=norm.eps)

    def conv(x, layer: nn.Conv2d):
        w, b = weights(layer)
        return net.conv(x, w, b, stride=layer.stride, padding=layer.padding,
                        padding_mode=layer.padding_mode)

    net = Network(ndim=2, in_channels=1)
    h = conv(net.input, model.stem)
    for block in model.blocks:
        branch = bn(conv(bn(conv(h, block["conv1"]), block["bn1"]), block["conv2"]), block["bn2"])
        skip = bn(conv(h, block["shortcut"]), block["bn_shortcut"]) if "shortcut" in block else h
        h = skip + branch
    net.set_output(h)
    return net


def load_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits (shipped with scikit-learn, no download) as
    float32 ``(N, 1, 8, 8)`` in ``[0, 1]``, split 2:1 into train and test (seeded)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DependencyError("the demo needs scikit-learn for its digits data set: pip "
                              "install scikit-learn (an install requirement of laurentnet)"
                              ) from None
    digits = sk_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = 2 * len(labels) // 3
    train_idx, test_idx = order[:cut], order[cut:]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 15,
          seed: int = 0, batch: int = 64) -> float:
    """Adam on the cross-entropy, seeded; returns the seconds it took."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            optimizer.zero_grad()
            loss_fn(model(images[idx]), labels[idx]).backward()
            optimizer.step()
    model.eval()
    return time.perf_counter() - start


def _accuracy(module: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((module(images).argmax(1) == labels).double().mean())


@dataclass
class DemoReport:
    """What :func:`run_demo` measured; ``ok`` when every check passed."""
    channels: int
    train_images: int
    test_images: int
    train_seconds: float
    program: str
    converted_into: str
    convert_seconds: float
    verification: dict[str, Any]
    accuracy_original: float
    accuracy_converted: float
    seconds_original: float
    seconds_converted: float
    exact_operator: str
    exact_where: str
    exact_seconds: float
    proof: str
    proved: bool | None  # None: the exact proof was skipped (see ``proof``)
    exact_rel_error: float | None
    tolerance: float

    @property
    def speedup(self) -> float:
        return self.seconds_original / self.seconds_converted

    @property
    def ok(self) -> bool:
        """Verified, same accuracy, and (unless skipped) proved and equal to the body."""
        exact_ok = self.proved is None or (self.proved and self.exact_rel_error is not None
                                           and self.exact_rel_error <= self.tolerance)
        return bool(self.verification["ok"] and exact_ok
                    and self.accuracy_converted == self.accuracy_original)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(speedup=self.speedup, ok=self.ok)
        return out

    def table(self) -> str:
        v = self.verification
        rows = [
            ("model", f"linear residual CNN, {self.channels} channels, circular padding; trained "
                      f"on {self.train_images} digits in {self.train_seconds:.1f} s"),
            ("saved and loaded", f"{self.program} (torch.export program, safe loader)"),
            ("converted into", f"{self.converted_into} in {self.convert_seconds * 1e3:.0f} ms"),
            ("verification", f"{'OK' if v['ok'] else 'FAILED'}: max rel error {v['max_rel_error']:.2e} "
                             f"vs {v['reference']} (tolerance {v['tolerance']:.1e})"),
            ("test accuracy", f"original {self.accuracy_original:.1%}, converted "
                              f"{self.accuracy_converted:.1%} ({self.test_images} digits)"),
            ("time original", f"{self.seconds_original * 1e3:.3f} ms for {self.test_images} digits"),
            ("time converted", f"{self.seconds_converted * 1e3:.3f} ms"),
            ("speedup", f"{self.speedup:.1f}x"),
        ]
        if self.proved is None:
            rows.append(("exact proof", "SKIPPED: " + self.proof))
        else:
            rows += [
                ("exact body collapse", f"{self.exact_operator}, {self.exact_where} "
                                        f"({self.exact_seconds * 1e3:.0f} ms over QQ)"),
                ("proof", ("PROVED over QQ: " if self.proved else "REFUTED: ") + self.proof),
                ("exact body vs float64", f"max rel error {self.exact_rel_error:.2e} "
                                          f"(tolerance {self.tolerance:.0e})")]
        rows += [
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _exact_body(model: DigitsResNet, images: torch.Tensor) -> tuple[str, str, float, str, bool, float]:
    """Collapse the body over QQ, prove it, and run it as one circular conv in float64."""
    net = body_network(model)
    shape = tuple(images.shape[1:])
    start = time.perf_counter()
    result = collapse(net, shape)
    seconds = time.perf_counter() - start
    proof = prove_collapse(net, shape)
    # y = down_s((K X) mod (z^n - 1)) + b: one circular convolution of the folded kernel
    collapsed = DirectConv(KernelOperator.from_algebra(result.operator), shape[1:], "circular")
    with torch.inference_mode():
        reference = model.double().body(images.double())
        model.float()
        got = collapsed(images.double())
    rel = float((got - reference).abs().max() / reference.abs().max())
    op = result.operator
    described = (f"one {op.out_channels}x{op.in_channels} kernel "
                 f"{'x'.join(map(str, op.kernel_size))}, stride {'x'.join(map(str, op.stride))}")
    lines = str(proof).splitlines()
    return described, result.where(), seconds, lines[3].strip() if len(lines) > 3 else lines[0], \
        bool(proof), rel


def _summary(report: Any) -> str:
    """``"affine: Linear 64->10"``: the mode and what the merged segments became."""
    merged = [s.merged_into for s in report.segments if s.merged]
    return f"{report.mode}: " + ("; ".join(merged) if merged else "nothing merged")


#: above this width the demo skips the exact proof unless asked (``prove="always"``): the
#: sympy collapse and index-sum proof grow ~C^2 (measured 2.6 s at 8 channels, 9 s at 16,
#: 21 s at 24 on one core; minutes at 64)
EXACT_PROOF_MAX_CHANNELS = 16
PROVE_CHOICES = ("auto", "always", "never")


def training_bytes(channels: int, batch: int = 64, test_images: int = 600) -> int:
    """Shape-only estimate of the demo's peak memory before the exact proof: float32
    weights, gradients and two Adam moments plus two float64 copies (export, verify) per
    parameter, and ~12 feature maps of ``C x 8 x 8`` per image for the larger of a training
    batch (kept for backward) and the test set in float64 (the verification reference)."""
    with torch.device("meta"):
        params = sum(p.numel() for p in DigitsResNet(channels).parameters())
    maps = 12 * channels * 64 * max(2 * 4 * batch, 8 * test_images)
    return params * (4 * 4 + 2 * 8) + maps


def _proof_plan(prove: str, channels: int) -> str | None:
    """``None`` to run the exact proof, else why it is skipped."""
    if prove not in PROVE_CHOICES:
        raise InvalidInputError(f"prove must be one of {PROVE_CHOICES}, got {prove!r}")
    if prove == "never":
        return "not requested (prove='never')"
    if prove == "auto" and channels > EXACT_PROOF_MAX_CHANNELS:
        return (f"{channels} channels is above the exact-proof size limit of "
                f"{EXACT_PROOF_MAX_CHANNELS} (the sympy proof grows ~C^2 and would take "
                "minutes); ask for it with --prove always")
    return None


def run_demo(seed: int = 0, channels: int = 8, repeats: int = 7, tolerance: float = 1e-10,
             epochs: int = 15, out_dir: str | Path | None = None, progress: bool = False,
             prove: str = "auto", budget: Any = None) -> DemoReport:
    """Train, save, load, convert, verify, time and prove (see the module docstring).

    ``prove``: ``"auto"`` proves the body exactly up to :data:`EXACT_PROOF_MAX_CHANNELS`
    channels and skips it (saying so in the report) above; ``"always"`` / ``"never"``.
    ``budget`` (bytes or a size like ``"200M"``; default the budget in force) is checked
    against :func:`training_bytes` before anything is trained, and bounds every collapse."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise InvalidInputError(f"channels must be a positive int, got {channels!r}")
    skip_proof = _proof_plan(prove, channels)
    with memory_limit(budget):
        check_budget(training_bytes(channels), f"the demo with {channels} channels (training, "
                     "export and verification; the exact proof is estimated on its own)")
        stages = 6 if skip_proof is None else 5
        with tqdm(total=stages, desc="demo", disable=not progress, leave=False) as bar:
            return _run(seed, channels, repeats, tolerance, epochs, out_dir, progress,
                        skip_proof, bar)


def _run(seed: int, channels: int, repeats: int, tolerance: float, epochs: int,
         out_dir: str | Path | None, progress: bool, skip_proof: str | None,
         bar: Any) -> DemoReport:
    from .convert import convert
    from .safe_load import load
    from .verify import verify
    torch.manual_seed(seed)
    bar.set_description("demo: training")
    x_train, y_train, x_test, y_test = load_digits(seed)
    model = DigitsResNet(channels)
    train_seconds = train(model, x_train, y_train, epochs=epochs, seed=seed)
    bar.update()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        if not folder.is_dir():
            raise InvalidInputError(f"--out-dir {folder}: no such folder")
        program = folder / "digits_resnet.pt2"
        bar.set_description("demo: export and safe load")
        batch_free = ({0: torch.export.Dim.AUTO},)  # any batch size
        torch.export.save(torch.export.export(model, (x_test[:2],), dynamic_shapes=batch_free),
                          str(program))
        loaded = load(program)
        bar.update()
        bar.set_description("demo: converting")
        start = time.perf_counter()
        conversion = convert(loaded.module, x_test[:2], mode="auto", progress=progress)
        convert_seconds = time.perf_counter() - start
        converted_path = folder / "digits_resnet_collapsed.pt2"
        conversion.save(converted_path)
        converted = load(converted_path).module
        bar.update()
    bar.set_description("demo: verifying")
    check = verify(loaded.module, converted, input_shape=tuple(x_test.shape[1:]), data=x_test)
    bar.update()
    bar.set_description("demo: timing")
    timings = interleaved_times({"original": lambda: model(x_test),
                                 "converted": lambda: converted(x_test)}, repeats=repeats)
    seconds_original, seconds_converted = timings.median["original"], timings.median["converted"]
    bar.update()
    if skip_proof is None:
        bar.set_description(f"demo: exact proof over QQ ({channels} channels)")
        described, where, exact_seconds, proof, proved, rel = _exact_body(model, x_test)
        bar.update()
    else:
        described, where, exact_seconds, proof, proved, rel = "", "", 0.0, skip_proof, None, None
    return DemoReport(
        channels=channels, train_images=len(y_train), test_images=len(y_test),
        train_seconds=train_seconds, program=program.name if out_dir is None else str(program),
        converted_into=_summary(conversion.report), convert_seconds=convert_seconds,
        verification=check.as_dict(), accuracy_original=_accuracy(model, x_test, y_test),
        accuracy_converted=_accuracy(converted, x_test, y_test),
        seconds_original=seconds_original, seconds_converted=seconds_converted,
        exact_operator=described, exact_where=where, exact_seconds=exact_seconds, proof=proof,
        proved=proved, exact_rel_error=rel, tolerance=tolerance)
