"""Training a ResNet while its skip connections fade out (the skip-removal homotopy).

:func:`train` minimises the mean cross-entropy of a :class:`~.models.resnet.ResNet` on
:class:`~.data.Splits` with SGD (momentum, weight decay) or AdamW, the learning rate
constant or cosine-annealed over all steps (``lr_t = lr (1 + cos(π t / T)) / 2``), and sets
before every step the skip weight of every block to the schedule's ``λ_b(t)``
(:mod:`.schedules`), ``t = epoch + step / steps_per_epoch``.  After each epoch the
validation set is evaluated at ``λ(epoch + 1)`` and the schedule sees the loss.

* **Seeded and deterministic**: the data order is ``DistributedSampler``'s seeded
  permutation (seed + epoch), nothing else is random, deterministic algorithms are on:
  the same call gives the same weights, and a resumed run the weights of an uninterrupted
  one.
* **Data parallel, unchanged under** ``torchrun --nproc_per_node N``: the gloo process group
  from the environment (:mod:`.distributed`), DistributedDataParallel, each process
  ``batch_size / N`` samples of every global batch (the same global batches as one
  process: ``DistributedSampler`` deals positions ``r, r + N, …`` of one permutation), batch
  norm over the global batch; metrics are all-reduced.  Only rank 0 writes or prints.
* **Files** (``out_dir``, rank 0): ``checkpoint.pt`` after every epoch (atomic,
  resumable with ``resume=True``), ``train.jsonl`` (the log), ``train.png`` (plots, when
  ``plot=True``; needs matplotlib).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .data import Splits
from .distributed import DistContext, all_reduce_sum, global_batchnorm, init_from_env, shutdown
from .models.resnet import ResidualBlock
from .schedules import AutoSchedule, Schedule
from .train_io import JsonLog, TrainingError, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "TrainingError", "OPTIMIZERS",
           "CHECKPOINT", "LOG", "PLOT"]

OPTIMIZERS = ("sgd", "adamw")
CHECKPOINT, LOG, PLOT = "checkpoint.pt", "train.jsonl", "train.png"
_DEFAULT_LR = {"sgd": 0.05, "adamw": 2e-3}
_RUN_ONLY = ("threads",)  # config entries a resumed run may change


@dataclass
class TrainConfig:
    """What determines a training run (and must match when it is resumed).

    ``batch_size`` is the global batch (split over the processes); ``lr`` defaults to 0.05
    for SGD and 2e-3 for AdamW; ``lr_schedule`` is ``"cosine"`` or ``"constant"``;
    ``threads`` sets torch's thread count for the run (None: leave it)."""
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    seed: int = 0
    threads: int | None = None

    def check(self) -> None:
        """Refuse bad values with a :class:`TrainingError` naming them."""
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number (got {self.lr})")
        if not (0 <= self.momentum < 1) or not (self.weight_decay >= 0):
            problems.append("momentum must be in [0, 1) and weight_decay >= 0")
        if self.lr_schedule not in ("cosine", "constant"):
            problems.append(f"lr_schedule {self.lr_schedule!r} not in ('cosine', 'constant')")
        if self.seed < 0 or (self.threads is not None and self.threads < 1):
            problems.append("seed must be >= 0 and threads >= 1")
        if problems:
            raise TrainingError("; ".join(problems))

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else _DEFAULT_LR[self.optimizer])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` did: the per-epoch ``history`` (dicts as in the log), test loss
    and accuracy at the final λ, the final ``skip_weights``, when every λ reached 0
    (``zero_at``, epochs; None if not), whether the automatic schedule was ``forced`` to 0,
    epochs run in this call, wall seconds, rank / world size, and the files written."""
    history: list[dict[str, Any]]
    test_loss: float
    test_accuracy: float
    skip_weights: list[float]
    zero_at: float | None
    forced_zero: bool
    epochs_completed: int
    interrupted: bool
    seconds: float
    rank: int
    world_size: int
    files: dict[str, str] = field(default_factory=dict)

    @property
    def skipless(self) -> bool:
        return all(v == 0.0 for v in self.skip_weights)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipless"] = self.skipless
        return out


# ----------------------------------------------------------------------------- helpers


def _blocks(model: nn.Module) -> list[ResidualBlock]:
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    if not blocks:
        raise TrainingError(f"{type(model).__name__} has no residual blocks with a skip "
                            "weight (use a laurentnet.bridge.models ResNet)")
    return blocks


@torch.no_grad()
def _set_lambdas(blocks: list[ResidualBlock], values: list[float]) -> None:
    for block, v in zip(blocks, values):
        block.skip_weight.fill_(v)


def _check_fit(model: nn.Module, data: Splits, schedule: Schedule, config: TrainConfig,
               ctx: DistContext) -> None:
    """The data must fit the model, the schedule the epochs, the batch the processes."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != data.in_channels:
        raise TrainingError(f"the model takes {first.in_channels} input channels, the data "
                            f"({data.name}) have {data.in_channels}")
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if fc and fc[-1].out_features < data.num_classes:
        raise TrainingError(f"the model has {fc[-1].out_features} outputs, the data "
                            f"{data.num_classes} classes")
    end = schedule.zero_at()
    if not isinstance(schedule, AutoSchedule) and end is not None and end > config.epochs:
        raise TrainingError(f"the schedule ends at t0 = {end:g} epochs, after the last epoch "
                            f"({config.epochs}): the skips would not be gone; lower t0 or "
                            "train longer")
    if config.batch_size % ctx.world_size:
        raise TrainingError(f"batch_size {config.batch_size} is not divisible by the "
                            f"{ctx.world_size} processes")
    if len(data.y_train) < config.batch_size:
        raise TrainingError(f"batch_size {config.batch_size} exceeds the {len(data.y_train)} "
                            "training samples")


@contextlib.contextmanager
def _run_settings(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and ``threads`` torch threads, restored afterwards."""
    saved_threads, saved_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved_det)
        torch.set_num_threads(saved_threads)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _lr_at(config: TrainConfig, step: int, total: int) -> float:
    if config.lr_schedule == "constant":
        return config.learning_rate
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _loader(data: Splits, config: TrainConfig, ctx: DistContext) -> DataLoader:
    sampler = DistributedSampler(data.dataset("train"), num_replicas=ctx.world_size,
                                 rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
    return DataLoader(data.dataset("train"), batch_size=config.batch_size // ctx.world_size,
                      sampler=sampler, drop_last=True, num_workers=0)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             ctx: DistContext | None = None, chunk: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on ``(x, y)``; in a process
    group each process takes samples ``rank, rank + N, …`` and the sums are all-reduced."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    xs, ys = x[ctx.rank::ctx.world_size], y[ctx.rank::ctx.world_size]
    sums = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(ys), chunk):
        logits = model(xs[start:start + chunk])
        target = ys[start:start + chunk]
        sums[0] += float(F.cross_entropy(logits, target, reduction="sum"))
        sums[1] += float((logits.argmax(1) == target).sum())
        sums[2] += len(target)
    model.train(was_training)
    loss, correct, n = all_reduce_sum(sums, ctx).tolist()
    return (loss / n, correct / n) if n else (math.nan, math.nan)


# ------------------------------------------------------------------------ the run state


@dataclass
class _Run:
    """Everything the epoch loop mutates."""
    model: nn.Module
    net: nn.Module            # the model, or its DistributedDataParallel wrapper
    blocks: list[ResidualBlock]
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    config: TrainConfig
    loader: DataLoader
    ctx: DistContext
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    start_record: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.loader)


def _signature(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _start_record(run: _Run, data: Splits) -> dict[str, Any]:
    return {"event": "start", "config": run.config.as_dict(), "schedule": run.schedule.config(),
            "model": type(run.model).__name__, "blocks": len(run.blocks),
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "data": data.describe(), "world_size": run.ctx.world_size,
            "steps_per_epoch": len(run.loader)}


def _restore(run: _Run, path: Path) -> None:
    """Load ``path`` into the run after checking it was made by the same configuration."""
    state = load_checkpoint(path)
    mine = {k: v for k, v in run.config.as_dict().items() if k not in _RUN_ONLY}
    theirs = {k: v for k, v in state.get("config", {}).items() if k not in _RUN_ONLY}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if state.get("schedule_config") != run.schedule.config():
        diff.append("schedule")
    if state.get("signature") != _signature(run.model):
        diff.append("model architecture")
    if diff:
        raise TrainingError(f"{path}: the checkpoint was made with a different "
                            f"{', '.join(diff)}; use the same settings to resume, or another "
                            "output folder")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    run.start_epoch, run.history = int(state["epoch"]), list(state["history"])
    run.start_record = dict(state["start_record"])


def _save(run: _Run, path: Path, epoch: int) -> None:
    save_checkpoint(path, {
        "epoch": epoch, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(), "schedule_config": run.schedule.config(),
        "config": run.config.as_dict(), "signature": _signature(run.model),
        "history": run.history, "start_record": run.start_record})


# --------------------------------------------------------------------------- the loop


def _train_epoch(run: _Run, epoch: int, bar: Any) -> tuple[float, float]:
    """One pass over the training batches; mean loss and accuracy (global)."""
    run.loader.sampler.set_epoch(epoch)
    run.net.train()
    steps = len(run.loader)
    sums = torch.zeros(3, dtype=torch.float64)
    for i, (x, y) in enumerate(run.loader):
        _set_lambdas(run.blocks, run.schedule.values(epoch + i / steps, len(run.blocks)))
        for group in run.optimizer.param_groups:
            group["lr"] = _lr_at(run.config, epoch * steps + i, run.total_steps)
        run.optimizer.zero_grad(set_to_none=True)
        logits = run.net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        run.optimizer.step()
        sums += torch.tensor([float(loss.detach()) * len(y), float((logits.argmax(1) == y).sum()), len(y)],
                             dtype=torch.float64)
        bar.update(1)
    loss_sum, correct, n = all_reduce_sum(sums, run.ctx).tolist()
    return loss_sum / n, correct / n


def _epoch(run: _Run, data: Splits, epoch: int, bar: Any) -> dict[str, Any]:
    start = time.perf_counter()
    lambda_start = run.schedule.values(epoch, len(run.blocks))
    train_loss, train_acc = _train_epoch(run, epoch, bar)
    lambdas = run.schedule.values(epoch + 1, len(run.blocks))
    _set_lambdas(run.blocks, lambdas)
    val_loss, val_acc = evaluate(run.model, data.x_val, data.y_val, run.ctx)
    run.schedule.observe(epoch, val_loss, run.config.epochs)
    if not math.isfinite(train_loss):
        raise TrainingError(f"the training loss is {train_loss} in epoch {epoch + 1}: lower "
                            "the learning rate")
    return {"event": "epoch", "epoch": epoch + 1, "train_loss": train_loss,
            "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc,
            "lambda": lambdas, "lambda_start": lambda_start,
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start}


def _bars(run: _Run, enabled: bool) -> tuple[Any, Any]:
    from tqdm import tqdm
    epochs = tqdm(total=run.config.epochs, initial=run.start_epoch, desc="epochs", unit="epoch",
                  disable=not enabled, position=0)
    batches = tqdm(total=len(run.loader), desc="batches", unit="batch", leave=False,
                   disable=not enabled, position=1)
    return epochs, batches


def _loop(run: _Run, data: Splits, files: dict[str, Path], progress: bool,
          stop_after: int | None) -> tuple[int, bool]:
    """The epochs from ``start_epoch``; returns (epochs completed, interrupted)."""
    main = run.ctx.is_main
    log = JsonLog(files["log"]) if "log" in files else None
    epochs_bar, batch_bar = _bars(run, progress and main)
    done, interrupted = run.start_epoch, False
    try:
        for epoch in range(run.start_epoch, run.config.epochs):
            batch_bar.reset(total=len(run.loader))
            record = _epoch(run, data, epoch, batch_bar)
            run.history.append(record)
            done = epoch + 1
            if main and "checkpoint" in files:
                _save(run, files["checkpoint"], done)
            if main and log is not None:
                log.write(record)
            epochs_bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                   val=f"{100 * record['val_accuracy']:.1f}%",
                                   λ=f"{max(record['lambda']):.2f}")
            epochs_bar.update(1)
            if stop_after is not None and done >= stop_after and done < run.config.epochs:
                interrupted = True
                break
    finally:
        batch_bar.close()
        epochs_bar.close()
    return done, interrupted


def _prepare_files(out_dir: str | Path | None, resume: bool, plot: bool,
                   ctx: DistContext) -> dict[str, Path]:
    if out_dir is None:
        if resume:
            raise TrainingError("resume=True needs the out_dir holding the checkpoint")
        return {}
    folder = Path(out_dir)
    if ctx.is_main:
        if folder.exists() and not folder.is_dir():
            raise TrainingError(f"{folder}: exists and is not a folder")
        if not folder.parent.is_dir():
            raise TrainingError(f"{folder}: the parent folder {folder.parent} does not exist")
        folder.mkdir(exist_ok=True)
    files = {"checkpoint": folder / CHECKPOINT, "log": folder / LOG}
    if plot:
        files["plot"] = folder / PLOT
    if files["checkpoint"].exists() and not resume:
        raise TrainingError(f"{files['checkpoint']}: a checkpoint of an earlier run is there; "
                            "resume it (resume=True, --resume) or use another output folder")
    return files


def _build_run(model: nn.Module, data: Splits, schedule: Schedule, config: TrainConfig,
               ctx: DistContext) -> _Run:
    blocks = _blocks(model)
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model)
    run = _Run(model, net, blocks, _optimizer(model, config), schedule, config,
               _loader(data, config, ctx), ctx)
    run.start_record = _start_record(run, data)
    return run


def _begin(run: _Run, files: dict[str, Path], resume: bool) -> None:
    """Restore a checkpoint when resuming; (re)write the log's head."""
    if resume and files["checkpoint"].exists():
        _restore(run, files["checkpoint"])
        if run.ctx.is_main:
            JsonLog(files["log"]).rewrite([run.start_record, *run.history,
                                           {"event": "resume", "epoch": run.start_epoch}])
    elif run.ctx.is_main and "log" in files:
        JsonLog(files["log"]).rewrite([run.start_record])
    _set_lambdas(run.blocks, run.schedule.values(run.start_epoch, len(run.blocks)))


def _finish(run: _Run, data: Splits, files: dict[str, Path], done: int, interrupted: bool,
            seconds: float) -> TrainResult:
    run.model.eval()
    test_loss, test_acc = evaluate(run.model, data.x_test, data.y_test, run.ctx)
    lambdas = [float(b.skip_weight) for b in run.blocks]
    forced = bool(getattr(run.schedule, "forced", False))
    result = TrainResult(run.history, test_loss, test_acc, lambdas, run.schedule.zero_at(),
                         forced, done - run.start_epoch, interrupted, seconds, run.ctx.rank,
                         run.ctx.world_size, {k: str(v) for k, v in files.items()})
    if run.ctx.is_main and files and not interrupted:
        JsonLog(files["log"]).write({"event": "end", "test_loss": test_loss,
                                     "test_accuracy": test_acc, "skip_weights": lambdas,
                                     "zero_at": result.zero_at, "forced_zero": forced,
                                     "seconds": seconds})
        if "plot" in files:
            import matplotlib.pyplot as plt
            from .train_plots import plot_history
            plt.close(plot_history(run.history, files["plot"], title=run.schedule.describe()))
    return result


def train(model: nn.Module, data: Splits, schedule: Schedule, config: TrainConfig | None = None,
          *, out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          plot: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train ``model`` in place (module docstring) and return a :class:`TrainResult`.

    ``out_dir``: folder for the checkpoint, log and plots (rank 0 writes; created if its
    parent exists); ``resume``: continue from its checkpoint (same configuration, refused
    otherwise); ``stop_after``: stop after that many epochs as if interrupted (a later
    call with ``resume=True`` continues); ``plot``: write ``train.png`` (matplotlib).
    The model ends in eval mode with every skip weight at ``λ(epochs)``."""
    config = config or TrainConfig()
    config.check()
    if plot:
        from .train_plots import require_matplotlib
        require_matplotlib()
    ctx = init_from_env()
    try:
        _check_fit(model, data, schedule, config, ctx)
        files = _prepare_files(out_dir, resume, plot, ctx)
        start = time.perf_counter()
        with _run_settings(config.threads), global_batchnorm(model, ctx):
            run = _build_run(model, data, schedule, config, ctx)
            _begin(run, files, resume)
            done, interrupted = _loop(run, data, files, progress, stop_after)
        return _finish(run, data, files, done, interrupted, time.perf_counter() - start)
    finally:
        shutdown(ctx)
