"""The package's one error base class.

Every error laurentnet raises on purpose derives from :class:`LaurentnetError` *and* from
the builtin that describes it (``ValueError`` for bad values, ``MemoryError`` for the
memory guard, ...), so ``except LaurentnetError`` catches the package's own refusals while
``except ValueError`` keeps working as it would with any numpy/torch code.
"""
from __future__ import annotations

__all__ = ["LaurentnetError"]


class LaurentnetError(Exception):
    """Base class of the errors laurentnet raises on purpose (a refusal with a reason)."""
