"""Hooks of the training loop: what runs beside the steps, each at its own times.

A hook is a function of a `StepInfo`, added with `Trainer.add_hook(fn, every=...)`
(as Levanter's `Trainer.add_hook`): `every=N` calls it after every N-th step,
`every="log"` after each step whose metrics row is written (its `values`),
and `every="eval"` after each evaluation, the final one included (`values`
with the evaluation's).
The trainer's own work beside the steps is made of hooks too: the snapshots
of a restarting schedule (`SnapshotHook`, every step, before any checkpoint
of the step), the warning that a batch is far above B_simple (`NoiseWarning`,
at each logged row) and an adaptive strategy's decisions (`PolicyHook`, at
each evaluation). A hook that returns an `adaptive.Decision` ends the phase
there and starts the decided one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from bigbatch.plan import adaptive, noise
from bigbatch.plan.phases import Phase, Plan

__all__ = ["MOMENTS", "Hook", "NoiseWarning", "PolicyHook", "SnapshotHook", "StepInfo"]

# The moments a hook can be called at besides every N steps.
MOMENTS = ("log", "eval")
# B_simple's estimate and its confidence bounds, as the step reports them
NOISE_KEYS = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """Where the loop is after a step.

  Attributes:
    step: the steps done (the state's step).
    state: the train state after it (on the devices; `jax.device_get` to read it).
    phase: the phase the step belonged to.
    plan: the plan being trained (an adaptive one grows as it goes).
    position: the examples consumed after the step; `previous_position` before it.
    values: the metrics row logged at this step (`every="log"` or `"eval"`), else None.
    say: writes a line beside the progress bar.
  """

  step: int
  state: Any
  phase: Phase
  plan: Plan
  position: int
  previous_position: int
  values: Mapping[str, Any] | None
  say: Callable[[str], None]

  @property
  def epoch(self) -> float:
    return self.position / self.plan.dataset_size


@dataclasses.dataclass(frozen=True)
class Hook:
  """`fn` called after every `every`-th step, or at every `"log"` or `"eval"`."""

  fn: Callable[[StepInfo], Any]
  every: int | str = 1

  def __post_init__(self) -> None:
    if not callable(self.fn):
      raise ValueError(f"hook: {self.fn!r} is not callable")
    steps = isinstance(self.every, int) and not isinstance(self.every, bool) and self.every >= 1
    if not steps and self.every not in MOMENTS:
      raise ValueError(f"every: must be a whole number >= 1, 'log' or 'eval', got {self.every!r}")

  def due(self, step: int, moment: str) -> bool:
    """Whether the hook runs at `step` at `moment` ("step", "log" or "eval")."""
    if isinstance(self.every, int):
      return moment == "step" and step % self.every == 0
    return moment == self.every


class SnapshotHook:
  """Keeps the snapshot of a cycle that ends at this step (`snapshots.Keeper`)."""

  every = 1

  def __init__(self, keeper: Any):
    self.keeper = keeper

  def __call__(self, info: StepInfo) -> None:
    position = info.position
    if info.step >= info.plan.total_steps:
      # the end of training ends the last cycle, also where the plan's last step stops
      # short of the budget's last example (`phases.steps_to_end`)
      position = max(position, self.keeper.ends[-1])
    cycle = self.keeper.due(info.previous_position, position)
    if cycle is not None:
      self.keeper.save(info.state, info.step, info.position, cycle)

  def close(self) -> None:
    self.keeper.close()


class NoiseWarning:
  """Says once a phase when its batch is far above B_simple's upper bound.

  Only once the smoothing has seen `horizon` examples, and only when the
  batch exceeds `ratio` x the upper bound (`noise.warn_ratio`).
  """

  every = "log"

  def __init__(self, horizon: float, ratio: float):
    self.horizon, self.ratio = horizon, ratio
    self.warned: set[int] = set()

  def __call__(self, info: StepInfo) -> None:
    values, phase = info.values or {}, info.phase
    if "grad_noise_scale_low" not in values:  # not measured
      return
    high = noise.known(values.get("grad_noise_scale_high"))
    settled = info.position >= self.horizon  # the EMA has seen a horizon
    far = high is not None and high > 0 and phase.batch_size > self.ratio * high
    if settled and far and phase.index not in self.warned:
      self.warned.add(phase.index)
      estimate = noise.known(values.get("grad_noise_scale"))
      info.say(noise.batch_above_noise_scale_note(phase.index, phase.batch_size, high, estimate))


class PolicyHook:
  """An adaptive strategy's decision at each evaluation (`adaptive.Policy.decide`)."""

  every = "eval"

  def __init__(self, policy: adaptive.Policy):
    self.policy = policy

  def __call__(self, info: StepInfo) -> adaptive.Decision | None:
    if info.step >= info.plan.total_steps:  # the final evaluation: nothing left to decide
      return None
    return self.policy.decide(info.step, info.position, info.phase, info.values)
