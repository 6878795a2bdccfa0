"""A plan's parts: phases of training at one batch size each, and the plan that holds them.

`bigbatch.plan.planner` derives plans from a schedule; `bigbatch.plan.adaptive` builds
them from decisions taken while training. Both describe them with these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from bigbatch.schedules import Schedule

__all__ = ["SCHEDULED_FIELDS", "Phase", "Plan", "steps_to_end"]

SCHEDULED_FIELDS = ("learning_rate", "momentum", "weight_decay", "batch_size", "b2", "eps")


def steps_to_end(position: int, batch: int, budget: int, baseline_batch: int) -> int:
  """The steps of a plan's last phase: whole steps of `batch` from example `position`
  that end nearest where the baseline ends (on a tie, the fewer), and at least one.

  Every other phase rounds its steps up and the next one starts where it stopped, so
  nothing is lost between phases. The last has no next phase to take its rounding:
  rounded up, a step of a large batch would pass the budget by up to a whole batch
  (3 epochs of 4,096 examples with 800 in the last step would end at epoch 3.19), so
  it ends within half a step of the baseline's end instead, before or after it, and
  the plan's table says where. A phase the schedule asks for keeps one step however
  little of the budget is left for it: its batch and rate are part of the plan. At
  the baseline's batch throughout this is the baseline's count, step for step.

  Args:
    position: the phase's first example.
    batch: its batch size.
    budget: the examples of the budget (epochs x N).
    baseline_batch: the baseline's batch; the baseline ends at the budget rounded up to
      whole steps of it.

  Returns:
    The steps; 0 where the baseline's end is at or before `position`.
  """
  end = -(-budget // baseline_batch) * baseline_batch
  if end <= position:
    return 0
  whole, part = divmod(end - position, batch)
  return max(whole + (2 * part > batch), 1)


@dataclasses.dataclass(frozen=True)
class Phase:
  """A stretch of training at one batch size.

  Epochs are the nominal boundaries (where the baseline's fall); the phase's
  first example is the first one at or after `start_epoch * N`. Learning rate
  and momentum are given at the phase's first and last step; inside the phase
  they follow `learning_rate_fn` / `momentum_fn` of the step within the phase.
  The noise scale is the exact `lr (N/B - 1) / (1 - m)` at the first step (under
  Adam's square-root rules `lr sqrt(N/B - 1) / (1 - m)`, the quantity they hold), and
  `noise_deviation` its relative difference from the baseline's there. `b2` and
  `eps` are Adam's, as the plan's `adam_rule` moves them (None for SGD).
  """

  index: int
  start_epoch: float
  end_epoch: float
  first_step: int
  steps: int
  first_example: int
  batch_size: int
  learning_rate: float
  final_learning_rate: float
  momentum: float
  final_momentum: float
  weight_decay: float
  noise_scale: float
  noise_deviation: float
  baseline_learning_rate: float
  baseline_noise_scale: float
  baseline_steps: int
  learning_rate_fn: Callable[[Any], Any] = dataclasses.field(repr=False, compare=False)
  momentum_fn: Callable[[Any], Any] = dataclasses.field(repr=False, compare=False)
  micro_batches: int = 1
  b2: float | None = None
  eps: float | None = None

  @property
  def end_step(self) -> int:
    """The first step after this phase."""
    return self.first_step + self.steps

  @property
  def constant_learning_rate(self) -> bool:
    return self.learning_rate == self.final_learning_rate

  def to_dict(self) -> dict[str, Any]:
    return {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.endswith("_fn")
    }


@dataclasses.dataclass(frozen=True)
class Plan:
  """Phases of training, with the baseline (fixed batch) they were derived from."""

  phases: tuple[Phase, ...]
  dataset_size: int
  epochs: float
  strategy: str
  noise_rule: str
  max_batch_size: int | None
  baseline_total_steps: int
  baseline_batch_size: int
  baseline_learning_rate: float
  baseline_momentum: float
  baseline_schedule: Schedule = dataclasses.field(repr=False)
  adam_rule: str | None = None  # `bigbatch.plan.adam_rules`; None: SGD's, the paper's
  tokens_per_example: int | None = None  # a language model's sequence length

  @property
  def total_steps(self) -> int:
    return sum(p.steps for p in self.phases)

  @property
  def saving(self) -> float:
    """How many times fewer parameter updates than the baseline."""
    return self.baseline_total_steps / self.total_steps

  @property
  def noise_deviations(self) -> tuple[float, ...]:
    return tuple(p.noise_deviation for p in self.phases)

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """The distinct batch sizes, in order of first use."""
    return tuple(dict.fromkeys(p.batch_size for p in self.phases))

  def baseline_at(self, epoch) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's learning rate and momentum at `epoch` (array-like)."""
    epoch = np.asarray(epoch, np.float64)
    return (
      self.baseline_learning_rate * self.baseline_schedule.multiplier(epoch),
      self.baseline_schedule.momentum(epoch, self.baseline_momentum),
    )

  def phase_at(self, step: int) -> Phase:
    """The phase containing `step` (the last phase for steps past the end)."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    starts = [p.first_step for p in self.phases]
    return self.phases[int(np.searchsorted(starts, step, side="right")) - 1]

  def examples_before(self, step: int) -> int:
    """Examples consumed before `step` (all of them for steps past the end): the one place
    steps become data positions."""
    if step >= self.total_steps:
      last = self.phases[-1]
      return last.first_example + last.steps * last.batch_size
    phase = self.phase_at(step)
    return phase.first_example + (step - phase.first_step) * phase.batch_size

  def schedule(self, name: str) -> optax.Schedule:
    """An optax schedule (step -> value) of one field, across all phases.

    Args:
      name: one of `SCHEDULED_FIELDS` (`b2` and `eps`: a plan with an Adam rule).

    Returns:
      A function of the global step that is jit-compatible: the value of the
      phase containing the step, from that phase's within-phase schedule.
    """
    if name not in SCHEDULED_FIELDS:
      raise ValueError(f"plan field {name!r} is not one of {', '.join(SCHEDULED_FIELDS)}")
    if name in ("b2", "eps") and self.adam_rule is None:
      raise ValueError(f"plan field {name!r}: the plan has no Adam rule (adam_rule)")
    if name == "learning_rate":
      parts = [p.learning_rate_fn for p in self.phases]
    elif name == "momentum":
      parts = [p.momentum_fn for p in self.phases]
    else:
      parts = [optax.constant_schedule(getattr(p, name)) for p in self.phases]
    return optax.join_schedules(parts, [p.first_step for p in self.phases[1:]])

  def to_dict(self) -> dict[str, Any]:
    return {
      "phases": [p.to_dict() for p in self.phases],
      "total_steps": self.total_steps,
      "baseline_total_steps": self.baseline_total_steps,
      "saving": self.saving,
      "dataset_size": self.dataset_size,
      "epochs": self.epochs,
      "strategy": self.strategy,
      "noise_rule": self.noise_rule,
      "max_batch_size": self.max_batch_size,
      "baseline_batch_size": self.baseline_batch_size,
      "adam_rule": self.adam_rule,
      "tokens_per_example": self.tokens_per_example,
    }
