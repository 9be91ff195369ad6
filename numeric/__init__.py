"""laurentnet.numeric — the convolution algebra in floating point, at real sizes."""
from .memory import MemoryBudgetError, check_budget, estimate_bytes, memory_budget

from .affine import AffineMap, AffineModule, NotAffineError, check_affine, extract_affine
from .kernels import KernelOperator, block_diag, vstack
from .polymatmul import polymatmul
from .spectrum import (LipschitzBound, fft_multiplier, implicit_solve, lipschitz_bound,
                       operator_norm, singular_values, symbol)
from .cost import CostReport, Machine, MethodCost, estimate_costs
from .evaluator import DirectConv, OperatorEvaluator, conv_direct, conv_fft, conv_window, dense_matrix
from .network_torch import NetworkModule, network_forward
from .network_collapse import NumericCollapse, affine_numeric, collapse_numeric

__all__ = [
    "MemoryBudgetError", "check_budget", "estimate_bytes", "memory_budget",
    "AffineMap", "AffineModule", "NotAffineError", "check_affine", "extract_affine",
    "KernelOperator", "block_diag", "polymatmul", "vstack",
    "LipschitzBound", "fft_multiplier", "implicit_solve", "lipschitz_bound", "operator_norm",
    "singular_values", "symbol",
    "CostReport", "Machine", "MethodCost", "estimate_costs",
    "DirectConv", "OperatorEvaluator", "conv_direct", "conv_fft", "conv_window", "dense_matrix",
    "NetworkModule", "network_forward", "NumericCollapse", "affine_numeric", "collapse_numeric",
]
