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
from ..algebra.errors import InvalidInputError, InvalidTypeError, LaurentnetError
from .convert import MODES, Conversion, ConversionError, ConversionReport, convert, count_layers
from .files import OutputPathError, atomic_write, check_output_path
from .safe_load import CheckpointError, LoadedModel, load
from .verify import Verification, tolerance_for, verify

__all__ = ["convert", "Conversion", "ConversionReport", "ConversionError", "count_layers", "MODES",
           "load", "LoadedModel", "CheckpointError", "verify", "Verification", "tolerance_for",
           "check_output_path", "atomic_write", "OutputPathError",
           "LaurentnetError", "InvalidInputError", "InvalidTypeError"]

# Skip removal (homotopy training): data, schedules λ(t), the trainer, deployment
from .data import DataError, Splits, digits, load_data, load_mnist, read_idx, synthetic_signals
from .schedules import AutoSchedule, FixedSchedule, ScheduleError, make_schedule
from .skip_removal import Deployment, SkipRemovalError, deploy_skipless, fold_batchnorm
from .timing import interleaved_times
from .trainer import TrainConfig, TrainingError, TrainResult, train

__all__ += ["DataError", "Splits", "digits", "load_data", "load_mnist", "read_idx",
            "synthetic_signals", "AutoSchedule", "FixedSchedule", "ScheduleError",
            "make_schedule", "Deployment", "SkipRemovalError", "deploy_skipless",
            "fold_batchnorm", "interleaved_times", "TrainConfig", "TrainingError", "TrainResult",
            "train"]

# Basis convolutions (seed 003): W = C·B, decomposition of trained layers, sensitivity
from .basis_conv import BasisConv, collapse_basis_convs_
from .conv_layers import ConvLayer, find_conv_layers
from .decompose import Decomposition, LayerDecomposition, decompose, decompose_layer
from .fine_tune import FineTuneResult, fine_tune
from .sensitivity import Budget, Selection, SensitivityReport, select_layers, sensitivity

__all__ += ["BasisConv", "collapse_basis_convs_", "ConvLayer", "find_conv_layers",
            "Decomposition", "LayerDecomposition", "decompose", "decompose_layer",
            "FineTuneResult", "fine_tune", "Budget", "Selection", "SensitivityReport",
            "select_layers", "sensitivity"]

# Low-cost couplings and PDE blocks (seed 002): structured convolutions, PDE residual steps
from .lowcost_layers import (BlockCirculantConv2d, CouplingConv2d, DenseConv2d, DepthwiseConv2d,
                             GroupedConv2d, LeanConv2d, PointwiseConv2d, make_coupling)
from .pde_blocks import (DiffusionReaction, ExplicitPDEBlock, ImplicitDiffusion, ImplicitPDEBlock,
                         StableStep, enforce_stability_, linear_pde_network, stable_step)
from .lowcost_resnet import LowCostResNet, StructuredBasicBlock

__all__ += ["CouplingConv2d", "DenseConv2d", "DepthwiseConv2d", "PointwiseConv2d",
            "GroupedConv2d", "LeanConv2d", "BlockCirculantConv2d", "make_coupling",
            "DiffusionReaction", "ExplicitPDEBlock", "ImplicitDiffusion", "ImplicitPDEBlock",
            "StableStep", "stable_step", "enforce_stability_", "linear_pde_network",
            "LowCostResNet", "StructuredBasicBlock"]
from .border_module import (BorderCorrectedConv, StripLayers, border_corrected_exit,
                            border_module)

__all__ += ["BorderCorrectedConv", "StripLayers", "border_corrected_exit", "border_module"]
from .polyphase_module import PolyphaseConv, polyphase_module, traced_polyphase

__all__ += ["PolyphaseConv", "polyphase_module", "traced_polyphase"]
