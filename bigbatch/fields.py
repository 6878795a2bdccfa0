"""The run fields of a training config: their types and ranges, checked in one place.

The planner and the optimizer check the fields they read (`bigbatch.config`).
This module checks the rest of what `bigbatch train` reads, before anything
long starts: a value that is the wrong type, out of range, or not a finite
number is a `ConfigError` naming the field and what it accepts. A NaN or an
infinity is refused in every field, since no field of a config means it:
`learning_rate=inf` would otherwise train into NaN, and `label_smoothing=2`
would train a model that gets worse while the checkpoint rotation deletes the
good checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from bigbatch.config import ConfigError
from bigbatch.models import COMPUTE_DTYPES

_Check = Callable[[str, Any], None]


def _number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int | None = None, *, optional: bool = False) -> _Check:
  """A whole number >= `low` (or None, if `optional`)."""

  def check(field: str, value: Any) -> None:
    if value is None and optional:
      return
    whole = _number(value) and float(value).is_integer()
    if not whole or (low is not None and value < low):
      bound = f" >= {low}" if low is not None else ""
      unset = " (or unset)" if optional else ""
      raise ConfigError(f"{field}: must be a whole number{bound}{unset}, got {value!r}")

  return check


def real(
  low: float | None = None, high: float | None = None, *, closed_high: bool = False
) -> _Check:
  """A finite number in [low, high) (or [low, high] with `closed_high`); `low` < 0 bars 0."""

  def check(field: str, value: Any) -> None:
    ok = _number(value) and math.isfinite(value)
    ok = ok and (low is None or value >= low)
    ok = ok and (high is None or (value <= high if closed_high else value < high))
    if not ok:
      interval = f"[{low}, {high}{']' if closed_high else ')'}"
      raise ConfigError(f"{field}: must be a number in {interval}, got {value!r}")

  return check


def positive(field: str, value: Any) -> None:
  if not (_number(value) and math.isfinite(value) and value > 0):
    raise ConfigError(f"{field}: must be a positive number, got {value!r}")


def one_of(*allowed: Any) -> _Check:
  def check(field: str, value: Any) -> None:
    if value not in allowed:
      raise ConfigError(f"{field}: {value!r} is not one of {', '.join(map(str, allowed))}")

  return check


def boolean(field: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ConfigError(f"{field}: must be true or false, got {value!r}")


# Field -> check, for every field of a training config outside the planner's and
# optimizer's. A field a config leaves out takes the trainer's default.
RUN_FIELDS: dict[str, _Check] = {
  "seed": integer(0),
  "num_epochs": positive,
  "batch_size": integer(1),
  "ghost_batch_size": integer(1, optional=True),
  "compute_dtype": one_of(*COMPUTE_DTYPES),
  "label_smoothing": real(0.0, 1.0),
  "eval_every_epochs": positive,
  "eval_batch_size": integer(1),
  "eval_train_examples": integer(0),
  "log_every_steps": integer(1),
  "checkpoint_every_steps": integer(1),
  "keep_checkpoints": integer(1),
  "snapshots": one_of("auto", "on", "off"),
  "background_compile": one_of("auto", "on", "off", True, False),
  "dataset.num_train_examples": integer(1),
  "dataset.generator_seed": integer(0),
  "dataset.image_size": integer(1, optional=True),
  "mesh.data": integer(-1),
  "mesh.fsdp": integer(1),
  "mesh.fsdp_min_size": integer(0),
  "memory.budget_bytes": integer(1, optional=True),
  "memory.cpu_fraction": real(0.0, 1.0, closed_high=True),
  "memory.margin": real(0.0, 1.0),
  "noise.measure": boolean,
  "noise.horizon_epochs": positive,
  "noise.confidence": real(0.5, 1.0),
  "noise.warn_ratio": real(1.0),
  "distributed.num_processes": integer(1, optional=True),
  "distributed.process_id": integer(0, optional=True),
}


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key in node:
    value = node[key]
    if hasattr(value, "keys"):
      flat |= _flatten(value, f"{prefix}{key}.")
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _non_finite(value: Any) -> bool:
  if isinstance(value, tuple | list):
    return any(_non_finite(v) for v in value)
  return isinstance(value, float) and not math.isfinite(value)


def check_run_fields(config: Mapping[str, Any]) -> None:
  """Checks every number of `config` is finite and every run field is in range.

  Raises:
    ConfigError: naming the first bad field and what it accepts.
  """
  flat = _flatten(config)
  for field, value in flat.items():
    if _non_finite(value):
      raise ConfigError(f"{field}: must be a finite number, got {value!r}")
  for field, check in RUN_FIELDS.items():
    if field in flat:
      check(field, flat[field])
  mesh_data = flat.get("mesh.data", -1)
  if mesh_data == 0:
    raise ConfigError("mesh.data: must be -1 (all devices) or a positive number, got 0")
  processes, process = flat.get("distributed.num_processes"), flat.get("distributed.process_id")
  if processes is not None and process is not None and process >= processes:
    raise ConfigError(
      f"distributed.process_id: must be below distributed.num_processes ({processes}), "
      f"got {process}"
    )
