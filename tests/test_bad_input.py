"""Bad input to the exact side and the CLI: clear errors, never silent wrong answers."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sympy
import torch
from sympy import QQ, ZZ

from laurentnet.algebra import (ConvOperator, Network, collapse, collapse_affine, laurent_ring, prove,
                     prove_collapse, round_rational, to_domain)
from laurentnet.algebra.memory import MemoryBudgetError, memory_budget
from laurentnet.bridge.cli import main


def _net(channels: int = 2) -> Network:
    return Network(2, channels)


W = np.ones((2, 2, 3, 3))


@pytest.mark.parametrize("build, message", [
    (lambda n: n.conv(n.input, W, stride=0), "stride"),
    (lambda n: n.conv(n.input, W, dilation=0), "dilation"),
    (lambda n: n.conv(n.input, W, padding=-1), "padding"),
    (lambda n: n.conv(n.input, W, stride=1.5), "stride"),
    (lambda n: n.conv(n.input, W * np.nan), "non-finite"),
    (lambda n: n.conv(n.input, W.astype(complex)), "complex"),
    (lambda n: n.conv(n.input, np.ones((2, 2, 0, 3))), "empty"),
    (lambda n: n.conv_transpose(n.input, W, stride=0), "stride"),
    (lambda n: n.conv_transpose(n.input, W, padding=-1), "padding"),
    (lambda n: n.conv_transpose(n.input, W, output_padding=2), "output_padding"),
    (lambda n: n.conv_transpose(n.input, np.ones((3, 1, 1, 1)), groups=2), "groups"),
    (lambda n: n.conv_transpose(n.input, W, bias=np.ones(5)), "bias"),
    (lambda n: n.conv_transpose(n.input, np.ones((2, 2, 3))), "axes"),
    (lambda n: n.channel_affine(n.input, [1, 2], [10, 20, 30]), "shifts"),
    (lambda n: n.channel_affine(n.input, [1, float("nan")]), "non-finite"),
    (lambda n: n.channel_affine(n.input, list(torch.tensor([1.0, float("nan")]))), "non-finite"),
    (lambda n: n.batch_norm(n.input, np.zeros(2), np.ones(2), weight=[2.0]), "one length"),
    (lambda n: n.batch_norm(n.input, np.zeros(3), np.ones(2)), "one length"),
    (lambda n: n.add(n.input, n.input, coefficients=[1, float("nan")]), "non-finite"),
    (lambda n: n.add(n.input, n.input, coefficients=[1, "x"]), "string"),
    (lambda n: n.split(n.input, [1, 2]), "add up"),
    (lambda n: n.split(n.input, [0, 2]), "positive"),
    (lambda n: n.avg_pool(n.input, 2, padding=-1), "padding"),
    (lambda n: n.avg_pool(n.input, 0), "kernel_size"),
    (lambda n: n.linear(n.flatten(n.input), np.ones((2, 8)), np.ones(5)), "bias"),
    (lambda n: n.conv(3, W), "Value"),
])
def test_builder_refuses_what_pytorch_refuses(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build(_net())


@pytest.mark.parametrize("build, shape, message", [
    (lambda n: n.avg_pool(n.flatten(n.input), 2), (2, 4, 4), "image"),
    (lambda n: n.conv(n.input, W, padding=5, padding_mode="circular"), (2, 4, 4), "wraps"),
    (lambda n: n.conv(n.input, W, padding=4, padding_mode="reflect"), (2, 4, 4), "larger"),
])
def test_shape_errors_name_the_node(build, shape, message):
    net = _net()
    build(net)
    with pytest.raises(ValueError, match=message):
        net.shapes(shape)
    with pytest.raises(ValueError):
        collapse_affine(net, shape)


def test_replicate_padding_wider_than_the_input_is_allowed_as_in_torch():
    net = Network(1, 1)
    net.conv(net.input, np.ones((1, 1, 1)), padding=2, padding_mode="replicate")
    W_, B_ = collapse_affine(net, (1, 2)).to_numpy()
    x = torch.tensor([[[2.0, 3.0]]])
    expected = torch.nn.functional.pad(x, (2, 2), mode="replicate")[0, 0].numpy()
    assert np.array_equal(W_ @ x.numpy().ravel() + B_, expected)


@pytest.mark.parametrize("shape", [(2, 4.5, 4), (2, 0, 4), (3, 4, 4), (2, 4)])
def test_input_shapes_are_checked(shape):
    net = _net()
    net.conv(net.input, W, padding=1)
    with pytest.raises(ValueError):
        net.shapes(shape)


def test_network_constructor_checks():
    with pytest.raises(ValueError):
        Network(2, 0)
    with pytest.raises(ValueError):
        Network(2, 2.5)
    with pytest.raises(TypeError):
        Network(2, 1, domain="QQ")


def test_sympy_floats_and_subs_are_exact():
    assert to_domain(sympy.Float(0.1), QQ) == QQ(3602879701896397, 2**55)
    K = ConvOperator.symbolic("w", 1, 1, 1)
    assert prove(K.subs({"w_000": 0.1}), ConvOperator.from_weight([[[0.1]]]))


@pytest.mark.parametrize("value, error", [("a", TypeError), (1j, TypeError),
                                          (float("nan"), ValueError), (sympy.Symbol("q"), ValueError)])
def test_to_domain_errors(value, error):
    with pytest.raises(error):
        to_domain(value, QQ)
    with pytest.raises(ValueError):
        to_domain(0.5, ZZ)


def test_correct_single_rounding_to_float32_everywhere():
    value = Fraction(1) + Fraction(1, 2**24) + Fraction(1, 2**60)
    assert round_rational(value, np.float32) == np.float32(1.0000001)
    net = Network(1, 1)
    net.linear(net.flatten(net.input), np.array([[sympy.Rational(value.numerator, value.denominator)]],
                                                dtype=object))
    W_, _ = collapse_affine(net, (1, 1)).to_numpy(np.float32)
    assert W_[0, 0] == np.float32(1.0000001)
    with pytest.raises(ValueError, match="overflows"):
        round_rational(Fraction(10**6), np.float16)
    with pytest.raises(ValueError):
        ConvOperator.from_weight([[[0.5]]]).to_weight(dtype=np.int64)


def test_equal_polynomials_hash_equal_across_domains():
    Rz, z = laurent_ring("z", ZZ)
    Rq, w = laurent_ring("z", QQ)
    assert z + 1 == w + 1 and len({z + 1, w + 1}) == 1
    assert Rq.one == 1 and hash(Rq.one) == hash(1)


def test_laurent_errors():
    R, z = laurent_ring("z")
    with pytest.raises(ValueError, match="integers"):
        R.from_dict({(1.5,): 1})
    with pytest.raises(ValueError, match="pole"):
        (1 / z).evaluate([0])
    _, w = laurent_ring("w")
    with pytest.raises(ValueError, match="cannot combine"):
        z + w


def test_prove_checks_shapes():
    I2 = ConvOperator.identity(laurent_ring("z")[0], 2)
    with pytest.raises(ValueError, match="input_shape"):
        prove(I2, I2, input_shape=(3, 4))
    with pytest.raises(ValueError, match="input_shape"):
        prove(I2, I2, input_shape=(2, 4, 4))
    strided = ConvOperator(I2.ring, I2.matrix, stride=2)
    with pytest.raises(ValueError, match="periodic"):
        prove(strided, strided, input_shape=(2, 5), periodic=True)
    net = Network(1, 2)
    net.conv(net.input, np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="claimed operator"):
        prove_collapse(net, (2, 6), operator=ConvOperator.identity(I2.ring, 1))


def test_collapse_apply_checks_the_input_shape():
    net = Network(2, 1)
    net.conv(net.input, np.ones((1, 1, 3, 3)), padding=1, padding_mode="circular")
    result = collapse(net, (1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        result.apply(np.ones((1, 5, 5)))


def test_exact_affine_map_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "1M")
    net = Network(2, 1)
    net.conv(net.input, np.ones((4, 1, 3, 3)), padding=1)
    with pytest.raises(MemoryBudgetError, match="exact affine map"):
        collapse_affine(net, (1, 64, 64))


@pytest.mark.parametrize("text", ["-5", "0", "inf", "1e400", "lots"])
def test_bad_memory_budget_strings(monkeypatch, text):
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", text)
    with pytest.raises(ValueError, match="LAURENTNET_MEMORY_BUDGET"):
        memory_budget()


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--tolerance", "nan"], "--tolerance"),
    (["demo", "--tolerance", "-1"], "--tolerance"),
    (["demo", "--seed", "-1"], "--seed"),
])
def test_cli_refuses_bad_flags_in_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_cli_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--bogus"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# -- silent wrong answers found by probing (issue: no silent wrong answers) ----------------

@pytest.mark.parametrize("kw", [{"stride": (1.7, 1.7)}, {"padding": (0.9, 0.9)},
                                {"dilation": 1.5}, {"stride": True}])
def test_fractional_or_boolean_geometry_is_refused_not_truncated(kw):
    import torch
    from laurentnet.numeric import KernelOperator
    w = np.ones((1, 1, 3, 3))
    for build in (lambda: ConvOperator.from_weight(w, **kw),
                  lambda: KernelOperator.from_weight(torch.ones(1, 1, 3, 3), **kw)):
        with pytest.raises((TypeError, ValueError), match="integers"):
            build()


def test_integral_floats_are_accepted_as_integers():
    op = ConvOperator.from_weight(np.ones((1, 1, 3, 3)), stride=(2.0, 2.0), padding=1.0)
    assert op.stride == (2, 2)


def test_the_network_owns_its_weights():
    w = np.ones((1, 1, 3, 3))
    net = Network(ndim=2, in_channels=1)
    net.set_output(net.conv(net.input, w, padding=1))
    before = collapse(net, (1, 4, 4)).operator
    w[...] = 7.0  # the caller edits its array afterwards
    assert collapse(net, (1, 4, 4)).operator == before


def test_numeric_collapse_apply_refuses_complex_input():
    import torch
    from laurentnet.numeric import collapse_numeric
    net = Network(ndim=2, in_channels=1)
    net.set_output(net.conv(net.input, np.ones((1, 1, 3, 3))))
    result = collapse_numeric(net, (1, 5, 5))
    with pytest.raises(TypeError, match="complex"):
        result.apply(torch.ones(1, 5, 5, dtype=torch.complex128))
