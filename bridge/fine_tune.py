"""Fine-tuning a decomposed model: train the basis filters ``B`` and the mixing ``C`` (or
``A`` of the subset form ``[I; A]``) together with the rest of the model.

A ResNet of :mod:`laurentnet.bridge.models` (blocks with a skip weight, all equal) is
trained by :func:`laurentnet.bridge.trainer.train` with the skip weight held constant (a
``constant`` schedule at its current value): seeded, deterministic, cosine learning rate,
the test accuracy measured at the end.  Any other model goes through a minimal local loop
with the same objective (mean cross-entropy), optimizer and learning-rate schedule
(AdamW, ``lr_t = lr (1 + cos(π t / T)) / 2``, seeded shuffling), evaluated on the test
split the same way (:func:`laurentnet.bridge.trainer.evaluate`).

Batch norm: a decomposed layer changes the statistics of what the batch norms after it
see, and running statistics that lag behind (momentum 0.1) can make the eval-mode network
much worse than the train-mode one.  With ``calibrate=True`` (the default) every batch
norm's running statistics are set from the training images before and after the training
(:func:`laurentnet.bridge.models.calibrate_batchnorm_`, no gradient step).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import bool_arg, int_arg, real_arg
from .data import Splits
from .models.resnet import ResidualBlock, calibrate_batchnorm_
from .schedules import FixedSchedule
from .trainer import TrainConfig, evaluate, train

__all__ = ["FineTuneResult", "fine_tune", "recalibrate_batchnorm_"]


@dataclass
class FineTuneResult:
    """Test loss and accuracy after fine-tuning, the seconds it took and which loop ran
    (``"trainer"`` or ``"local"``)."""
    test_loss: float
    test_accuracy: float
    seconds: float
    loop: str


def _uniform_skip_weight(model: nn.Module) -> float | None:
    values = {float(m.skip_weight) for m in model.modules() if isinstance(m, ResidualBlock)}
    return values.pop() if len(values) == 1 else None


def _local_loop(model: nn.Module, data: Splits, epochs: int, lr: float, batch_size: int,
                seed: int, weight_decay: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    steps = epochs * (n // batch_size)
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            optimizer.step()
            step += 1
    model.eval()


def fine_tune(model: nn.Module, data: Splits, *, epochs: int = 3, lr: float = 1e-3,
              batch_size: int = 64, seed: int = 0, weight_decay: float = 0.0,
              calibrate: bool = True, progress: bool = False) -> FineTuneResult:
    """Train ``model`` in place on ``data`` for ``epochs`` (module docstring) with AdamW at
    ``lr`` (cosine-annealed); returns the test loss and accuracy afterwards."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Splits):
        raise InvalidTypeError("data must be laurentnet.bridge.data.Splits (e.g. data.digits())")
    epochs = int_arg(epochs, "epochs", minimum=1)
    batch_size = int_arg(batch_size, "batch_size", minimum=1)
    lr = real_arg(lr, "lr", positive=True)
    weight_decay = real_arg(weight_decay, "weight_decay", minimum=0.0)
    calibrate = bool_arg(calibrate, "calibrate")
    if batch_size > len(data.y_train):
        raise InvalidInputError(f"batch_size {batch_size} exceeds the {len(data.y_train)} "
                                "training samples")
    start = time.perf_counter()
    if calibrate:
        recalibrate_batchnorm_(model, data)
    skip = _uniform_skip_weight(model)
    if skip is not None:
        config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adamw", lr=lr,
                             weight_decay=weight_decay, seed=seed)
        train(model, data, FixedSchedule("constant", value=skip), config, progress=progress)
        loop = "trainer"
    else:
        _local_loop(model, data, epochs, lr, batch_size, seed, weight_decay)
        loop = "local"
    if calibrate:
        recalibrate_batchnorm_(model, data)
    loss, accuracy = evaluate(model, data.x_test, data.y_test)
    return FineTuneResult(loss, accuracy, time.perf_counter() - start, loop)


def recalibrate_batchnorm_(model: nn.Module, data: Splits) -> nn.Module:
    """Every batch norm's running statistics from the training images (no gradient step)."""
    with torch.no_grad():
        return calibrate_batchnorm_(model, data.x_train)
