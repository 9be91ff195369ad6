"""laurentnet.bridge — bring a torch model or checkpoint, get a faster equivalent one, with proof.

The Python API (the ``laurentnet`` command line is built on it)::

    from laurentnet.bridge import convert, load, verify

    loaded = load("model.pt2")                        # safe: nothing in the file is executed
    conversion = convert(loaded.module, example, mode="auto")   # or "affine", "kernel", "partial"
    print(conversion.report.table())                  # what merged into what, exactness, cost
    check = verify(loaded.module, conversion.module, example)   # float64 reference, tolerance
    conversion.save("fast.pt2")                       # a plain torch.export program

* :func:`convert` — trace (``torch.export`` at the ATen level, ``torch.fx`` as fallback),
  collapse every maximal linear segment exactly where the collapse is exact and cheaper,
  keep every other op; :class:`Conversion` holds the plain-torch ``module`` and the
  :class:`ConversionReport`; :func:`count_layers` counts convolutions / batch norms / linears;
* :func:`load` — ``.pt2`` programs read without unpickling (a JSON allowlist against code in
  names, targets and expressions), state dicts (``.pt``/``.pth`` with ``weights_only=True``,
  ``.safetensors``) into the model zoo (``arch=``), ``package.module:factory`` for trusted code;
* :func:`verify` — original vs converted on seeded random inputs and the user's data, against
  a float64 reference of the original, with a dtype-aware tolerance;
* :mod:`laurentnet.bridge.models` — ResNets with a skip weight, train-time re-parameterizable
  blocks (RepVGG, ACNet, DBB, MobileOne, DiracNet).
"""
from .convert import MODES, Conversion, ConversionError, ConversionReport, convert, count_layers
from .files import OutputPathError, atomic_write, check_output_path
from .safe_load import CheckpointError, LoadedModel, load
from .verify import Verification, tolerance_for, verify

__all__ = ["convert", "Conversion", "ConversionReport", "ConversionError", "count_layers", "MODES",
           "load", "LoadedModel", "CheckpointError", "verify", "Verification", "tolerance_for",
           "check_output_path", "atomic_write", "OutputPathError"]
