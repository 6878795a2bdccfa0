"""Hyperparameters that are floats, optax schedules or phase plans."""

from __future__ import annotations

from typing import Any, Union

import jax
import optax

from bigbatch.planner import Plan

Hyperparam = Union[float, jax.Array, optax.Schedule, Plan]


def resolve(value: Hyperparam, name: str, plan_field: str, low: float | None = None,
            high: float | None = None) -> float | jax.Array | optax.Schedule:
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


def current_hyperparams(opt_state: Any) -> dict[str, jax.Array]:
  """The learning rate and momentum an optimizer used at its last update.

  Works on the state of any bigbatch optimizer, also inside `optax.chain` or
  other wrappers. Adam's `b1` is reported as `momentum`, so a trainer can log
  one key whatever the optimizer. Before the first update the values are
  those of step 0.

  Returns:
    A dict with `learning_rate` and `momentum` (and `weight_decay` where the
    optimizer has it); hyperparameters the state does not hold are left out.
  """
  found = {}
  for key, alias in (("learning_rate", "learning_rate"), ("momentum", "momentum"),
                     ("b1", "momentum"), ("weight_decay", "weight_decay")):
    value = optax.tree.get(opt_state, key, None)
    if value is not None and alias not in found:
      found[alias] = value
  return found
