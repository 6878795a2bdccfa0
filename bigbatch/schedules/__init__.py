"""Learning-rate schedules as users know them, written as functions of the epoch.

The planner needs the baseline schedule in batch-invariant units: a schedule
over epochs says the same thing at any batch size, and the conversion to
steps happens in the planner alone. Each schedule returns the learning rate
as a fraction of its peak (`multiplier`), and may also drive the momentum
(one-cycle). Every function takes an array module `xp` so the same code runs
in NumPy while planning and in `jax.numpy` inside an optax schedule.

Modules: `base` (the `Schedule` interface, constant, warm-up), `decay` (the
decays from the peak) and `cyclical` (Smith's cyclical rates); this package
builds any of them by name (`make_schedule`).
"""

from __future__ import annotations

from collections.abc import Sequence

from bigbatch.schedules.base import Constant, Schedule, Warmup, check
from bigbatch.schedules.cyclical import MODES as CYCLICAL_MODES
from bigbatch.schedules.cyclical import Cyclical
from bigbatch.schedules.decay import (
  Cosine,
  Exponential,
  InverseSqrt,
  OneCycle,
  Polynomial,
  StepDecay,
  WarmRestarts,
)

SCHEDULES = (
  "constant",
  "step",
  "exponential",
  "cosine",
  "poly",
  "sgdr",
  "one_cycle",
  "inverse_sqrt",
  *CYCLICAL_MODES,
)


def _inner_schedule(name: str, epochs: float, start: float, f: dict) -> Schedule:
  """The schedule `name` (before any warm-up) from `make_schedule`'s arguments `f`;
  `start` is where the warm-up ends and a decay begins."""
  if name == "constant":
    inner = Schedule()
  elif name == "step":
    check(len(f["boundaries"]) > 0, "schedule.boundaries: step decay needs at least one boundary")
    inner = StepDecay(
      tuple(f["boundaries"]),
      f["factor"] if isinstance(f["factor"], (int, float)) else tuple(f["factor"]),
    )
    check(
      inner.boundaries[-1] < epochs,
      f"schedule.boundaries: must lie before the last epoch ({epochs}), got {inner.boundaries}",
    )
  elif name == "exponential":
    inner = Exponential(f["rate"], f["every_epochs"], f["staircase"], start, epochs)
  elif name == "cosine":
    inner = Cosine(start, epochs, f["final_fraction"])
  elif name == "poly":
    inner = Polynomial(start, epochs, f["power"], f["final_fraction"])
  elif name == "sgdr":
    check(f["cycle_epochs"] > 0, "schedule.cycle_epochs: sgdr needs a positive first cycle")
    inner = WarmRestarts(f["cycle_epochs"], f["cycle_mult"], f["final_fraction"], start, epochs)
  elif name == "one_cycle":
    inner = OneCycle(
      epochs,
      f["pct_start"],
      f["div_factor"],
      f["final_div_factor"],
      None if f["momentum_range"] is None else tuple(f["momentum_range"]),
    )
  elif name == "inverse_sqrt":
    timescale = f["timescale_epochs"] or start
    check(timescale > 0, "schedule.timescale_epochs: inverse_sqrt needs a timescale or a warm-up")
    inner = InverseSqrt(timescale)
  elif name in CYCLICAL_MODES:
    inner = Cyclical(name, f["step_size_epochs"], f["base_fraction"], f["gamma"], epochs)
  else:
    raise ValueError(f"schedule.name: {name!r} is not one of {', '.join(SCHEDULES)}")
  return inner


def make_schedule(
  name: str,
  epochs: float,
  *,
  warmup_epochs: float = 0.0,
  warmup_init: float = 0.0,
  boundaries: Sequence[float] = (),
  factor: float | Sequence[float] = 10.0,
  rate: float = 0.97,
  every_epochs: float = 1.0,
  staircase: bool = False,
  final_fraction: float = 0.0,
  power: float = 2.0,
  cycle_epochs: float = 0.0,
  cycle_mult: float = 1.0,
  pct_start: float = 0.3,
  div_factor: float = 25.0,
  final_div_factor: float = 1e4,
  momentum_range: Sequence[float] | None = None,
  timescale_epochs: float = 0.0,
  step_size_epochs: float = 0.0,
  base_fraction: float = 0.25,
  gamma: float = 0.97,
) -> Schedule:
  """Builds a schedule by name, with an optional linear warm-up in front.

  Args:
    name: one of `SCHEDULES`.
    epochs: length of training, where the continuous decays end.
    warmup_epochs: linear warm-up length (0: none). Not with `one_cycle` or
      the cyclical schedules, whose rise is their warm-up.
    warmup_init: learning rate at epoch 0 as a fraction of the peak.
    boundaries, factor: `step`: epochs of the drops and the divisor(s).
    rate, every_epochs, staircase: `exponential`.
    final_fraction: `cosine`, `poly`, `sgdr`: last learning rate over the peak.
    power: `poly`: the degree of its decay (2 in MLPerf's LARS runs).
    cycle_epochs, cycle_mult: `sgdr`.
    pct_start, div_factor, final_div_factor, momentum_range: `one_cycle`.
    timescale_epochs: `inverse_sqrt` (default: `warmup_epochs`).
    step_size_epochs, base_fraction, gamma: `triangular`, `triangular2`,
      `exp_range` (`Cyclical`): the half-cycle (required), the lowest rate
      over the peak, and `exp_range`'s amplitude decay per epoch.

  Returns:
    The `Schedule`.

  Raises:
    ValueError: naming the field, for an unknown name or a bad value.
  """
  check(epochs > 0, f"num_epochs: must be positive, got {epochs}")
  check(warmup_epochs >= 0, f"schedule.warmup_epochs: must be >= 0, got {warmup_epochs}")
  check(
    warmup_epochs < epochs,
    f"schedule.warmup_epochs: must be shorter than training ({epochs} epochs)",
  )
  check(
    warmup_epochs == 0 or name not in ("one_cycle", *CYCLICAL_MODES),
    f"schedule.warmup_epochs: must be 0 with {name} (its rise is the warm-up)",
  )
  fields = dict(locals())  # every argument, for the schedule of `name` to take its own
  inner = _inner_schedule(name, float(epochs), float(warmup_epochs), fields)
  if warmup_epochs > 0:
    return Warmup(inner, float(warmup_epochs), warmup_init)
  return inner


__all__ = [
  "SCHEDULES",
  "Constant",
  "Cosine",
  "Cyclical",
  "Exponential",
  "InverseSqrt",
  "OneCycle",
  "Polynomial",
  "Schedule",
  "StepDecay",
  "WarmRestarts",
  "Warmup",
  "make_schedule",
]
