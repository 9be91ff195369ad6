"""Side-by-side prediction timing: the median of interleaved repeats.

Timing one model, then another, lets a change of machine load (other processes, CPU
frequency) pass for a speed difference.  :func:`interleaved_times` runs every candidate
once per round, ``repeats`` rounds, in an order rotated each round; a sample is the mean
of ``k`` back-to-back calls, ``k`` chosen per candidate so a sample lasts at least
``min_seconds``.  It reports per candidate the median sample, and for every candidate
against a ``baseline`` the median over rounds of the per-round ratio ``t / t_baseline``
(both timed in the same round, so under the same load) — ``1 − ratio`` is the time saved.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..algebra.errors import LaurentnetError

__all__ = ["TimingError", "Timings", "interleaved_times"]


class TimingError(LaurentnetError, ValueError):
    """Bad timing parameters (the message says which)."""


@dataclass
class Timings:
    """Median seconds per call (``median``), all samples (``samples``), and the median
    per-round ratio to each other candidate (``ratio(name, baseline)``)."""
    samples: dict[str, list[float]]
    calls_per_sample: dict[str, int]
    threads: int
    median: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.median = {k: statistics.median(v) for k, v in self.samples.items()}

    def ratio(self, name: str, baseline: str) -> float:
        """``median_r (t_name,r / t_baseline,r)`` over the rounds ``r``."""
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[baseline]))

    def spread(self, name: str) -> float:
        """``max / min`` of the samples (far above 1: a busy machine)."""
        return max(self.samples[name]) / min(self.samples[name])

    def table(self, baseline: str, labels: Mapping[str, str] | None = None) -> str:
        """One row per candidate: median ms per call, sample spread, the median per-round
        ratio to ``baseline`` and the time saved ``1 − ratio``."""
        labels = labels or {}
        rows = [(labels.get(n, n), f"{1e3 * t:.3f}", f"{self.spread(n):.2f}",
                 f"{self.ratio(n, baseline):.3f}", f"{100 * (1 - self.ratio(n, baseline)):+.1f}%")
                for n, t in self.median.items()]
        head = ("", "median ms", "spread", f"× {labels.get(baseline, baseline)}", "saved")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                           enumerate(zip(r, widths))) for r in [head, *rows]]
        repeats = len(next(iter(self.samples.values())))
        return "\n".join([*lines, f"(median of {repeats} interleaved rounds, {self.threads} "
                                  "thread(s); ratios are medians of per-round ratios)"])

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "samples_s": self.samples,
                "calls_per_sample": self.calls_per_sample, "threads": self.threads,
                "repeats": len(next(iter(self.samples.values())))}


def _calls_for(fn: Callable[[], Any], min_seconds: float) -> int:
    fn()  # warm-up
    t = time.perf_counter()
    fn()
    return max(1, math.ceil(min_seconds / max(time.perf_counter() - t, 1e-9)))


def _sample(fn: Callable[[], Any], k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t) / k


def interleaved_times(candidates: Mapping[str, Callable[[], Any]], repeats: int = 7,
                      min_seconds: float = 0.05, threads: int | None = None) -> Timings:
    """Time every ``candidates[name]()`` (module docstring) under ``torch.inference_mode``
    with ``threads`` torch threads (default: the current setting, restored afterwards)."""
    if repeats < 1 or not candidates or not (min_seconds >= 0 and math.isfinite(min_seconds)):
        raise TimingError(f"need at least one candidate, repeats >= 1 and min_seconds >= 0 "
                          f"(got {len(candidates)}, {repeats}, {min_seconds})")
    saved = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise TimingError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    names = list(candidates)
    try:
        with torch.inference_mode():
            calls = {n: _calls_for(candidates[n], min_seconds) for n in names}
            samples: dict[str, list[float]] = {n: [] for n in names}
            for r in range(repeats):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    samples[n].append(_sample(candidates[n], calls[n]))
        return Timings(samples, calls, torch.get_num_threads())
    finally:
        torch.set_num_threads(saved)
