"""Which integers and rationals sympy's domains ``ZZ``/``QQ`` are made of, chosen on purpose.

sympy picks its *ground types* once, when it is first imported, from
``$SYMPY_GROUND_TYPES`` or, unset, from what happens to be installed: ``flint`` when
python-flint is importable, else ``gmpy`` when gmpy2 is, else pure ``python``.  python-flint
is a requirement of laurentnet (its exact collapse backend), so left alone sympy would
switch to ``flint`` ground types, which made the sympy-ring path (symbolic weights, the
prover, ``collapse(backend="sympy")``) 1.4-1.8x slower than ``gmpy`` in our measurements
(``python benchmarks/peers.py --rows ground-types`` times both).  This module therefore sets
``SYMPY_GROUND_TYPES=gmpy`` as a *default* before the package first imports sympy: an
explicit setting in the environment is kept, and if sympy was imported before laurentnet the
choice has already been made and is only reported.

:func:`sympy_ground_types` says which ground types are in use and why.  Importing this
module must not import sympy (it runs first in ``laurentnet.algebra``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

__all__ = ["DEFAULT_GROUND_TYPES", "GroundTypes", "sympy_ground_types"]

#: the ground types laurentnet asks for when the environment names none
DEFAULT_GROUND_TYPES = "gmpy"

_VARIABLE = "SYMPY_GROUND_TYPES"


def _recorded_state() -> tuple[bool, str | None]:
    """``(sympy was imported first, $SYMPY_GROUND_TYPES as the caller set it)``.  The top-level
    ``laurentnet/__init__`` records both and sets the default before anything else runs
    (``laurentnet.numeric`` imports sympy before it imports this package); this module
    does the same when the record is missing."""
    root = sys.modules.get(__name__.rsplit(".", 2)[0])
    state = getattr(root, "_GROUND_TYPES_STATE", None)
    if state is not None:
        return state
    state = ("sympy" in sys.modules, os.environ.get(_VARIABLE))
    if not state[0] and not state[1]:
        os.environ[_VARIABLE] = DEFAULT_GROUND_TYPES
    return state


_SYMPY_WAS_IMPORTED, _ENVIRONMENT_VALUE = _recorded_state()


@dataclass(frozen=True)
class GroundTypes:
    """``in_use``: sympy's ground types (``"gmpy"``, ``"flint"`` or ``"python"``);
    ``requested``: what was asked for when sympy was imported (``None`` if unknown);
    ``source``: ``"laurentnet default"``, ``"environment"`` (``$SYMPY_GROUND_TYPES`` was
    set) or ``"sympy imported before laurentnet"``."""
    in_use: str
    requested: str | None
    source: str

    def __str__(self) -> str:
        asked = f", {self.requested!r} requested" if self.requested else ""
        return f"sympy ground types {self.in_use!r} ({self.source}{asked})"


def sympy_ground_types() -> GroundTypes:
    """The ground types sympy's ``ZZ``/``QQ`` use in this process, and why."""
    from sympy.external.gmpy import GROUND_TYPES
    if _SYMPY_WAS_IMPORTED:
        return GroundTypes(GROUND_TYPES, None, "sympy imported before laurentnet")
    if _ENVIRONMENT_VALUE:
        return GroundTypes(GROUND_TYPES, _ENVIRONMENT_VALUE, "environment")
    return GroundTypes(GROUND_TYPES, DEFAULT_GROUND_TYPES, "laurentnet default")
