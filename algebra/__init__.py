"""laurentnet.algebra — exact convolution algebra on sympy's sparse polynomial rings.

Never imports torch.  Public API:

* :class:`LaurentRing`, :func:`laurent_ring`, :class:`LaurentPoly` — Laurent polynomials in
  shift variables over an explicit sympy domain;
* :class:`ConvOperator` — ``down_s ∘ K(z) ∘ up_u + b``, with ``@ + - *``, adjoint, dilation,
  channel split/stack, :func:`block_diag`, PyTorch layouts (:meth:`ConvOperator.from_weight`,
  :meth:`ConvOperator.to_weight`), symbolic weights (:meth:`ConvOperator.symbolic`);
* :func:`apply_operator` — exact application to a finite (or periodic) signal;
* :func:`exact_rational` — floats to rationals without rounding;
* :func:`collapse` runs on python-flint for numeric weights (``backend="auto"``,
  :mod:`algebra.flint_backend`) and on sympy's rings for symbolic ones;
  :func:`sympy_ground_types` says which integers sympy uses (gmpy2 by default);
* :class:`PolyphaseOperator` — linear periodically shift-varying operators (``M`` phases
  of a stride-1 operator): what :func:`collapse` returns for a multirate network with no
  single strided kernel (:class:`MultirateError` is the single-rate refusal it replaces);
* :mod:`algebra.pooling` — PyTorch's average-pooling windows and divisors (``ceil_mode``,
  ``count_include_pad``, ``divisor_override``, adaptive pooling): :func:`pool_output_size`,
  :class:`PoolWindows`, and the operator form :class:`StridedPool`;
* :class:`BasisOperator` — basis convolutions ``W(z) = C · B(z)`` (constant ``C``), exact
  subset bases, and :func:`prove_basis_identity`.
"""
from .ground_types import sympy_ground_types  # first: before anything imports sympy
from .errors import (DependencyError, InvalidInputError, InvalidTypeError, LaurentnetError,
                     UnknownNameError)
from .channels import ChannelIndexError
from .memory import InvalidBudgetError, MemoryBudgetError, memory_limit
from .exact import exact_rational, round_rational, to_domain
from .laurent import LaurentPoly, LaurentRing, laurent_ring
from .layout import TorchLayout, default_ring, operator_from_weight, operator_to_weight
from .operator import ConvOperator, block_diag, hstack, vstack
from .signal import apply_operator, signal_to_polys
from .symbolic_weights import symbolic_operator, weight_symbols

__all__ = [
    "LaurentnetError", "ChannelIndexError", "MemoryBudgetError", "InvalidBudgetError",
    "memory_limit", "LaurentRing", "LaurentPoly", "laurent_ring", "ConvOperator", "block_diag", "vstack",
    "hstack", "TorchLayout", "operator_from_weight", "operator_to_weight", "default_ring",
    "apply_operator", "signal_to_polys", "exact_rational", "round_rational", "to_domain",
    "symbolic_operator",
    "weight_symbols",
    "InvalidInputError", "InvalidTypeError", "UnknownNameError", "DependencyError",
]
from .network import Network, Value, PADDING_MODES
from .operator import MultirateError
from .polyphase import PolyphaseLayout, PolyphaseOperator, polyphase_vstack
from .collapse import CollapseResult, collapse
from .affine_map import AffineMap, collapse_affine

__all__ += ["Network", "Value", "PADDING_MODES", "CollapseResult", "collapse", "AffineMap",
            "collapse_affine", "sympy_ground_types", "MultirateError", "PolyphaseOperator",
            "PolyphaseLayout", "polyphase_vstack"]
from .pooling import PoolWindows, StridedPool, adaptive_axis, avg_pool_axis, pool_output_size

__all__ += ["PoolWindows", "StridedPool", "pool_output_size", "avg_pool_axis", "adaptive_axis"]
from .prove import Certificate, Counterexample, prove, prove_collapse

__all__ += ["Certificate", "Counterexample", "prove", "prove_collapse"]
from .identities import LIBRARY, Identity, prove_library

__all__ += ["LIBRARY", "Identity", "prove_library"]
from .basis import BasisOperator, prove_basis_identity

__all__ += ["BasisOperator", "prove_basis_identity"]
from .structured import (BlockCirculant, Coupling, Dense, Depthwise, Grouped, Lean, Pointwise,
                         STRUCTURES)
from .channel_dft import ChannelDFT, channel_dft

__all__ += ["Coupling", "Dense", "Depthwise", "Pointwise", "Grouped", "Lean", "BlockCirculant",
            "STRUCTURES", "ChannelDFT", "channel_dft"]
