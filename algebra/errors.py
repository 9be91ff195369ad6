"""The package's one error base class and the generic refusals built on it.

Every error laurentnet raises on purpose derives from :class:`LaurentnetError` *and* from
the builtin that describes it (``ValueError`` for bad values, ``MemoryError`` for the
memory guard, ...), so ``except LaurentnetError`` catches the package's own refusals while
``except ValueError`` keeps working as it would with any numpy/torch code.

Here: :class:`InvalidInputError` (a ``ValueError``), :class:`InvalidTypeError` (a
``TypeError``), :class:`UnknownNameError` (a ``KeyError``), :class:`DependencyError` (an
``ImportError``).  The specific ones live next to their code (``ChannelIndexError``,
``MemoryBudgetError``, ``NotAffineError``, ``CheckpointError``, ``ConversionError``, ...);
``docs/errors.md`` lists them all.  The command line reports every ``LaurentnetError`` as
bad input (exit 2) and anything else as a bug in laurentnet (exit 3), so a refusal of the
caller's input must be one of these, and a broken internal invariant must not be.
"""
from __future__ import annotations

__all__ = ["LaurentnetError", "InvalidInputError", "InvalidTypeError", "UnknownNameError",
           "DependencyError"]


class LaurentnetError(Exception):
    """Base class of the errors laurentnet raises on purpose (a refusal with a reason)."""


class InvalidInputError(LaurentnetError, ValueError):
    """A refused value: the wrong shape, size, range or kind of an argument the caller gave
    (the message names the argument and what it must be)."""


class InvalidTypeError(LaurentnetError, TypeError):
    """An argument of the wrong type (a string where a network goes, a float where a size
    goes, ...); the message names the argument and the type it must have."""


class UnknownNameError(LaurentnetError, KeyError):
    """A name that does not exist (a node of a network, a method of a cost report); a
    ``KeyError`` whose message is printed as written, not quoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DependencyError(LaurentnetError, ImportError):
    """An optional dependency a feature needs is not installed; the message says what to
    install."""
