"""Plots of a training run: accuracy, loss and the skip weight λ of every block per epoch.

matplotlib is imported only here and only when a plot is asked for (it is not needed to
train); without it :func:`require_matplotlib` raises a :class:`DependencyError` saying
what to install.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..algebra.errors import DependencyError
from .files import atomic_write

__all__ = ["require_matplotlib", "plot_history"]


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError:
        raise DependencyError("plots need matplotlib: pip install matplotlib (or "
                              "pip install 'laurentnet[plot]'), or turn plots off "
                              "(plot=False, laurentnet train --no-plots)") from None
    if "matplotlib.pyplot" not in sys.modules:  # a script: no display needed; a notebook
        matplotlib.use("Agg")                   # has pyplot (and its backend) already
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: Sequence[dict[str, Any]], path: str | os.PathLike | None = None,
                 title: str = "") -> Any:
    """Three panels over epochs — train/validation accuracy, train/validation loss (log
    scale when it spans more than a factor 10), and λ of every block (block 0 the
    shallowest) at the start of the run and the end of each epoch; written (PNG,
    atomically) to ``path`` if given.  Returns the matplotlib figure."""
    plt = require_matplotlib()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("train", "train"), ("val", "validation")):
        axes[0].plot(epochs, [100 * r[f"{key}_accuracy"] for r in history], label=label)
        axes[1].plot(epochs, [r[f"{key}_loss"] for r in history], label=label)
    axes[0].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    losses = [r[f"{k}_loss"] for r in history for k in ("train", "val")]
    spread = max(losses) / min(losses) if losses and min(losses) > 0 else 1.0
    axes[1].set(xlabel="epoch", ylabel="cross-entropy", title="loss",
                yscale="log" if spread > 10 else "linear")
    lambdas = [r["lambda"] for r in history]
    first = history[0].get("lambda_start") if history else None
    x_lam = ([epochs[0] - 1] if first else []) + epochs
    for b in range(len(lambdas[0]) if lambdas else 0):
        axes[2].plot(x_lam, ([first[b]] if first else []) + [lam[b] for lam in lambdas],
                     label=f"block {b}")
    axes[2].set(xlabel="epoch", ylabel="λ (skip weight)", title="λ per block", ylim=(-0.05, 1.05))
    for ax in axes[:2]:
        ax.legend()
    if lambdas and len(lambdas[0]) <= 8:
        axes[2].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        target = Path(path)
        atomic_write(target, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return fig
