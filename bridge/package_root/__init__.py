"""laurentnet — convolutional networks as matrices of Laurent polynomials.

Three subpackages, imported on demand (this module imports none of them, so
``import laurentnet.algebra`` never pulls in torch):

* :mod:`laurentnet.algebra` — the exact side (sympy only): Laurent polynomials, convolution
  operators, networks, collapse with exact regions, exact affine maps, proofs;
* :mod:`laurentnet.numeric` — the same algebra in floating point at real widths (torch);
* :mod:`laurentnet.bridge` — PyTorch models and checkpoints in and out, the command line.

This folder (``bridge/package_root/`` in the repository) is the top-level package itself:
setuptools maps it to ``laurentnet`` and the three folders to its subpackages.
"""
import os as _os
import sys as _sys

# sympy chooses its ground types (gmpy2 / python-flint / pure Python integers) once, when it
# is first imported; laurentnet asks for gmpy2 unless the environment says otherwise, before
# any subpackage imports sympy (see laurentnet.algebra.ground_types, which reports it).
_GROUND_TYPES_STATE = ("sympy" in _sys.modules, _os.environ.get("SYMPY_GROUND_TYPES"))
if not _GROUND_TYPES_STATE[0] and not _GROUND_TYPES_STATE[1]:
    _os.environ["SYMPY_GROUND_TYPES"] = "gmpy"

from importlib.metadata import PackageNotFoundError, version as _version  # noqa: E402

try:
    __version__ = _version("laurentnet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
