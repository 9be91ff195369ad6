"""The float twins of the structured couplings (numeric/structured.py, numeric/coupling_ops.py).

Independent references: torch's ``nn.Conv2d`` (its own padding modes) with the dense
weight, the exact twin's periodic application (``algebra.apply_operator``), the exact
twin's algebra, and torch's FLOP counter for the multiply-adds of the FFT path.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

from laurentnet import algebra, numeric
from laurentnet.algebra import apply_operator
from laurentnet.numeric import KernelOperator
from laurentnet.numeric.coupling_ops import block_circulant_conv


def _ints(rng, *shape):
    return torch.from_numpy(rng.integers(-3, 4, shape).astype(np.float64))


def _structures(rng, c: int = 4, k: int = 3):
    p = k // 2
    return {
        "dense": numeric.Dense.from_weight(_ints(rng, c, c, k, k), padding=p),
        "depthwise": numeric.Depthwise.from_weight(_ints(rng, c, 1, k, k), padding=p),
        "pointwise": numeric.Pointwise.from_weight(_ints(rng, c, c, 1, 1)),
        "grouped": numeric.Grouped.from_weight(_ints(rng, c, c // 2, k, k), groups=2, padding=p),
        "lean": numeric.Lean.from_weight(_ints(rng, c, 1, k, k), _ints(rng, c, c, 1, 1), padding=p),
        "block_circulant": numeric.BlockCirculant.from_weight(_ints(rng, 2, c // 2, c // 2, k, k),
                                                              padding=p),
    }


def _torch_conv(structure, x, mode):
    """``nn.Conv2d`` with the dense weight (torch's own padding implementation)."""
    layout = structure.dense().to_weight()
    k = layout.weight.shape[-1]
    conv = torch.nn.Conv2d(structure.in_channels, structure.out_channels, k, padding=k // 2,
                           bias=False, padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(layout.weight)
        return conv(x)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["zeros", "circular"]),
       k=st.sampled_from([1, 3, 5]), size=st.tuples(st.integers(5, 8), st.integers(5, 8)))
def test_apply_equals_torch_conv(seed, mode, k, size):
    rng = np.random.default_rng(seed)
    x = torch.randn(2, 4, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    for name, s in _structures(rng, 4, k).items():
        expected = _torch_conv(s, x, mode)
        torch.testing.assert_close(s.apply(x, mode), expected, rtol=1e-12, atol=1e-12, msg=name)
    circ = _structures(rng, 4, k)["block_circulant"]
    torch.testing.assert_close(circ.apply(x, mode, method="direct"), _torch_conv(circ, x, mode))


def test_apply_equals_the_exact_periodic_application():
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, (4, 5, 6)).astype(np.float64)
    for name, s in _structures(rng).items():
        exact = apply_operator(s.to_algebra().dense(), x, periodic=True).astype(np.float64)
        got = s.apply(torch.from_numpy(x)[None], "circular")[0].numpy()
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-11, err_msg=name)


def test_twins_agree_on_structure_counts_and_algebra():
    rng = np.random.default_rng(5)
    for name, s in _structures(rng).items():
        e = s.to_algebra()
        assert type(e).__name__ == type(s).__name__ and e.box == s.box, name
        assert (e.params, e.macs(), e.kernel_size) == (s.params, s.macs(), s.kernel_size), name
        assert numeric.from_algebra(e).allclose(s, 0, 0), name
        pairs = [(s @ s, e @ e), (s + s * 2.0, e + e * 2), (s.adjoint(), e.adjoint())]
        for f, x in pairs:
            assert type(f).__name__ == type(x).__name__, name
            assert f.dense().allclose(KernelOperator.from_algebra(x.dense()), 0, 1e-9), name
        assert numeric.STRUCTURES[name] is type(s) and algebra.STRUCTURES[name] is type(e)


def test_both_twins_have_the_coupling_members():
    from laurentnet.algebra.structured import COUPLING_MEMBERS
    for name, s in _structures(np.random.default_rng(4)).items():
        for twin in (s, s.to_algebra()):
            missing = [m for m in COUPLING_MEMBERS if not hasattr(twin, m)]
            assert not missing, f"{type(twin).__module__}.{type(twin).__name__} lacks {missing}"


def test_from_dense_tolerance_and_refusal():
    rng = np.random.default_rng(2)
    circ = _structures(rng)["block_circulant"]
    noisy = KernelOperator(circ.dense().coeffs + 1e-10 * torch.randn(circ.dense().coeffs.shape,
                                                                      dtype=torch.float64),
                           circ.dense().low)
    with pytest.raises(numeric.InvalidInputError, match="not block-circulant"):
        numeric.BlockCirculant.from_dense(noisy, 2)
    assert numeric.BlockCirculant.from_dense(noisy, 2, atol=1e-8).allclose(circ, 0, 1e-8)
    with pytest.raises(numeric.InvalidInputError, match="not depthwise"):
        numeric.Depthwise.from_dense(circ.dense())


def test_numeric_dft_diagonalizes_and_matches_the_exact_spectrum():
    rng = np.random.default_rng(9)
    circ = numeric.BlockCirculant.from_weight(_ints(rng, 5, 2, 1, 3), padding=1)
    dft = numeric.channel_dft(circ)
    assert dft.check() < 1e-12
    exact = algebra.channel_dft(circ.to_algebra())
    to_sympy = exact.spectrum[0].ring.domain.to_sympy
    for j, block in enumerate(exact.spectrum):
        for o in range(2):
            entry = block.matrix[o][0]
            values = [complex(sympy.N(to_sympy(entry.coeff(e)))) for e in (-1, 0, 1)]
            np.testing.assert_allclose(values, dft.spectrum[j, o, 0].numpy(), atol=1e-12)


@pytest.mark.parametrize("m,b", [(2, 2), (4, 2), (8, 1), (5, 3)])
def test_fft_path_multiply_adds_equal_torch_flop_count(m, b):
    """FlopCounterMode counts 2 flops per multiply-add of every conv; the FFTs are not
    convolutions, and neither side counts them."""
    w = torch.randn(m, b, b, 3, 3, dtype=torch.float64)
    circ = numeric.BlockCirculant.from_weight(w, padding=1)
    x = torch.randn(1, m * b, 6, 5, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        block_circulant_conv(x, w, (1, 1))
    assert counter.get_total_flops() == 2 * circ.fft_macs_per_position * 30
    with FlopCounterMode(display=False) as counter:
        circ.apply(x, method="direct")
    assert counter.get_total_flops() == 2 * circ.macs((6, 5))
