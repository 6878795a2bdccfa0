"""Hyperparameters that are floats, optax schedules or phase plans."""

from __future__ import annotations

import jax
import optax

from bigbatch.plan.phases import Plan

Hyperparam = float | jax.Array | optax.Schedule | Plan


def resolve(
  value: Hyperparam, name: str, plan_field: str, low: float | None = None, high: float | None = None
) -> float | jax.Array | optax.Schedule:
  """Turns a hyperparameter into what `optax.inject_hyperparams` takes.

  A `Plan` becomes the schedule of its field `plan_field` (the value of the
  phase, and of that phase's own schedule, containing the step); schedules
  and numbers pass through. Plain numbers are checked against [low, high).

  Raises:
    ValueError: naming `name`, for a number outside its range.
  """
  if isinstance(value, Plan):
    return value.schedule(plan_field)
  if callable(value):
    return value
  if isinstance(value, (int, float)):
    if (low is not None and value < low) or (high is not None and value >= high):
      bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'})"
      raise ValueError(f"{name}: must be in {bounds}, got {value}")
    return float(value)
  return value


def is_zero(value: Hyperparam) -> bool:
  """Whether a hyperparameter is the constant 0, so its transform can be left out."""
  return isinstance(value, (int, float)) and value == 0
