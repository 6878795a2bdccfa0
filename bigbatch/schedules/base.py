"""The `Schedule` interface, the constant schedule and the warm-up wrapper."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def check(condition: bool, message: str) -> None:
  """Raises `ValueError(message)` unless `condition`; messages name the config field."""
  if not condition:
    raise ValueError(message)


def half_cosine(progress, xp):
  """1 -> 0 along half a cosine wave as `progress` goes 0 -> 1."""
  return 0.5 * (1.0 + xp.cos(math.pi * xp.clip(progress, 0.0, 1.0)))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Base class: a constant learning rate.

  Subclasses override `multiplier` and, where they have them, the epochs at
  which the learning rate jumps (`breakpoints`) or peaks (`knots`).
  """

  def multiplier(self, epoch, xp: Any = np):
    """Learning rate at `epoch` as a fraction of the peak learning rate."""
    return xp.ones_like(xp.asarray(epoch, dtype=float))

  def momentum(self, epoch, base: float, xp: Any = np):
    """Momentum at `epoch`; `base` is the configured momentum."""
    return xp.full_like(xp.asarray(epoch, dtype=float), base)

  def breakpoints(self) -> tuple[float, ...]:
    """Epochs where the learning rate jumps: phases always split there."""
    return ()

  def knots(self) -> tuple[float, ...]:
    """Epochs where the learning rate has a kink or a local maximum."""
    return self.breakpoints()

  def constant_between(self, start: float, end: float) -> bool:
    """Whether the learning rate and momentum are constant on [start, end)."""
    del start, end
    return True

  @property
  def drives_momentum(self) -> bool:
    return False

  @property
  def period_epochs(self) -> float | None:
    """The length of one cycle, for a learning rate that goes up and down periodically
    within a phase (a cyclical schedule); None otherwise."""
    return None


Constant = Schedule


@dataclasses.dataclass(frozen=True)
class Warmup(Schedule):
  """A linear warm-up from `init_fraction` of the peak, in front of `inner`.

  The warm-up multiplies `inner`; decays that are relative in time (cosine,
  exponential, SGDR) are built by `make_schedule` to start at its end, as
  `optax.warmup_cosine_decay_schedule` does. Step boundaries stay absolute.
  """

  inner: Schedule
  epochs: float
  init_fraction: float = 0.0

  def __post_init__(self):
    check(self.epochs > 0, f"schedule.warmup_epochs: must be positive, got {self.epochs}")
    check(
      0.0 <= self.init_fraction <= 1.0,
      f"schedule.warmup_init: must be in [0, 1], got {self.init_fraction}",
    )

  def multiplier(self, epoch, xp: Any = np):
    epoch = xp.asarray(epoch, dtype=float)
    ramp = self.init_fraction + (1.0 - self.init_fraction) * xp.clip(epoch / self.epochs, 0.0, 1.0)
    return ramp * self.inner.multiplier(epoch, xp)

  def momentum(self, epoch, base, xp: Any = np):
    return self.inner.momentum(epoch, base, xp)

  def breakpoints(self):
    return tuple(sorted({self.epochs, *self.inner.breakpoints()}))

  def knots(self):
    return tuple(sorted({self.epochs, *self.inner.knots()}))

  def constant_between(self, start, end):
    return start >= self.epochs and self.inner.constant_between(start, end)

  @property
  def drives_momentum(self) -> bool:
    return self.inner.drives_momentum

  @property
  def period_epochs(self) -> float | None:
    return self.inner.period_epochs
