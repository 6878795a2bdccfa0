"""Schedules that decay from the peak: step, exponential, cosine, polynomial, SGDR, one-cycle,
inverse sqrt."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from bigbatch.schedules.base import Schedule, check, half_cosine


@dataclasses.dataclass(frozen=True)
class StepDecay(Schedule):
  """Divide the learning rate by `factor` at each boundary (in epochs).

  Args:
    boundaries: increasing epochs at which the learning rate drops.
    factor: the divisor (> 1), one for all boundaries or one per boundary.
  """

  boundaries: tuple[float, ...]
  factor: float | tuple[float, ...] = 10.0

  def __post_init__(self):
    bounds = tuple(float(b) for b in self.boundaries)
    factors = self.factor
    if isinstance(factors, (int, float)):
      factors = (float(factors),) * len(bounds)
    factors = tuple(float(f) for f in factors)
    check(
      len(factors) == len(bounds),
      f"schedule.factor: {len(factors)} factors for {len(bounds)} boundaries",
    )
    check(
      all(f > 1.0 for f in factors),
      f"schedule.factor: each must be > 1 (the learning rate is divided by it), got {factors}",
    )
    check(all(b > 0 for b in bounds), f"schedule.boundaries: must be positive epochs, got {bounds}")
    check(
      all(a < b for a, b in itertools.pairwise(bounds)),
      f"schedule.boundaries: must be strictly increasing, got {bounds}",
    )
    object.__setattr__(self, "boundaries", bounds)
    object.__setattr__(self, "factor", factors)

  def multiplier(self, epoch, xp: Any = np):
    epoch = xp.asarray(epoch, dtype=float)
    value = xp.ones_like(epoch)
    for boundary, factor in zip(self.boundaries, self.factor):
      value = xp.where(epoch >= boundary, value / factor, value)
    return value

  def breakpoints(self):
    return self.boundaries


@dataclasses.dataclass(frozen=True)
class Exponential(Schedule):
  """Multiply the learning rate by `rate` every `every_epochs` epochs.

  Args:
    rate: factor per `every_epochs`, in (0, 1).
    every_epochs: the period of one `rate` factor.
    staircase: drop in steps at multiples of `every_epochs` instead of smoothly.
    start_epoch: where the decay begins (the end of the warm-up).
    end_epoch: the last epoch (for the breakpoints of a staircase).
  """

  rate: float
  every_epochs: float = 1.0
  staircase: bool = False
  start_epoch: float = 0.0
  end_epoch: float = math.inf

  def __post_init__(self):
    check(0.0 < self.rate < 1.0, f"schedule.rate: must be in (0, 1), got {self.rate}")
    check(
      self.every_epochs > 0, f"schedule.every_epochs: must be positive, got {self.every_epochs}"
    )

  def multiplier(self, epoch, xp: Any = np):
    periods = xp.maximum(xp.asarray(epoch, dtype=float) - self.start_epoch, 0.0)
    periods = periods / self.every_epochs
    if self.staircase:
      periods = xp.floor(periods)
    return self.rate**periods

  def breakpoints(self):
    if not self.staircase or not math.isfinite(self.end_epoch):
      return ()
    count = math.ceil((self.end_epoch - self.start_epoch) / self.every_epochs)
    return tuple(self.start_epoch + i * self.every_epochs for i in range(1, count))

  def knots(self):
    return self.breakpoints() + (self.start_epoch,)

  def constant_between(self, start, end):
    if not self.staircase:
      return end <= self.start_epoch

    def stair(epoch):
      return math.floor(max(epoch - self.start_epoch, 0.0) / self.every_epochs)

    return stair(start) == stair(math.nextafter(end, -math.inf))


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
  """Half a cosine wave from the peak to `final_fraction` of it.

  Args:
    start_epoch: where the decay begins (the end of the warm-up).
    end_epoch: where it reaches `final_fraction` (the end of training).
    final_fraction: the last learning rate as a fraction of the peak.
  """

  start_epoch: float
  end_epoch: float
  final_fraction: float = 0.0

  def __post_init__(self):
    check(self.end_epoch > self.start_epoch, "schedule: the cosine decay must end after it starts")
    check(
      0.0 <= self.final_fraction < 1.0,
      f"schedule.final_fraction: must be in [0, 1), got {self.final_fraction}",
    )

  def multiplier(self, epoch, xp: Any = np):
    progress = _progress(epoch, self.start_epoch, self.end_epoch, xp)
    return self.final_fraction + (1.0 - self.final_fraction) * half_cosine(progress, xp)

  def knots(self):
    return (self.start_epoch,)

  def constant_between(self, start, end):
    return end <= self.start_epoch


def _progress(epoch, start: float, end: float, xp: Any):
  """How far `epoch` is from `start` (0) to `end` (1), unclipped."""
  return (xp.asarray(epoch, dtype=float) - start) / (end - start)


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
  """A polynomial decay from the peak to `final_fraction` of it, as MLPerf's LARS
  ResNet-50 runs use (power 2): `f + (1 - f) (1 - progress)^power`.

  Args:
    start_epoch: where the decay begins (the end of the warm-up).
    end_epoch: where it reaches `final_fraction` (the end of training).
    power: the polynomial's degree (1: linear).
    final_fraction: the last learning rate as a fraction of the peak.
  """

  start_epoch: float
  end_epoch: float
  power: float = 2.0
  final_fraction: float = 0.0

  def __post_init__(self):
    check(self.end_epoch > self.start_epoch, "schedule: the poly decay must end after it starts")
    check(self.power > 0, f"schedule.power: must be positive, got {self.power}")
    check(
      0.0 <= self.final_fraction < 1.0,
      f"schedule.final_fraction: must be in [0, 1), got {self.final_fraction}",
    )

  def multiplier(self, epoch, xp: Any = np):
    progress = _progress(epoch, self.start_epoch, self.end_epoch, xp)
    remaining = 1.0 - xp.clip(progress, 0.0, 1.0)
    return self.final_fraction + (1.0 - self.final_fraction) * remaining**self.power

  def knots(self):
    return (self.start_epoch,)

  def constant_between(self, start, end):
    return end <= self.start_epoch


@dataclasses.dataclass(frozen=True)
class WarmRestarts(Schedule):
  """SGDR (Loshchilov & Hutter 2017): cosine cycles restarted at the peak.

  Args:
    cycle_epochs: length of the first cycle.
    cycle_mult: each cycle is this many times longer than the previous one.
    final_fraction: the learning rate at the end of each cycle, over the peak.
    start_epoch: where the first cycle begins (the end of the warm-up).
    end_epoch: the last epoch.
  """

  cycle_epochs: float
  cycle_mult: float = 1.0
  final_fraction: float = 0.0
  start_epoch: float = 0.0
  end_epoch: float = math.inf

  def __post_init__(self):
    check(
      self.cycle_epochs > 0, f"schedule.cycle_epochs: must be positive, got {self.cycle_epochs}"
    )
    check(self.cycle_mult >= 1.0, f"schedule.cycle_mult: must be >= 1, got {self.cycle_mult}")
    check(
      0.0 <= self.final_fraction < 1.0,
      f"schedule.final_fraction: must be in [0, 1), got {self.final_fraction}",
    )

  def _restarts(self) -> tuple[float, ...]:
    starts, start, length = [], self.start_epoch, self.cycle_epochs
    while start < self.end_epoch and len(starts) < 10_000:
      starts.append(start)
      start, length = start + length, length * self.cycle_mult
    return tuple(starts)

  def multiplier(self, epoch, xp: Any = np):
    epoch = xp.asarray(epoch, dtype=float)
    cycle_start = xp.zeros_like(epoch) + self.start_epoch
    cycle_len = xp.zeros_like(epoch) + self.cycle_epochs
    length = self.cycle_epochs
    for start in self._restarts()[1:]:
      cycle_start = xp.where(epoch >= start, start, cycle_start)
      length *= self.cycle_mult
      cycle_len = xp.where(epoch >= start, length, cycle_len)
    progress = (epoch - cycle_start) / cycle_len
    return self.final_fraction + (1.0 - self.final_fraction) * half_cosine(progress, xp)

  def breakpoints(self):
    return self._restarts()[1:]

  def knots(self):
    return self._restarts()

  def constant_between(self, start, end):
    return end <= self.start_epoch


@dataclasses.dataclass(frozen=True)
class OneCycle(Schedule):
  """One-cycle (Smith 2018): up from `1/div_factor` of the peak, then down.

  Cosine interpolation as `optax.cosine_onecycle_schedule`; the momentum, if
  `momentum_range=(low, high)` is given, moves the other way (high -> low ->
  high), the policy fast.ai popularised.

  Args:
    end_epoch: the last epoch.
    pct_start: fraction of training spent rising.
    div_factor: the first learning rate is the peak over this.
    final_div_factor: the last learning rate is the first one over this.
    momentum_range: (low, high) momentum, or None to keep it fixed.
  """

  end_epoch: float
  pct_start: float = 0.3
  div_factor: float = 25.0
  final_div_factor: float = 1e4
  momentum_range: tuple[float, float] | None = None

  def __post_init__(self):
    check(
      0.0 < self.pct_start < 1.0, f"schedule.pct_start: must be in (0, 1), got {self.pct_start}"
    )
    check(
      self.div_factor >= 1.0 and self.final_div_factor >= 1.0,
      "schedule.div_factor and schedule.final_div_factor: must be >= 1",
    )
    if self.momentum_range is not None:
      low, high = self.momentum_range
      check(
        0.0 <= low <= high < 1.0,
        f"schedule.momentum_range: need 0 <= low <= high < 1, got {self.momentum_range}",
      )
      object.__setattr__(self, "momentum_range", (float(low), float(high)))

  @property
  def peak_epoch(self) -> float:
    return self.pct_start * self.end_epoch

  def _shape(self, epoch, first, peak, last, xp):
    """Cosine from `first` up to `peak` at the peak epoch, then to `last`."""
    epoch = xp.asarray(epoch, dtype=float)
    rise = first + (peak - first) * (1.0 - half_cosine(epoch / self.peak_epoch, xp))
    fall_progress = (epoch - self.peak_epoch) / (self.end_epoch - self.peak_epoch)
    fall = last + (peak - last) * half_cosine(fall_progress, xp)
    return xp.where(epoch < self.peak_epoch, rise, fall)

  def multiplier(self, epoch, xp: Any = np):
    first = 1.0 / self.div_factor
    return self._shape(epoch, first, 1.0, first / self.final_div_factor, xp)

  def momentum(self, epoch, base, xp: Any = np):
    if self.momentum_range is None:
      return super().momentum(epoch, base, xp)
    low, high = self.momentum_range
    return self._shape(epoch, high, low, high, xp)

  def knots(self):
    return (0.0, self.peak_epoch)

  def constant_between(self, start, end):
    return False

  @property
  def drives_momentum(self) -> bool:
    return self.momentum_range is not None


@dataclasses.dataclass(frozen=True)
class InverseSqrt(Schedule):
  """The transformer schedule's decay: `sqrt(timescale / epoch)` after `timescale`."""

  timescale_epochs: float

  def __post_init__(self):
    check(
      self.timescale_epochs > 0,
      f"schedule.timescale_epochs: must be positive, got {self.timescale_epochs}",
    )

  def multiplier(self, epoch, xp: Any = np):
    epoch = xp.asarray(epoch, dtype=float)
    return xp.sqrt(self.timescale_epochs / xp.maximum(epoch, self.timescale_epochs))

  def knots(self):
    return (self.timescale_epochs,)

  def constant_between(self, start, end):
    return end <= self.timescale_epochs
