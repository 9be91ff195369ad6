"""prove / prove_collapse / the identity library: certificates for true claims and
counterexamples, checked against torch, for false ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from laurentnet.algebra import (LIBRARY, Certificate, ConvOperator, Counterexample, Network, collapse,
                     prove, prove_collapse)
from network_strategies import build_network, linear_networks


@settings(deadline=None, max_examples=12)
@given(spec=st.sampled_from([1, 2]).flatmap(lambda d: linear_networks(d, max_depth=3)))
def test_prove_collapse_certifies_random_networks(spec):
    net = build_network(spec, Network)
    result = collapse(net, spec.input_shape)
    certificate = prove_collapse(net, spec.input_shape)
    assert isinstance(certificate, Certificate) and bool(certificate)
    assert certificate.difference_terms == 0
    rows = int(result.region.sum()) * result.output_shape[0]
    assert certificate.compared >= rows  # every region row compared (bias included)


def _symbolic_residual_net(padding_mode: str = "zeros") -> Network:
    A = ConvOperator.symbolic("a", 2, 1, (3, 3), padding=1, bias=True)
    B = ConvOperator.symbolic("b", 2, 2, (3, 3), padding=1, stride=2)
    S = ConvOperator.symbolic("s", 2, 2, (1, 1), stride=2)
    net = Network(2, 1)
    h = net.conv_operator(net.input, A, padding_mode=padding_mode)
    net.add(net.conv_operator(h, B, padding_mode=padding_mode), net.conv_operator(h, S))
    return net


def test_prove_collapse_symbolic_weights_zero_and_circular():
    for mode, everywhere in (("zeros", False), ("circular", True)):
        net = _symbolic_residual_net(mode)
        result = collapse(net, (1, 6, 6))
        assert result.exact_everywhere == everywhere
        certificate = prove_collapse(net, (1, 6, 6))
        assert isinstance(certificate, Certificate), str(certificate)
        assert certificate.weight_symbols == len(net.domain.symbols)


def test_wrong_border_claim_gives_a_real_counterexample():
    """Claim: the zero-padded 3x3∘3x3 network equals its 5x5 product everywhere.  The
    counterexample's weights, impulse and output position must reproduce the mismatch
    when the network is run in torch and the 5x5 kernel is applied as a zero-extended conv."""
    A = ConvOperator.symbolic("a", 1, 1, (3, 3), padding=1)
    B = ConvOperator.symbolic("b", 1, 1, (3, 3), padding=1)
    net = Network(2, 1)
    net.conv_operator(net.conv_operator(net.input, A), B)
    shape = (1, 5, 5)
    refuted = prove_collapse(net, shape, region=np.ones((5, 5), bool))
    assert isinstance(refuted, Counterexample) and not refuted
    assert refuted.mismatches > 0 and refuted.input_index is not None
    values = refuted.substitution
    wa = np.array(A.subs(values).to_weight().weight)
    wb = np.array(B.subs(values).to_weight().weight)
    x = torch.zeros((1, *shape), dtype=torch.float64)
    x[(0, *refuted.input_index)] = 1.0
    layered = F.conv2d(F.conv2d(x, torch.from_numpy(wa), padding=1), torch.from_numpy(wb), padding=1)
    product = (B @ A).subs(values).to_weight()
    collapsed = F.conv2d(x, torch.from_numpy(product.weight), padding=product.padding)
    o, i, j = refuted.output_index
    assert layered[0, o, i, j].item() == float(refuted.lhs_value)
    assert collapsed[0, o, i, j].item() == float(refuted.rhs_value)
    assert refuted.lhs_value != refuted.rhs_value
    # and on the computed region the same network is certified
    assert isinstance(prove_collapse(net, shape), Certificate)


def test_wrong_operator_is_refuted_at_an_interior_position():
    """A perturbed collapsed operator (one coefficient changed) is refuted even where the
    region holds."""
    net = _symbolic_residual_net()
    result = collapse(net, (1, 6, 6))
    op = result.operator
    entry = op.matrix[0][0]
    e, _ = entry.terms()[0]
    wrong_entry = entry + entry.ring.monomial(e, 1)
    matrix = [list(row) for row in op.matrix]
    matrix[0][0] = wrong_entry
    wrong = ConvOperator(op.ring, matrix, op.stride, op.bias, op.upsample)
    refuted = prove_collapse(net, (1, 6, 6), operator=wrong)
    assert isinstance(refuted, Counterexample)
    assert result.region[refuted.output_index[1:]]
    assert refuted.symbolic_difference == -1  # network minus (collapse + z^e)


def test_identity_library_proves_every_entry():
    for identity in LIBRARY:
        result = identity.check()
        assert isinstance(result, Certificate), f"{identity.name}: {result}"
        assert result.compared > 0 and result.difference_terms == 0
        assert identity._repr_latex_().startswith("$$")


def test_noncommuting_channel_matrices_are_refuted_with_concrete_values():
    K1 = ConvOperator.symbolic("p", 2, 2, 2)
    K2 = ConvOperator.symbolic("q", 2, 2, 2)
    refuted = prove(K2 @ K1, K1 @ K2)
    assert isinstance(refuted, Counterexample)
    values = refuted.substitution
    left = (K2 @ K1).subs(values)
    right = (K1 @ K2).subs(values)
    assert left != right
    assert refuted.lhs_value != refuted.rhs_value
    # one channel commutes
    k1, k2 = ConvOperator.symbolic("u", 1, 1, 3), ConvOperator.symbolic("v", 1, 1, 3)
    assert isinstance(prove(k2 @ k1, k1 @ k2, input_shape=(1, 5)), Certificate)


def test_prove_networks_refutes_a_wrong_repvgg_bias():
    """Two networks that differ by a bias: refuted at the constant term."""
    w = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    lhs = Network(2, 1)
    lhs.conv(lhs.input, w, np.array([1.0]), padding=1)
    rhs = Network(2, 1)
    rhs.conv(rhs.input, w, np.array([2.0]), padding=1)
    refuted = prove(lhs, rhs, input_shape=(1, 4, 4))
    assert isinstance(refuted, Counterexample)
    assert refuted.input_index is None and refuted.lhs_value == 1 and refuted.rhs_value == 2


def test_prove_different_rates_needs_an_input_shape():
    K = ConvOperator.symbolic("k", 1, 1, 3)
    D = ConvOperator.identity(K.ring, 1)
    strided = ConvOperator(K.ring, D.matrix, stride=2)
    with pytest.raises(ValueError, match="input_shape"):
        prove(K @ strided, K)
    with pytest.raises(TypeError):
        prove(K, Network(1, 1))
