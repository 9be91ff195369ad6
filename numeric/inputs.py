"""User inputs to the numeric side, coerced once: a real tensor or a clear error."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["as_real_tensor"]


def as_real_tensor(value: Any, what: str = "the input") -> torch.Tensor:
    """``value`` (a tensor, numpy array or nested list) as a real torch tensor.  Complex or
    non-numeric data raise ``TypeError`` naming ``what``; dtypes are left to the caller."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{what} must be a tensor or a numeric array, got "
                            f"{type(value).__name__} ({exc})") from None
    if value.is_complex():
        raise TypeError(f"{what} is complex ({value.dtype}); only real data are supported")
    return value
