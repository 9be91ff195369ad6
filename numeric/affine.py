"""Fixed-size affine-map extraction: any affine torch callable as ``f(X) = W X + B``.

For an *affine* ``f`` (convolutions, skips, eval-mode batch norm, average pooling, linear
layers, ... and no nonlinearity) mapping a batch ``(N, *input_shape) -> (N, *output_shape)``,

    f(x) = W x + B,   W ∈ R^{n_out × n_in},  B = f(0) ∈ R^{n_out},

with ``x`` flattened.  ``W`` is the Jacobian of ``f`` (the same at every point), found
without materialising anything bigger than ``W``:

* ``vjp``  — rows ``W^T e_i`` by vector–Jacobian products (the adjoint network run on the
  unit cotangents), one forward pass plus ``n_out`` batched backward passes; cheapest when
  ``n_out < n_in`` (a classifier: 10 rows of a 10 × 784 map);
* ``jvp``  — columns ``W e_j`` by Jacobian–vector products (forward-mode AD on the unit
  tangents), ``n_in`` batched tangent passes; cheapest when ``n_in <= n_out``;
* ``identity_batch`` — columns ``f(e_j) - f(0)`` by pushing an identity batch through the
  network (the obvious method, RepMLP-style; loses digits to cancellation when ``|B|``
  is large).

The batched passes use ``torch.func.vmap`` over the unit vectors in chunks.  The map is
computed in float64 by default with float64 *copies* of a module's weights (the caller's
module is never touched).  The memory guard (:mod:`numeric.memory`) is consulted before
``W`` is allocated.

Speed: ATen's float64 CPU convolution loops over the batch with one skinny GEMM per
image, which is slow exactly where the adjoint passes spend their time (deep stages at
4×4 or 7×7 resolution, where ``vmap`` folds the ten cotangents into the batch).  While
extracting, :class:`~numeric.gemm_conv.GemmConvMode` routes such convolutions through
:func:`~numeric.gemm_conv.gemm_conv2d` (one GEMM with batch and positions in the rows) and
eval-mode batch norm through :func:`~numeric.gemm_conv.eval_batch_norm` (one multiply-add).  Both are plain torch ops, so
autograd and ``torch.func`` see through them; ``gemm_conv=False`` turns this off.
The cost is one forward at batch 1 (for ``B = f(0)`` and the tape) plus the ``n_out``
adjoints as ONE batched backward; ``benchmarks/peers_affine.py`` prints it against
``torch.func.jacrev`` and over the FLOP floor ``(1 + n_out) F / (dgemm peak)``.

Applying the map (:class:`AffineModule`, :func:`apply_affine`, the ``'gemm'`` kernel
evaluator) is one GEMM, :func:`affine_product`, which puts ``W`` on the left
(``(W X^T + B 1^T)^T``) when there are few outputs — the orientation the GEMM runs fastest
for a classifier's 10 × 784 map — and has no checks beyond dtype, device and shape on the
hot path.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..algebra.errors import InvalidInputError, InvalidTypeError, LaurentnetError
from ..algebra.validate import bool_arg, describe
from .inputs import as_real_tensor
from .gemm_conv import GemmConvMode, eval_batch_norm, gemm_conv2d
from .memory import check_budget, estimate_bytes, format_bytes

__all__ = ["AffineMap", "AffineModule", "NotAffineError", "extract_affine", "check_affine",
           "as_function", "clear_workspaces", "apply_affine", "affine_product", "gemm_conv2d",
           "eval_batch_norm",
           "GemmConvMode", "METHODS"]

METHODS = ("auto", "vjp", "jvp", "identity_batch")

#: module types that make a network nonlinear (named in the error of :func:`check_affine`,
#: and refused up front by :func:`extract_affine`).  Dropout is not here: in eval mode (the
#: only mode extraction accepts) it is the identity.
_NONLINEAR_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Softmax, nn.LogSoftmax, nn.Threshold,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)


class NotAffineError(LaurentnetError, ValueError):
    """``f`` failed the affinity test ``f(a x + b y) = a f(x) + b f(y) - (a + b - 1) f(0)``."""


@dataclass
class AffineMap:
    """``f(X) = W X + B`` on flattened inputs, with how it was found.

    ``W``: (n_out, n_in); ``B``: (n_out,); ``input_shape``/``output_shape`` exclude the batch.
    ``passes``: batched evaluations of the network (forward, backward or tangent) used;
    ``chunks``: how many of them carried unit vectors; ``seconds``: wall time.
    """

    W: torch.Tensor
    B: torch.Tensor
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    method: str
    passes: int
    chunks: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_in(self) -> int:
        return self.W.shape[1]

    @property
    def n_out(self) -> int:
        return self.W.shape[0]

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Apply to a batch: ``X (N, *input_shape) -> X_flat @ W^T + B -> (N, *output_shape)``."""
        return apply_affine(self.W, self.B, X, self.output_shape, self.input_shape)

    def apply(self, x: Any) -> torch.Tensor:
        """Apply to one input of ``input_shape`` (the twin of
        :meth:`laurentnet.algebra.AffineMap.apply`): ``self(x[None])[0]``."""
        x = as_real_tensor(x, "the input")
        if tuple(x.shape) != tuple(self.input_shape):
            raise InvalidInputError(f"expected one input of shape {self.input_shape}, got "
                                    f"{tuple(x.shape)} (call the map itself on a batch)")
        return self(x[None])[0]

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> "AffineMap":
        """A copy with ``W`` and ``B`` converted (e.g. to float32 for deployment)."""
        W, B = self.W.to(device=device, dtype=dtype), self.B.to(device=device, dtype=dtype)
        return AffineMap(W, B,
                         self.input_shape, self.output_shape, self.method, self.passes, self.chunks,
                         self.seconds, dict(self.info))

    def to_module(self, dtype: torch.dtype | None = torch.float32) -> "AffineModule":
        """An ``nn.Module`` computing the map (weights cast to ``dtype``; None keeps them)."""
        return AffineModule(self.W, self.B, self.input_shape, self.output_shape, dtype=dtype)


#: Orientation of the product ``X W^T + B`` (measured single-threaded with MKL, float32 and
#: float64, ``benchmarks/peers_affine.py``): with at most ``_FEW_OUTPUTS`` outputs and a batch
#: of at least ``_MIN_BATCH``, ``(W X^T + B 1^T)^T`` — ``W`` as the left operand, as stored —
#: runs ~1.5-2x faster than ``addmm(B, X, W^T)`` (GEMM kernels starve on an output only
#: ``n_out`` columns wide); elsewhere ``F.linear`` is as fast or faster.
_FEW_OUTPUTS, _MIN_BATCH = 32, 32


def affine_product(X: torch.Tensor, W: torch.Tensor, B: torch.Tensor | None = None) -> torch.Tensor:
    """``Y = X W^T + B`` for ``X (N, n_in)``, ``W (n_out, n_in)``, ``B (n_out,)`` (or None):
    one GEMM in the faster orientation (``_FEW_OUTPUTS``), ``Y`` contiguous.  No checks:
    the caller has matched dtypes, devices and shapes.  A symbolic batch (``torch.export``
    with a dynamic batch) takes ``F.linear``, so no guard on the batch size is recorded."""
    n = X.shape[0]
    if type(n) is int and n >= _MIN_BATCH and W.shape[0] <= _FEW_OUTPUTS:
        if B is None:
            return torch.mm(W, X.t()).t().contiguous()
        return torch.addmm(B.unsqueeze(1), W, X.t()).t().contiguous()
    return F.linear(X, W, B)


def apply_affine(W: torch.Tensor, B: torch.Tensor, X: Any,
                 output_shape: Sequence[int] | None = None,
                 input_shape: Sequence[int] | None = None) -> torch.Tensor:
    """``Y = X_flat W^T + B`` (one GEMM: :func:`affine_product`), reshaped to
    ``(N, *output_shape)``.

    ``X`` may be a tensor or an array (numpy); it is cast to ``W``'s dtype and device.
    Given ``input_shape``, ``X`` must have shape ``(N, *input_shape)`` exactly."""
    X = as_real_tensor(X, "the input")
    if input_shape is not None:
        if X.dim() == 0 or tuple(X.shape[1:]) != tuple(input_shape):
            raise InvalidInputError(f"input of shape {tuple(X.shape)}: expected (batch, "
                                    f"{', '.join(map(str, input_shape))})")
    elif X.dim() == 0 or X[0].numel() != W.shape[1]:
        raise InvalidInputError(f"input of shape {tuple(X.shape)} does not flatten to batches of "
                                f"{W.shape[1]} (the map's input size)")
    if X.dtype != W.dtype or X.device != W.device:
        X = X.to(dtype=W.dtype, device=W.device)
    Y = affine_product(X.reshape(X.shape[0], W.shape[1]), W, B)
    return Y if output_shape is None else Y.reshape(X.shape[0], *output_shape)


class AffineModule(nn.Module):
    """The collapsed network as a module: flatten, one GEMM (:func:`affine_product`),
    unflatten — ``Y = X_flat W^T + B``.

    ``weight`` (n_out, n_in), row-major (the left operand of the product, as the GEMM wants
    it), and ``bias`` are frozen parameters, so the state dict saves and loads with plain
    torch; the shapes are constructor arguments.  The hot path (a tensor of the module's
    dtype and device, of shape ``(N, *input_shape)``) runs three cheap attribute checks and
    the product; anything else (numpy, another dtype, a wrong shape) goes through
    :func:`apply_affine`, which casts or raises.  There is no finiteness scan in ``forward``.
    """

    def __init__(self, W: torch.Tensor, B: torch.Tensor, input_shape: Sequence[int],
                 output_shape: Sequence[int], dtype: torch.dtype | None = torch.float32):
        super().__init__()
        dt = W.dtype if dtype is None else dtype
        self.weight = nn.Parameter(W.detach().to(dt).clone().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(B.detach().to(dt).clone().contiguous(), requires_grad=False)
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        W = self.weight
        if isinstance(X, torch.Tensor) and X.dtype == W.dtype and X.device == W.device \
                and X.shape[1:] == self.input_shape:
            Y = affine_product(X.reshape(X.shape[0], W.shape[1]), W, self.bias)
            return Y if len(self.output_shape) == 1 else Y.reshape(X.shape[0], *self.output_shape)
        return apply_affine(W, self.bias, X, self.output_shape, self.input_shape)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, output_shape={self.output_shape}, dtype={self.weight.dtype}"


#: Extractions run one at a time: torch's forward-AD levels and functorch's transform stack
#: are process-global, and two concurrent ``jvp`` extractions were seen to return W = 0
#: without an error.  Serialising them is correct and costs nothing for one caller.
_EXTRACTION_LOCK = threading.RLock()

#: float64 (or other dtype) copies of module weights, reused across extractions of the same
#: module: re-copying values into warm memory costs ~1/8 of fresh allocations, which the
#: kernel must page in (~100 ms for ResNet-34).  Entries die with their module.
_WORKSPACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def clear_workspaces() -> None:
    """Free the cached weight copies kept by :func:`as_function` (``workspace=True``)."""
    _WORKSPACES.clear()


def as_function(f: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
                dtype: torch.dtype | None = torch.float64, device: Any = None,
                workspace: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f`` as a pure function of its input, evaluated in ``dtype`` (and on ``device``).

    A module is run through ``torch.func.functional_call`` with its parameters and buffers
    cast to ``dtype`` (floating ones), moved to ``device`` and detached.  The casts are
    copies (the caller's module is never mutated, and no gradients with respect to weights
    are recorded); with ``workspace`` the copies live in buffers kept per module (weakly)
    and refreshed on every call, so repeated extractions skip the page faults of fresh
    memory (not thread-safe for one module; :func:`clear_workspaces` frees them).  A module
    in training mode is refused: batch norm would use batch statistics and dropout is
    random.  A plain function is returned unchanged (it must accept inputs of ``dtype``).
    """
    if not isinstance(f, nn.Module):
        if not callable(f):
            raise InvalidTypeError(f"f must be an nn.Module or a callable, got {type(f).__name__}")
        return f
    if any(m.training for m in f.modules()):
        raise InvalidInputError(f"{type(f).__name__} is in training mode (batch norm would use batch "
                                "statistics); call .eval() before extracting its affine map")
    cache: dict = _WORKSPACES.setdefault(f, {}) if workspace else {}
    state: dict[str, torch.Tensor] = {}
    for name, t in list(f.named_parameters()) + list(f.named_buffers()):
        t = t.detach()
        cast = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        dev = t.device if device is None else torch.device(device)
        if t.dtype == cast and t.device == dev:
            state[name] = t  # already right: an alias (functional_call does not write to it)
            continue
        buf = cache.get((name, cast, dev))
        if buf is None or buf.shape != t.shape:
            buf = torch.empty(t.shape, dtype=cast, device=dev)
            cache[(name, cast, dev)] = buf
        state[name] = buf.copy_(t)
    module = f

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, state, (x,), tie_weights=False, strict=False)

    return fn


def _default_chunk(n_rows: int, n_vec: int, itemsize: int) -> int:
    """Chunk of unit vectors per batched pass: all of them when few, else ~64 MiB of vectors."""
    per = max(1, (64 * 2**20) // max(1, n_vec * itemsize))
    return max(1, min(n_rows, 256, per))


def _rel_violation(lhs: torch.Tensor, rhs: torch.Tensor, *terms: torch.Tensor) -> float:
    """``max|lhs - rhs| / max(max|t| over lhs, terms)`` (0 when everything is 0)."""
    scale = max(float(t.abs().max()) if t.numel() else 0.0 for t in (lhs, *terms))
    err = float((lhs - rhs).abs().max()) if lhs.numel() else 0.0
    return 0.0 if scale == 0.0 else err / scale


def _nonlinear_modules(f: Any) -> list[str]:
    """Names of submodules of a known nonlinear type (for the error message)."""
    if not isinstance(f, nn.Module):
        return []
    return [f"{name or '<root>'} ({type(m).__name__})" for name, m in f.named_modules()
            if isinstance(m, _NONLINEAR_TYPES)]


@torch.no_grad()
def check_affine(f: Callable[[torch.Tensor], torch.Tensor] | nn.Module, input_shape: Sequence[int], *,
                 dtype: torch.dtype = torch.float64, device: Any = None, samples: int = 2,
                 rtol: float | None = None, generator: torch.Generator | None = None) -> float:
    """Test ``f(a x + b y) = a f(x) + b f(y) - (a + b - 1) f(0)`` on random ``x, y, a, b``.

    The identity holds for every affine map and fails for a nonlinearity (ReLU, max
    pooling, training-mode batch norm, ...) at almost every random point.  All points go
    through ``f`` in one batch.  Returns the worst relative violation; raises
    :class:`NotAffineError` when it exceeds ``rtol`` (default ``sqrt(eps)`` of ``dtype``,
    far above the round-off of a deep affine network, far below a ReLU's effect).
    """
    input_shape = tuple(int(s) for s in input_shape)
    fn = as_function(f, dtype, device)
    tol = math.sqrt(torch.finfo(dtype).eps) if rtol is None else float(rtol)
    g = generator if generator is not None else torch.Generator().manual_seed(20240807)
    x = torch.randn(samples, *input_shape, generator=g, dtype=dtype).to(device)
    y = torch.randn(samples, *input_shape, generator=g, dtype=dtype).to(device)
    ab = (0.5 + 1.5 * torch.rand(2, samples, generator=g, dtype=dtype)).to(device)
    a, b = (v.reshape(samples, *([1] * len(input_shape))) for v in ab)
    zero = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    out = fn(torch.cat([a * x + b * y, x, y, zero]))
    f_mix, f_x, f_y, f_0 = out[:samples], out[samples:2 * samples], out[2 * samples:3 * samples], out[-1:]
    ao, bo = (v.reshape(samples, *([1] * (out.dim() - 1))) for v in ab)
    rhs = ao * f_x + bo * f_y - (ao + bo - 1) * f_0
    worst = _rel_violation(f_mix, rhs, ao * f_x, bo * f_y, (ao + bo - 1) * f_0)
    if not worst <= tol:  # also catches NaN
        found = _nonlinear_modules(f)
        hint = (f"; nonlinear modules found: {', '.join(found[:5])}"
                + (f" and {len(found) - 5} more" if len(found) > 5 else "")) if found else \
            " (a nonlinearity such as ReLU or max pooling, or a data-dependent operation)"
        raise NotAffineError(
            f"f is not affine: f(a·x+b·y) differs from a·f(x)+b·f(y)-(a+b-1)·f(0) by a relative "
            f"{worst:.3g} (tolerance {tol:.1g}){hint}. Only a network without nonlinearities "
            "collapses to one affine map; collapse its linear segments instead.")
    return worst


def extract_affine(f: Callable[[torch.Tensor], torch.Tensor] | nn.Module, input_shape: Sequence[int], *,
                   method: str = "auto", dtype: torch.dtype = torch.float64, device: Any = None,
                   chunk_size: int | None = None, check: bool = False,
                   budget: int | None = None, gemm_conv: bool = True,
                   refuse_nonlinear_modules: bool = True) -> AffineMap:
    """The affine map ``f(x) = W x + B`` of an affine ``f`` on inputs of shape ``input_shape``.

    ``f`` maps ``(N, *input_shape) -> (N, *output_shape)`` treating batch entries independently
    (an ``nn.Module`` must be in eval mode; it is evaluated on a ``dtype`` copy of its
    weights).  ``method``: ``"vjp"`` (rows by vector–Jacobian products), ``"jvp"``
    (columns by Jacobian–vector products), ``"identity_batch"`` (columns
    ``f(e_j) - f(0)``), or ``"auto"``: vjp when ``n_out < n_in``, else jvp.
    ``chunk_size`` unit vectors go through each batched pass (default: all of them up to
    256).  ``check=True`` first runs :func:`check_affine`.  The memory guard refuses
    (``MemoryBudgetError``, nothing allocated) when ``W`` plus one chunk of unit vectors and
    results would exceed ``budget`` (default ``$LAURENTNET_MEMORY_BUDGET`` or half the RAM).

    Only ``B = f(0)`` and one linearisation forward pass at batch 1 run before the guard.

    Refused up front: a module containing a known nonlinear module (ReLU, max pooling,
    layer norm, ...: :class:`NotAffineError` naming them, even with ``check=False``; pass
    ``refuse_nonlinear_modules=False`` when such a submodule is defined but not used),
    NaN/Inf weights or results (ValueError), a non-floating ``dtype`` (TypeError) and an
    ``input_shape`` that is not positive integers or on which ``f`` fails (ValueError).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidInputError(f"method {method!r} not in {METHODS}")
    check = bool_arg(check, "check")
    device = _check_device(device)
    gemm_conv = bool_arg(gemm_conv, "gemm_conv")
    refuse_nonlinear_modules = bool_arg(refuse_nonlinear_modules, "refuse_nonlinear_modules")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise InvalidTypeError(f"chunk_size must be an int, got {chunk_size!r}")
    if chunk_size is not None and chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be >= 1, got {chunk_size}")
    input_shape = _check_in_shape(input_shape)
    _check_dtype(dtype)
    if not isinstance(f, nn.Module) and not callable(f):
        raise InvalidTypeError(f"f must be an nn.Module or a callable, got {type(f).__name__}")
    if refuse_nonlinear_modules:
        found = _nonlinear_modules(f)
        if found:
            raise NotAffineError(
                f"f contains nonlinear modules: {', '.join(found[:5])}"
                + (f" and {len(found) - 5} more" if len(found) > 5 else "")
                + ". Only a network without nonlinearities collapses to one affine map; "
                "collapse its linear segments instead (or pass refuse_nonlinear_modules=False "
                "if these modules are never called).")
    mode = GemmConvMode() if gemm_conv else contextlib.nullcontext()
    with _EXTRACTION_LOCK, torch.inference_mode(False), torch.enable_grad(), mode, \
            warnings.catch_warnings():
        # torch's own noise: functorch ops without a batching rule (a loop, still
        # correct) and the deprecated torch.jit.script inside forward-AD decompositions
        warnings.filterwarnings("ignore", message="There is a performance drop")
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        return _extract(f, input_shape, method, dtype, device, chunk_size, check, budget)


def _check_device(device: Any) -> torch.device | None:
    """``None`` or a usable torch device (``'cpu'``, ``torch.device('cpu')``, ...)."""
    if device is None:
        return None
    if isinstance(device, (bool, np.bool_)) or not isinstance(device, (str, int, torch.device)):
        raise InvalidTypeError(f"device must be None, a device name such as 'cpu' or a "
                               f"torch.device, got {describe(device)}")
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise InvalidInputError(f"device {describe(device)} is not usable here ({detail})") from None
    return device


def _check_in_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (the input shape without the batch)."""
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    try:
        items = tuple(input_shape)
    except TypeError:
        raise InvalidTypeError(f"input_shape must be a sequence of positive ints (the input shape "
                               f"without the batch), got {input_shape!r}") from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in items):
        raise InvalidTypeError(f"input_shape must be a sequence of positive ints (the input shape "
                               f"without the batch), got {input_shape!r}")
    if not items or any(v <= 0 for v in items):
        raise InvalidInputError(f"input_shape must be a non-empty sequence of positive ints, got {items}")
    return tuple(int(v) for v in items)


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype):
        raise InvalidTypeError(f"dtype must be a torch floating dtype (e.g. torch.float64), got {dtype!r}")
    if dtype.is_complex or not dtype.is_floating_point:
        raise InvalidTypeError(f"dtype must be floating point (torch.float64 or torch.float32), got {dtype}")


def _non_finite(f: Any, what: str) -> ValueError:
    """The error for a non-finite ``what``, naming the module's non-finite weights if any
    (scanned only on this failure path, so extraction pays nothing for it)."""
    bad = []
    if isinstance(f, nn.Module):
        bad = [name for name, t in list(f.named_parameters()) + list(f.named_buffers())
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    cause = (f"NaN/Inf in the module's weights: {', '.join(bad[:5])}"
             + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")) if bad \
        else "NaN/Inf produced by f (an overflow, or non-finite constants)"
    return InvalidInputError(f"{what} has non-finite entries ({cause}); NaN/Inf are refused")


def _check_output(out: Any, input_shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise InvalidTypeError(f"f must return a torch.Tensor, got {type(out).__name__} for an input "
                               f"of shape (1, {', '.join(map(str, input_shape))})")
    if not out.is_floating_point():
        raise InvalidTypeError(f"f must return a floating-point tensor, got {out.dtype} (an integer "
                               "or boolean output is not an affine function of its input)")
    return out


def _extract(f: Callable[[torch.Tensor], torch.Tensor] | nn.Module, input_shape: Sequence[int],
             method: str, dtype: torch.dtype, device: Any, chunk_size: int | None, check: bool,
             budget: int | None) -> AffineMap:
    """The body of :func:`extract_affine` (arguments already validated)."""
    t0 = time.perf_counter()
    n_in = math.prod(input_shape)
    check_budget(estimate_bytes((n_in,), dtype), f"the input of shape {input_shape}", budget)
    if check:
        check_affine(f, input_shape, dtype=dtype, device=device)
    fn = as_function(f, dtype, device)
    x0 = torch.zeros(1, *input_shape, dtype=dtype, device=device)

    vjp_fn = None

    def first(x: torch.Tensor) -> torch.Tensor:
        return _check_output(fn(x), input_shape)

    try:
        if method in ("auto", "vjp"):
            out0, vjp_fn = torch.func.vjp(first, x0)
        else:
            with torch.no_grad():
                out0 = first(x0)
    except (RuntimeError, IndexError, AttributeError, NotImplementedError) as exc:
        raise InvalidInputError(f"evaluating f on an input of shape (1, {', '.join(map(str, input_shape))}) "
                                f"in {str(dtype).removeprefix('torch.')} failed: {exc}") from exc
    out0 = out0.detach()
    if not bool(torch.isfinite(out0).all()):
        raise _non_finite(f, "f(0) = B")
    if out0.dim() == 0 or out0.shape[0] != 1:
        raise InvalidInputError(f"f must keep the batch dimension: (1, *{input_shape}) gave {tuple(out0.shape)}")
    output_shape = tuple(out0.shape[1:])
    n_out = math.prod(output_shape)
    if method == "auto":
        method = "vjp" if n_out < n_in else "jvp"
    if method != "vjp":
        vjp_fn = None  # free the saved activations
    n_rows = n_out if method == "vjp" else n_in
    vec_len = n_out if method == "vjp" else n_in
    res_len = n_in if method == "vjp" else n_out
    itemsize = torch.empty((), dtype=dtype).element_size()
    chunk = min(n_rows, chunk_size or _default_chunk(n_rows, vec_len + res_len, itemsize))
    need = estimate_bytes((n_out, n_in), dtype) + estimate_bytes((chunk, vec_len + res_len), dtype)
    check_budget(need, f"the {n_out} x {n_in} affine map W (+ one chunk of {chunk} unit vectors "
                 f"by {method})", budget)

    t_setup = time.perf_counter() - t0
    B = out0.reshape(n_out).clone()
    W = torch.empty(n_out, n_in, dtype=dtype, device=device)
    passes, chunks = 1, 0
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        idx = torch.arange(stop - start, device=device)
        E = torch.zeros(stop - start, n_rows, dtype=dtype, device=device)
        E[idx, start + idx] = 1.0
        if method == "vjp":
            (rows,) = torch.func.vmap(vjp_fn)(E.reshape(-1, 1, *output_shape))
            W[start:stop] = rows.reshape(stop - start, n_in)
        elif method == "jvp":
            def column(t: torch.Tensor) -> torch.Tensor:
                return torch.func.jvp(fn, (x0,), (t,))[1]
            with torch.no_grad():
                cols = torch.func.vmap(column)(E.reshape(-1, 1, *input_shape))
            W[:, start:stop] = cols.reshape(stop - start, n_out).t()
        else:
            with torch.no_grad():
                cols = fn(E.reshape(-1, *input_shape)).reshape(stop - start, n_out) - B
            W[:, start:stop] = cols.t()
        del E
        passes += 1
        chunks += 1
    if not bool(torch.isfinite(W).all()):
        raise _non_finite(f, f"the extracted {n_out} x {n_in} map W")
    seconds = time.perf_counter() - t0
    info = {"chunk_size": chunk, "dtype": str(dtype).removeprefix("torch."),
            "W_bytes": format_bytes(estimate_bytes((n_out, n_in), dtype)),
            "seconds_setup": t_setup, "seconds_passes": seconds - t_setup}
    return AffineMap(W, B, input_shape, output_shape, method, passes, chunks, seconds, info)
