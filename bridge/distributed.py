"""Data-parallel training on CPUs: the process group from ``torchrun``'s environment, and a
batch norm whose statistics are those of the global batch.

Under ``torchrun --nproc_per_node N`` every process has ``RANK``, ``WORLD_SIZE`` and
``MASTER_ADDR``/``MASTER_PORT`` in its environment; :func:`init_from_env` then joins the
gloo process group (and leaves it in :func:`shutdown` if it joined).  Without them the run
is one process (rank 0 of 1) and nothing is initialised: the same code runs both ways.

Why a batch norm of its own: DistributedDataParallel averages gradients, so with a global
batch of ``B`` split into ``N`` equal shards, ``(1/N) Σ_r ∇(mean loss of shard r)`` is the
gradient of the mean loss over the global batch — *if* every layer computes on a sample
what it would in one process.  Training-mode batch norm does not: it normalises with the
statistics of the batch it sees.  :class:`GlobalBatchNorm2d` all-reduces them: per channel

    μ = Σ_r Σ_i x_ri / n,     σ² = Σ_r Σ_i (x_ri − μ)² / n,     n = Σ_r n_r,

(two reductions, the second on centred values, so no ``E[x²] − μ²`` cancellation), by an
all-reduce whose backward is again an all-reduce of the gradients: the gradient is that
of the one-process network on the global batch.  The running
statistics get ``(1 − m) running + m · (μ, σ² n / (n − 1))`` as in ``nn.BatchNorm2d``.
(``nn.SyncBatchNorm`` does the same but refuses CPU tensors.)
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "init_from_env", "shutdown", "all_reduce_sum", "GlobalBatchNorm2d",
           "global_batchnorm"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``joined`` when
    :func:`init_from_env` created the process group (and :func:`shutdown` must leave it)."""
    rank: int = 0
    world_size: int = 1
    joined: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def init_from_env(backend: str = "gloo") -> DistContext:
    """Join the process group described by ``torchrun``'s environment variables (gloo on
    CPU), or return rank 0 of 1 when they are absent or ``WORLD_SIZE`` is 1."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), True)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_from_env` joined it."""
    if ctx.joined and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``Σ_r values_r`` over the processes (the tensor itself in one process)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class _GlobalSum(torch.autograd.Function):
    """``y = Σ_r x_r`` on every process; the backward is the same sum of the gradients
    (``∂L/∂x_r = Σ_r' ∂L_r'/∂y``, each process's loss depending on the global sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    return _GlobalSum.apply(t)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are over the global batch of all
    processes (module docstring); identical to it in eval mode and in one process."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        local_n = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], dtype=x.dtype)
        n = _global_sum(local_n)
        mean = _global_sum(x.sum(dims)) / n
        centred = x - mean[None, :, None, None]
        var = _global_sum((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean.detach(), var.detach(), float(n))
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


@contextlib.contextmanager
def global_batchnorm(model: nn.Module, ctx: DistContext) -> Iterator[nn.Module]:
    """Inside the block every ``nn.BatchNorm2d`` of ``model`` is a :class:`GlobalBatchNorm2d`
    (its class swapped in place: same parameters, buffers and state-dict keys); restored on
    exit.  Does nothing in one process."""
    swapped = []
    if ctx.distributed:
        for m in model.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = GlobalBatchNorm2d
                swapped.append(m)
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d
