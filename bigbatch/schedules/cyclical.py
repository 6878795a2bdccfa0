"""Cyclical learning rates (Smith 2015): triangular, triangular2 and exp_range.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2015), lets the
rate go back and forth between `base_lr` and `max_lr` along a triangle wave
of half-period `s` (the step size), at iteration `t`:

    cycle = floor(1 + t / (2 s))
    x = |t / s - 2 cycle + 1|
    lr = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale

with `scale` 1 (`triangular`), `1 / 2^(cycle - 1)` (`triangular2`, the
amplitude halves every cycle) or `gamma^t` (`exp_range`). Here, as for every
bigbatch schedule, `t` is the epoch and the value is a fraction of the peak:
`max_lr` is the config's learning rate and `base_lr` is `base_fraction` of it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bigbatch.schedules.base import Schedule, check

MODES = ("triangular", "triangular2", "exp_range")


@dataclasses.dataclass(frozen=True)
class Cyclical(Schedule):
  """A cyclical learning rate, starting at `base_fraction` of the peak at epoch 0.

  Args:
    mode: `triangular`, `triangular2` or `exp_range`.
    step_size_epochs: the half-cycle `s`, in epochs (Smith suggests 2 to 10).
    base_fraction: `base_lr / max_lr`, in [0, 1); Smith's rule of thumb puts
      `base_lr` at a third or a quarter of `max_lr`.
    gamma: `exp_range`'s decay of the amplitude, per epoch, in (0, 1]. Smith's
      `gamma^t` counts iterations; per epoch it means the same thing at every
      batch size, which a plan that grows the batch needs (0.97 per epoch is
      0.99994 per iteration at 500 iterations an epoch).
    end_epoch: the last epoch (where the list of `knots` stops).
  """

  mode: str
  step_size_epochs: float
  base_fraction: float = 0.25
  gamma: float = 0.97
  end_epoch: float = math.inf

  def __post_init__(self):
    check(self.mode in MODES, f"schedule.name: {self.mode!r} is not one of {', '.join(MODES)}")
    check(
      self.step_size_epochs > 0,
      f"schedule.step_size_epochs: {self.mode} needs a positive half-cycle, got "
      f"{self.step_size_epochs} (Smith suggests 2 to 10 epochs)",
    )
    check(
      0.0 <= self.base_fraction < 1.0,
      f"schedule.base_fraction: must be in [0, 1), got {self.base_fraction}",
    )
    check(0.0 < self.gamma <= 1.0, f"schedule.gamma: must be in (0, 1], got {self.gamma}")

  def multiplier(self, epoch, xp: Any = np):
    t = xp.asarray(epoch, dtype=float)
    s = self.step_size_epochs
    cycle = xp.floor(1.0 + t / (2.0 * s))
    x = xp.abs(t / s - 2.0 * cycle + 1.0)
    if self.mode == "triangular2":
      scale = 1.0 / 2.0 ** (cycle - 1.0)
    elif self.mode == "exp_range":
      scale = self.gamma**t
    else:
      scale = 1.0
    return self.base_fraction + (1.0 - self.base_fraction) * xp.maximum(0.0, 1.0 - x) * scale

  def knots(self):
    # every corner of the triangle wave: troughs at even multiples of s, peaks at odd ones
    last = min(self.end_epoch, 10_000 * self.step_size_epochs)
    count = math.floor(last / self.step_size_epochs)
    return tuple(float(k * self.step_size_epochs) for k in range(count + 1))

  def constant_between(self, start, end):
    return False

  @property
  def period_epochs(self) -> float:
    return 2.0 * self.step_size_epochs
