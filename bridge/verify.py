"""Does the converted model predict what the original predicts?

``verify(original, converted, example_input)`` runs both on the same inputs — seeded random
ones with the example's shape (batch free) and the user's data if given — and compares the
converted model's output (in its own dtype) with a **float64 reference of the original**
(a deep copy cast to float64, so the reference is not the original's own float32 round-off):

    max_abs = max |y_converted - y_ref|,      max_rel = max_abs / max |y_ref|,

restricted to the exact region when the conversion holds only there.  The tolerance is
dtype-aware: ``1000 eps(dtype)`` (``1.2e-4`` for float32, ``2.2e-13`` for float64), or ten
times the original model's own error in that dtype when that is larger (a deep float32
network loses more digits than one layer; the converted model must not lose many more).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..algebra.errors import InvalidInputError, InvalidTypeError, LaurentnetError
from ..algebra.validate import (describe, instance_arg, int_arg, optional_int_arg,
                                optional_str_arg, shape_arg)

__all__ = ["Verification", "verify", "tolerance_for", "random_inputs"]


def tolerance_for(dtype: torch.dtype, original_rel_error: float = 0.0) -> float:
    """``max(1000 eps(dtype), 10 * original_rel_error)``: the relative error accepted."""
    return max(1000.0 * torch.finfo(dtype).eps, 10.0 * float(original_rel_error))


def random_inputs(input_shape: Sequence[int], count: int = 8, *, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` seeded standard-normal inputs of shape ``input_shape`` (no batch axis)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, *input_shape, generator=g, dtype=torch.float64).to(dtype)


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`.

    ``max_abs_error``/``max_rel_error``: converted vs the float64 reference (on ``where``);
    ``original_rel_error``: the original model in ``dtype`` vs the same reference;
    ``ok``: ``max_rel_error <= tolerance`` and the output shapes agree."""
    ok: bool
    max_abs_error: float
    max_rel_error: float
    original_rel_error: float
    tolerance: float
    dtype: str
    reference: str
    inputs: int
    where: str
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [("result", "OK" if self.ok else f"FAILED{': ' + self.problem if self.problem else ''}"),
                ("inputs", str(self.inputs)), ("compared", self.where),
                ("reference", self.reference), ("converted dtype", self.dtype),
                ("max abs error", f"{self.max_abs_error:.3e}"),
                ("max rel error", f"{self.max_rel_error:.3e}  (tolerance {self.tolerance:.1e})"),
                ("original's own rel error", f"{self.original_rel_error:.3e}")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def __str__(self) -> str:
        return self.table()


def _module_dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _in_eval_mode(module: nn.Module) -> nn.Module:
    """``module.eval()``; a ``torch.export`` program's module refuses ``eval()`` (it is
    already fixed in the mode it was exported in, which the safe loader checks)."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def _run(module: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``module(x)``; for a program exported with a fixed batch size, in chunks of that
    size (the last chunk padded by repeating its first input, and cropped)."""
    if batch_size is None or x.shape[0] == batch_size:
        return module(x)
    outs = []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
            chunk = torch.cat([chunk, chunk[:1].expand(batch_size - n, *chunk.shape[1:])])
        outs.append(module(chunk)[:n])
    return torch.cat(outs)


def _float64_reference(original: nn.Module, x: torch.Tensor, batch_size: int | None = None
                       ) -> tuple[torch.Tensor, str]:
    """The original run on a float64 copy of itself, or (when it cannot run in float64,
    e.g. an exported graph with float32 constants) in its own dtype, said so."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # copying an exported program's module trips torch's own pytree deprecation
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            return _run(copy.deepcopy(original).double(), x.double(), batch_size), \
                "the original in float64"
    except (RuntimeError, TypeError, ValueError):
        dtype = _module_dtype(original)
        with torch.no_grad():
            return _run(original, x.to(dtype), batch_size).double(), \
                f"the original in {str(dtype).removeprefix('torch.')} (it does not run in float64)"


def _max_errors(y: torch.Tensor, ref: torch.Tensor, mask: np.ndarray | None
                ) -> tuple[float, float]:
    diff = (y.double() - ref).abs()
    scale = ref.abs()
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.bool).expand_as(diff)
        diff, scale = diff[m], scale[m]
    if diff.numel() == 0:
        return 0.0, 0.0
    max_abs = float(diff.max())
    peak = float(scale.max())
    return max_abs, (max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else math.inf))


def verify(original: nn.Module, converted: nn.Module, example_input: torch.Tensor | None = None,
           *, input_shape: Sequence[int] | None = None, data: torch.Tensor | None = None,
           samples: int = 8, seed: int = 0, region: np.ndarray | None = None,
           region_text: str | None = None, original_batch: int | None = None,
           converted_batch: int | None = None) -> Verification:
    """Compare ``converted`` with a float64 reference of ``original`` (module docstring).

    Inputs: ``samples`` seeded random inputs of ``input_shape`` (default: the example's
    shape without its batch axis) plus ``data`` (a batch of real inputs) if given.
    ``region`` (a bool mask broadcastable to one output, e.g. ``(C, H, W)``) restricts the
    comparison to the positions where the conversion is exact.  ``original_batch`` /
    ``converted_batch``: the fixed batch size of a model exported without a free batch axis
    (inputs then go through in chunks of that size)."""
    hint = "e.g. load(path).module, or any torch.nn.Module"
    instance_arg(original, nn.Module, "original", "a torch.nn.Module", hint)
    instance_arg(converted, nn.Module, "converted", "a torch.nn.Module",
                 "e.g. convert(...).module or load(path).module")
    for what, value in (("example_input", example_input), ("data", data)):
        if value is not None:
            instance_arg(value, torch.Tensor, what, "a torch.Tensor of shape (batch, C, *n)",
                         "convert arrays with torch.as_tensor")
            if value.ndim < 2 or value.shape[0] < 1:
                raise InvalidInputError(f"{what} must have a batch axis and at least one input "
                                        f"(shape (batch, C, *n)), got shape {tuple(value.shape)}")
            if value.is_complex():
                raise InvalidTypeError(f"{what} is complex ({value.dtype}); only real inputs "
                                       "are supported")
    samples = int_arg(samples, "samples", minimum=0 if data is not None else 1)
    seed = int_arg(seed, "seed")
    original_batch = optional_int_arg(original_batch, "original_batch", minimum=1)
    converted_batch = optional_int_arg(converted_batch, "converted_batch", minimum=1)
    region_text = optional_str_arg(region_text, "region_text")
    if region is not None:
        try:
            region = np.asarray(region)
        except ValueError as exc:
            raise InvalidInputError(f"region must be a boolean mask of one output: {exc}") from None
        if region.dtype != np.bool_:
            raise InvalidTypeError(f"region must be a boolean mask (numpy bool array) of one "
                                   f"output's shape, got {describe(region)} of dtype {region.dtype}")
    if input_shape is None:
        if example_input is None and data is None:
            raise InvalidInputError("verify needs example_input, input_shape or data to know the input shape")
        input_shape = tuple((example_input if example_input is not None else data).shape[1:])
    input_shape = shape_arg(input_shape, "input_shape", example="(3, 32, 32)")
    dtype = _module_dtype(converted)
    batches = [random_inputs(input_shape, samples, seed=seed, dtype=torch.float64)]
    if data is not None:
        if tuple(data.shape[1:]) != tuple(input_shape):
            raise InvalidInputError(f"the data have shape {tuple(data.shape)}, the model takes "
                                    f"(batch, {', '.join(map(str, input_shape))})")
        batches.append(data.detach().to(torch.float64))
    x = torch.cat(batches)
    try:
        ref, reference = _float64_reference(_in_eval_mode(original), x, original_batch)
    except LaurentnetError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # the user's model
        detail = " ".join(str(exc).split())[:200]                       # on the user's shape
        raise InvalidInputError(f"original does not run on inputs of shape (batch, "
                                f"{', '.join(map(str, input_shape))}): {type(exc).__name__}: "
                                f"{detail} (check input_shape / example_input / data)") from exc
    with torch.no_grad():
        y = _run(_in_eval_mode(converted), x.to(dtype), converted_batch)
        y_orig = _run(original, x.to(_module_dtype(original)), original_batch)
    where = region_text or ("every output" if region is None else
                            f"{int(np.count_nonzero(region))} of {np.size(region)} positions per output")
    if tuple(y.shape) != tuple(ref.shape):
        return Verification(False, math.inf, math.inf, math.nan, math.nan,
                            str(dtype).removeprefix("torch."), reference, x.shape[0], where,
                            f"output shapes differ: converted {tuple(y.shape)}, original "
                            f"{tuple(ref.shape)}")
    if region is not None:
        try:
            fits = np.broadcast_shapes(region.shape, tuple(ref.shape[1:])) == tuple(ref.shape[1:])
        except ValueError:
            fits = False
        if not fits:
            raise InvalidInputError(f"region of shape {region.shape} does not fit one output of "
                                    f"shape {tuple(ref.shape[1:])}")
    max_abs, max_rel = _max_errors(y, ref, region)
    _, original_rel = _max_errors(y_orig, ref, region)
    tol = tolerance_for(dtype, original_rel)
    ok = bool(max_rel <= tol)
    problem = "" if ok else f"relative error {max_rel:.3e} exceeds the tolerance {tol:.1e}"
    return Verification(ok, max_abs, max_rel, original_rel, tol, str(dtype).removeprefix("torch."),
                        reference, x.shape[0], where, problem)
