"""Wrong arguments to the public API, as a hostile new user passes them: every one is refused
at the entry point with a ``LaurentnetError`` (so the CLI reports it as bad input, exit 2)
whose message names the offending argument — never ``'float' object is not iterable``,
``new_zeros()``, an ``AttributeError`` or a quoted ``KeyError`` from deep inside.

Each case is ``(call, needle)``: the call must raise a ``LaurentnetError`` (still a
``ValueError``/``TypeError``/``KeyError`` where the builtin fits) and ``needle`` must occur
in its message.  The first block holds the inputs that used to get accidental messages.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from laurentnet.algebra import (ConvOperator, InvalidInputError, InvalidTypeError, LaurentRing,
                                LaurentnetError, Network, UnknownNameError, apply_operator,
                                collapse, collapse_affine, laurent_ring, prove, prove_collapse)
from laurentnet.bridge import check_output_path, convert, load, verify
from laurentnet.numeric import (DirectConv, KernelOperator, OperatorEvaluator, affine_numeric,
                                collapse_numeric, conv_window, dense_matrix, estimate_costs,
                                extract_affine, lipschitz_bound)

W = np.ones((2, 2, 3, 3))


def net(channels: int = 2) -> Network:
    return Network(2, channels)


def conv_net() -> Network:
    n = Network(2, 2)
    n.conv(n.input, W, padding=1)
    return n


def kop() -> KernelOperator:
    return KernelOperator.from_weight(torch.ones(2, 2, 3, 3))


def cop() -> ConvOperator:
    return ConvOperator.from_weight(W)


def conv_module() -> nn.Module:
    return nn.Conv2d(1, 1, 3).eval()


COLLAPSES = {"collapse": collapse, "collapse_affine": collapse_affine,
             "collapse_numeric": collapse_numeric, "affine_numeric": affine_numeric,
             "prove_collapse": prove_collapse}

CASES: list[tuple[str, object, str]] = []


def case(name: str, call, needle: str) -> None:
    CASES.append((name, call, needle))


# -- the accidental messages of the issue (17 kinds) -----------------------------------------
for fname, f in COLLAPSES.items():
    # 1. "'float' object is not iterable": a bare number where a shape goes
    case(f"{fname}-input_shape-float", lambda f=f: f(conv_net(), 28.0), "input_shape")
    case(f"{fname}-input_shape-int", lambda f=f: f(conv_net(), 28), "input_shape")
    case(f"{fname}-input_shape-None", lambda f=f: f(conv_net(), None), "input_shape")
    case(f"{fname}-input_shape-str", lambda f=f: f(conv_net(), "2,5,5"), "input_shape")
    case(f"{fname}-input_shape-nested", lambda f=f: f(conv_net(), ((2,), (5,), (5,))),
         "input_shape")
    case(f"{fname}-input_shape-fraction", lambda f=f: f(conv_net(), (2, 5.5, 5)), "input_shape")
    case(f"{fname}-input_shape-bool", lambda f=f: f(conv_net(), (True, 5, 5)), "input_shape")
    case(f"{fname}-input_shape-nan", lambda f=f: f(conv_net(), (2, float("nan"), 5)), "input_shape")
    case(f"{fname}-input_shape-batch-axis", lambda f=f: f(conv_net(), (1, 2, 5, 5)), "input_shape")
    # 2. a string (or a torch module) where a network goes: AttributeError 'ring' before
    case(f"{fname}-network-str", lambda f=f: f("net", (2, 5, 5)), "network")
    case(f"{fname}-network-module", lambda f=f: f(nn.Conv2d(2, 2, 3), (2, 5, 5)), "network")

# 3. a wrong node name: a quoted KeyError from a dict lookup before
for method, call in {
        "conv": lambda n: n.conv("nope", W),
        "conv_transpose": lambda n: n.conv_transpose("nope", W),
        "flatten": lambda n: n.flatten("nope"),
        "avg_pool": lambda n: n.avg_pool("nope", 2),
        "set_output": lambda n: n.set_output("nope"),
        "split": lambda n: n.split("nope", [1, 1]),
        "upsample": lambda n: n.upsample("nope", 2),
        "add": lambda n: n.add(n.input, "nope"),
        "concat": lambda n: n.concat(n.input, "nope"),
        "shapes-stop": lambda n: n.shapes((2, 5, 5), stop="nope")}.items():
    case(f"node-name-{method}", lambda call=call: call(net()), "nope")
# 4. not a Value at all (a number, an array, another network's value)
case("node-x-number", lambda: net().conv(3, W), "x must be a Value")
case("node-x-array", lambda: net().conv(np.ones((2, 5, 5)), W), "x must be a Value")
case("node-x-foreign", lambda: net().flatten(net().input), "another network")
case("node-terms-None", lambda: (lambda n: n.add(n.input, None))(net()), "terms[1]")
case("value-plus-number", lambda: net().input + 1, "Value")
# 5. `new_zeros()` / `view()` from torch: a bool or None as groups
case("KernelOperator.from_weight-groups-bool",
     lambda: KernelOperator.from_weight(torch.ones(1, 1, 3, 3), groups=True), "groups")
case("KernelOperator.from_weight-groups-None",
     lambda: KernelOperator.from_weight(torch.ones(1, 1, 3, 3), groups=None), "groups")
case("ConvOperator.from_weight-groups-str", lambda: ConvOperator.from_weight(W, groups="2"),
     "groups")
# 6. ragged nested lists: numpy's "inhomogeneous shape" before
case("conv-weight-ragged", lambda: net().conv("input", [[1, 2], [3]]), "weight")
case("conv-bias-ragged", lambda: net().conv("input", W, [[1, 2], [3]]), "bias")
case("KernelOperator-coeffs-ragged", lambda: KernelOperator([[1, 2], [3]]), "coefficients")
case("apply_operator-x-ragged", lambda: apply_operator(cop(), [[1, 2], [3]]), "x")
# 7. scalars where sequences go: "'int' object is not iterable", "has no len()"
case("channel_affine-scale-number", lambda: net().channel_affine("input", 2.0), "scale")
case("channel_affine-shift-number", lambda: net().channel_affine("input", [1, 2], 0), "shift")
case("add-coefficients-number", lambda: net().add("input", "input", coefficients=0.5),
     "coefficients")
case("split-sizes-number", lambda: net().split("input", 2), "sizes")
case("split-sizes-strings", lambda: net().split("input", ["a", "b"]), "sizes")
case("lipschitz_bound-layers-number", lambda: lipschitz_bound(3.0, 8), "layers")
# 8. batch norm eps of the wrong type: numpy's ufunc 'isfinite' message before
case("batch_norm-eps-str", lambda: net().batch_norm("input", np.zeros(2), np.ones(2), eps="x"),
     "eps")
case("batch_norm-eps-None", lambda: net().batch_norm("input", np.zeros(2), np.ones(2), eps=None),
     "eps")
case("batch_norm-eps-bool", lambda: net().batch_norm("input", np.zeros(2), np.ones(2), eps=True),
     "eps")
# 9. an operator argument that is not an operator: AttributeError 'upsample' before
case("conv_operator-op-array", lambda: net().conv_operator("input", W), "op")
case("prove_collapse-operator-str", lambda: prove_collapse(conv_net(), (2, 5, 5), operator="K"),
     "operator")
case("prove-lhs-str", lambda: prove("K", cop()), "lhs")
# 10. a tensor as a flag: "Boolean value of Tensor ... is ambiguous" before
case("collapse-periodic-tensor", lambda: collapse(conv_net(), (2, 5, 5),
                                                  periodic=torch.ones(2)), "periodic")
case("extract_affine-check-tensor", lambda: extract_affine(conv_module(), (1, 4, 4),
                                                           check=torch.ones(2)), "check")
case("Network-ndim-tensor", lambda: Network(torch.ones(2), 1), "ndim")
# 11. ConvOperator built from the wrong things: "'NoneType' object is not callable"
case("ConvOperator-ring-None", lambda: ConvOperator(None, [[1]]), "ring")
case("ConvOperator-matrix-number", lambda: ConvOperator(cop().ring, 1.5), "matrix")
case("ConvOperator-bias-number", lambda: ConvOperator(cop().ring, [[1]], 1, 2.0), "bias")
case("ConvOperator.from_weight-ring-str", lambda: ConvOperator.from_weight(W, ring="z"), "ring")
case("ConvOperator.to_weight-dtype-str", lambda: cop().to_weight(dtype="abc"), "dtype")
# 12. ConvOperator.symbolic: "unsupported operand type(s) for %" / "has no len()" before
case("symbolic-out_channels-None", lambda: ConvOperator.symbolic("a", None, 1, 3), "out_channels")
case("symbolic-in_channels-str", lambda: ConvOperator.symbolic("a", 1, "2", 3), "in_channels")
case("symbolic-kernel_size-None", lambda: ConvOperator.symbolic("a", 1, 1, None), "kernel_size")
case("symbolic-kernel_size-negative", lambda: ConvOperator.symbolic("a", 1, 1, -1), "kernel_size")
case("symbolic-ndim-str", lambda: ConvOperator.symbolic("a", 1, 1, 3, ndim="2"), "ndim")
case("symbolic-name-None", lambda: ConvOperator.symbolic(None, 1, 1, 3), "name")
# 13. LaurentRing symbols that are not names: "'float' object is not iterable" / unhashable
case("LaurentRing-symbols-float", lambda: LaurentRing(1.5), "symbols")
case("laurent_ring-symbols-nested", lambda: laurent_ring([["z"]]), "shift variables")
# 14. sizes of numeric evaluators: "invalid literal for int()", "'float' object is not iterable"
case("DirectConv-sizes-float", lambda: DirectConv(kop(), 8.0), "sizes")
case("DirectConv-sizes-str", lambda: DirectConv(kop(), "88"), "sizes")
case("dense_matrix-sizes-None", lambda: dense_matrix(kop(), None), "sizes")
case("conv_window-out_size-strs", lambda: conv_window(kop(), torch.ones(1, 2, 5, 5), ["a", "b"]),
     "out_size")
case("OperatorEvaluator-input_size-float", lambda: OperatorEvaluator(kop(), 8.0), "input_size")
case("estimate_costs-input_size-nested", lambda: estimate_costs(kop(), [[1], 2, 8, 8]),
     "input_size")
# 15. extract_affine device: torch's device() overload listing before
case("extract_affine-device-float", lambda: extract_affine(conv_module(), (1, 4, 4), device=1.5),
     "device")
case("extract_affine-device-unknown", lambda: extract_affine(conv_module(), (1, 4, 4),
                                                             device="abc"), "device")
# 16. bridge.verify: AttributeError 'eval' / 'shape', torch.randn overloads, manual_seed before
case("verify-original-str", lambda: verify("model.pt2", conv_module(), torch.ones(1, 1, 4, 4)),
     "original")
case("verify-converted-dict", lambda: verify(conv_module(), {}, torch.ones(1, 1, 4, 4)),
     "converted")
case("verify-example-array", lambda: verify(conv_module(), conv_module(), np.ones((1, 1, 4, 4))),
     "example_input")
case("verify-input_shape-int", lambda: verify(conv_module(), conv_module(), input_shape=4),
     "input_shape")
case("verify-data-list", lambda: verify(conv_module(), conv_module(), data=[[1.0]]), "data")
case("verify-samples-str", lambda: verify(conv_module(), conv_module(), input_shape=(1, 4, 4),
                                          samples="8"), "samples")
case("verify-seed-float", lambda: verify(conv_module(), conv_module(), input_shape=(1, 4, 4),
                                         seed=0.5), "seed")
case("verify-region-float", lambda: verify(conv_module(), conv_module(), input_shape=(1, 4, 4),
                                           region=1.5), "region")
case("verify-original_batch-zero", lambda: verify(conv_module(), conv_module(),
                                                  input_shape=(1, 4, 4), original_batch=0),
     "original_batch")
case("verify-model-refuses-shape", lambda: verify(conv_module(), conv_module(),
                                                  input_shape=(3, 4, 4)), "original")
# 17. bridge.load / check_output_path: "expected str, bytes or os.PathLike" / unhashable dict
case("load-source-None", lambda: load(None), "source")
case("load-source-module", lambda: load(conv_module()), "source")
case("load-arch-dict", lambda: load("x.safetensors", arch={}), "arch")
case("load-arch_options-list", lambda: load("x.safetensors", arch="resnet_tiny",
                                            arch_options=["linear"]), "arch_options")
case("check_output_path-out-None", lambda: check_output_path(None), "out")

# -- more hostile inputs: the builder's other arguments --------------------------------------
case("Network-ndim-bool", lambda: Network(True, 1), "ndim")
case("Network-ndim-4", lambda: Network(4, 1), "ndim")
case("Network-in_channels-float", lambda: Network(2, 1.5), "in_channels")
case("Network-in_channels-zero", lambda: Network(2, 0), "in_channels")
case("Network-domain-str", lambda: Network(2, 1, "QQ"), "domain")
case("conv-stride-float", lambda: net().conv("input", W, stride=1.7), "stride")
case("conv-stride-zero", lambda: net().conv("input", W, stride=0), "stride")
case("conv-padding-fraction-pair", lambda: net().conv("input", W, padding=((0.9, 0.9), (1, 1))),
     "padding")
case("conv-padding-bad-pair", lambda: net().conv("input", W, padding=((1, 2, 3), 1)), "padding")
case("conv-padding-tensor", lambda: net().conv("input", W, padding=torch.tensor([0.5, 1.0])), "padding")
case("conv-padding-bool", lambda: net().conv("input", W, padding=True), "padding")
case("conv-padding-word", lambda: net().conv("input", W, padding="full"), "padding")
case("conv-dilation-None", lambda: net().conv("input", W, dilation=None), "dilation")
case("conv-groups-bool", lambda: net().conv("input", W, groups=True), "groups")
case("conv-groups-float", lambda: net().conv("input", W, groups=1.5), "groups")
case("conv-padding_mode-None", lambda: net().conv("input", W, padding_mode=None), "padding_mode")
case("conv-padding_mode-typo", lambda: net().conv("input", W, padding_mode="zero"), "padding_mode")
case("conv-name-int", lambda: net().conv("input", W, name=3), "name")
case("conv-name-taken", lambda: net().conv("input", W, name="input"), "name")
case("conv-weight-str", lambda: net().conv("input", "weights"), "weight")
case("conv-weight-nan", lambda: net().conv("input", W * np.nan), "weight")
case("conv_transpose-groups-bool", lambda: net().conv_transpose("input", W, groups=True), "groups")
case("conv_transpose-output_padding-float",
     lambda: net().conv_transpose("input", W, stride=2, output_padding=0.5), "output_padding")
case("upsample-factor-float", lambda: net().upsample("input", 1.5), "factor")
case("upsample-factor-zero", lambda: net().upsample("input", 0), "factor")
case("channel_affine-label-int", lambda: net().channel_affine("input", [1, 2], label=3), "label")
case("channel_affine-scale-dict", lambda: net().channel_affine("input", {1: 2}), "scale")
case("channel_affine-scale-empty", lambda: net().channel_affine("input", ()), "scale")
case("channel_affine-scale-strings", lambda: net().channel_affine("input", ["a", "b"]), "scale")
case("channels_slice-start-str", lambda: net().channels_slice("input", "0", 1), "start")
case("channels_slice-start-nan", lambda: net().channels_slice("input", float("nan"), 1), "start")
case("channels_slice-stop-beyond", lambda: net().channels_slice("input", 0, 5), "stop")
case("channels_slice-stop-before-start", lambda: net().channels_slice("input", 1, 1), "stop")
case("avg_pool-count_include_pad-str",
     lambda: net().avg_pool("input", 2, count_include_pad="yes"), "count_include_pad")
case("avg_pool-kernel_size-None", lambda: net().avg_pool("input", None), "kernel_size")
case("linear-weight-ragged", lambda: (lambda n: n.linear(n.flatten("input"), [[1, 2], [3]]))(net()),
     "weight")
case("shapes-stop-number", lambda: conv_net().shapes((2, 5, 5), stop=1.5), "stop")
case("summary-input_shape-float", lambda: conv_net().summary(5.0), "input_shape")

# -- collapse / prove arguments ----------------------------------------------------------------
case("collapse-periodic-str", lambda: collapse(conv_net(), (2, 5, 5), periodic="yes"), "periodic")
case("collapse_numeric-dtype-str", lambda: collapse_numeric(conv_net(), (2, 5, 5),
                                                            dtype="float64"), "dtype")
case("affine_numeric-method-typo", lambda: affine_numeric(conv_net(), (2, 3, 3), method="vjpp"),
     "method")
case("prove_collapse-claim-int", lambda: prove_collapse(conv_net(), (2, 5, 5), claim=3), "claim")
case("prove_collapse-region-ragged", lambda: prove_collapse(conv_net(), (2, 5, 5),
                                                            region=[[1, 0], [1]]), "region")
case("prove-input_shape-float", lambda: prove(cop(), cop(), input_shape=5.0), "input_shape")
case("prove-periodic-str", lambda: prove(cop(), cop(), periodic="no"), "periodic")
case("prove-networks-no-shape", lambda: prove(conv_net(), conv_net()), "input_shape")
case("apply_operator-out_shape-negative", lambda: apply_operator(cop(), np.ones((2, 5, 5)), -1),
     "out_shape")
case("apply_operator-periodic-str", lambda: apply_operator(cop(), np.ones((2, 5, 5)),
                                                           periodic="yes"), "periodic")
case("apply_operator-x-strings", lambda: apply_operator(cop(), np.full((2, 3, 3), "a")), "x")
case("CollapseResult.apply-ragged", lambda: collapse(conv_net(), (2, 5, 5)).apply([[1], [2, 3]]),
     "x")
case("AffineMap.call-wrong-batch", lambda: collapse_affine(conv_net(), (2, 3, 3))(np.ones(3)), "X")

# -- numeric and bridge ------------------------------------------------------------------------
case("extract_affine-gemm_conv-str", lambda: extract_affine(conv_module(), (1, 4, 4),
                                                            gemm_conv="no"), "gemm_conv")
case("extract_affine-method-list", lambda: extract_affine(conv_module(), (1, 4, 4), method=[]),
     "method")
case("extract_affine-input_shape-str", lambda: extract_affine(conv_module(), "1,4,4"),
     "input_shape")
case("estimate_costs-layers-number", lambda: estimate_costs(kop(), (1, 2, 8, 8), layers=3),
     "layers")
case("estimate_costs-padding-None", lambda: estimate_costs(kop(), (1, 2, 8, 8), padding=None),
     "padding")
case("DirectConv-padding-list", lambda: DirectConv(kop(), (8, 8), padding=["zeros"]), "padding")
case("convert-model-str", lambda: convert("model.pt2", torch.ones(1, 1, 4, 4)), "model")
case("convert-example-array", lambda: convert(conv_module(), np.ones((1, 1, 4, 4))),
     "example_input")
case("convert-mode-typo", lambda: convert(conv_module(), torch.ones(1, 1, 4, 4), mode="fast"),
     "mode")
case("convert-allow_inexact-str", lambda: convert(conv_module(), torch.ones(1, 1, 4, 4),
                                                  allow_inexact="yes"), "allow_inexact")


@pytest.mark.parametrize("call, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_argument_is_a_package_error_naming_it(call, needle):
    with pytest.raises(Exception) as info:
        call()
    exc = info.value
    assert isinstance(exc, LaurentnetError), \
        f"{type(exc).__module__}.{type(exc).__name__} is not a LaurentnetError: {exc}"
    message = str(exc)
    assert needle.lower() in message.lower(), f"{needle!r} not named in: {message}"
    assert "\n" not in message.strip() and len(message) < 600, message  # one readable line


def test_the_error_classes_keep_their_builtins():
    """``except ValueError`` / ``TypeError`` / ``KeyError`` keep working for callers."""
    with pytest.raises(ValueError):
        net().conv("input", W, stride=0)
    with pytest.raises(TypeError):
        collapse("net", (2, 5, 5))
    with pytest.raises(KeyError):
        net().flatten("nope")
    assert issubclass(InvalidInputError, ValueError) and issubclass(InvalidTypeError, TypeError)
    assert issubclass(UnknownNameError, KeyError)
    try:  # a KeyError subclass that prints its message as written, not quoted
        net().flatten("nope")
    except UnknownNameError as exc:
        assert str(exc).startswith("x: no node named 'nope'")


def test_valid_inputs_in_other_spellings_are_still_accepted():
    """The checks refuse what is wrong, not what is merely spelled differently."""
    n = Network(np.int64(2), np.int64(2))
    h = n.conv(n.input, W, stride=np.int64(1), padding=((1, 1), (1, 1)), groups=np.int64(1))
    n.set_output(n.channels_slice(h, np.int64(0), 2))
    for shape in ((2, 5, 5), [2, 5, 5], np.array([2, 5, 5]), torch.Size([2, 5, 5]), (2.0, 5, 5)):
        assert n.shapes(shape)[n.output_name] == (2, 5, 5)
    assert collapse(n, (2, 5, 5)).output_shape == (2, 5, 5)
    assert ConvOperator.symbolic("w.a", 1, 1, 3).shape == (1, 1)
    assert DirectConv(kop(), torch.Size([6, 6])).sizes == (6, 6)
