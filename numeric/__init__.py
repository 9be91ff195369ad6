"""laurentnet.numeric — the convolution algebra in floating point, at real sizes."""
from .memory import (InvalidBudgetError, MemoryBudgetError, check_budget, estimate_bytes,
                     memory_budget, memory_limit)
from ..algebra.errors import InvalidInputError, InvalidTypeError, LaurentnetError
from .affine import (AffineMap, AffineModule, NotAffineError, affine_product, check_affine,
                     extract_affine)
from .kernels import KernelOperator, block_diag, vstack
from .polymatmul import polymatmul
from .spectrum import (LipschitzBound, fft_multiplier, implicit_solve, lipschitz_bound,
                       operator_norm, singular_values, symbol)
from .cost import CostReport, Machine, MethodCost, estimate_costs
from .evaluator import DirectConv, OperatorEvaluator, conv_direct, conv_fft, conv_window, dense_matrix
from .network_torch import NetworkModule, network_forward
from .network_collapse import NumericCollapse, affine_numeric, collapse_numeric

__all__ = [
    "MemoryBudgetError", "InvalidBudgetError", "check_budget", "estimate_bytes", "memory_budget",
    "memory_limit",
    "AffineMap", "AffineModule", "NotAffineError", "affine_product", "check_affine", "extract_affine",
    "KernelOperator", "block_diag", "polymatmul", "vstack",
    "LipschitzBound", "fft_multiplier", "implicit_solve", "lipschitz_bound", "operator_norm",
    "singular_values", "symbol",
    "CostReport", "Machine", "MethodCost", "estimate_costs",
    "DirectConv", "OperatorEvaluator", "conv_direct", "conv_fft", "conv_window", "dense_matrix",
    "NetworkModule", "network_forward", "NumericCollapse", "affine_numeric", "collapse_numeric",
    "LaurentnetError", "InvalidInputError", "InvalidTypeError",
]
from .basis import BasisOperator, Factorization, MatrixFactors, energy_rank, factorize

__all__ += ["BasisOperator", "Factorization", "MatrixFactors", "energy_rank", "factorize"]
from .structured import (BlockCirculant, ChannelDFT, Coupling, Dense, Depthwise, Grouped, Lean,
                         Pointwise, STRUCTURES, channel_dft, from_algebra)

__all__ += ["Coupling", "Dense", "Depthwise", "Pointwise", "Grouped", "Lean", "BlockCirculant",
            "STRUCTURES", "ChannelDFT", "channel_dft", "from_algebra"]
from .border import BorderPiece, BorderPlan, border_plan, interior_box, layer_macs, strip_box
from .cost import border_corrected_seconds

__all__ += ["BorderPiece", "BorderPlan", "border_plan", "interior_box", "layer_macs",
            "strip_box", "border_corrected_seconds"]
from .polyphase import PolyphaseOperator, as_polyphase, polyphase_vstack
from .evaluator import zero_insert

__all__ += ["PolyphaseOperator", "as_polyphase", "polyphase_vstack", "zero_insert"]
