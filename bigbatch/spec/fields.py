"""The checks of a config's fields: each names the field and what it accepts.

A check takes the field's dotted name and its value, and returns the value in
its type (a whole number as an int, a real as a float) or raises a
`ConfigError` whose one-line message names the field. The specs
(`bigbatch.spec`) run them on every field they hold. A NaN or an infinity is
refused in every field, since no field of a config means it:
`learning_rate=inf` would otherwise train into NaN, and `label_smoothing=2`
would train a model that gets worse while the checkpoint rotation deletes the
good checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[str, Any], Any]


class ConfigError(ValueError):
  """A config field with a value bigbatch cannot use; the message names it."""


def _number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int | None = None, *, optional: bool = False) -> Check:
  """A whole number >= `low` (or None, if `optional`)."""

  def check(field: str, value: Any) -> int | None:
    if value is None and optional:
      return None
    whole = _number(value) and math.isfinite(value) and float(value).is_integer()
    if not whole or (low is not None and value < low):
      bound = f" >= {low}" if low is not None else ""
      unset = " (or unset)" if optional else ""
      raise ConfigError(f"{field}: must be a whole number{bound}{unset}, got {value!r}")
    return int(value)

  return check


def real(
  low: float | None = None,
  high: float | None = None,
  *,
  closed_high: bool = False,
  optional: bool = False,
) -> Check:
  """A finite number in [low, high) (or [low, high] with `closed_high`; None if `optional`)."""

  def check(field: str, value: Any) -> float | None:
    if value is None and optional:
      return None
    ok = _number(value) and math.isfinite(value)
    ok = ok and (low is None or value >= low)
    ok = ok and (high is None or (value <= high if closed_high else value < high))
    if not ok:
      interval = f"[{low}, {high}{']' if closed_high else ')'}"
      raise ConfigError(f"{field}: must be a number in {interval}, got {value!r}")
    return float(value)

  return check


def positive(field: str, value: Any) -> float:
  if not (_number(value) and math.isfinite(value) and value > 0):
    raise ConfigError(f"{field}: must be a positive number, got {value!r}")
  return float(value)


def one_of(*allowed: Any) -> Check:
  def check(field: str, value: Any) -> Any:
    if value not in allowed:
      raise ConfigError(f"{field}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return value

  return check


def boolean(field: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise ConfigError(f"{field}: must be true or false, got {value!r}")
  return value


def text(*, optional: bool = False) -> Check:
  """A non-empty string (or None, if `optional`)."""

  def check(field: str, value: Any) -> str | None:
    if value is None and optional:
      return None
    if not isinstance(value, str) or not value:
      unset = " (or unset)" if optional else ""
      raise ConfigError(f"{field}: must be a non-empty string{unset}, got {value!r}")
    return value

  return check


def numbers(field: str, value: Any) -> Any:
  """A list field (`boundaries`, `factor`, `momentum_range`) holds numbers only.

  The command line reads `--config.schedule.boundaries=abc` as the tuple
  ("abc",); a number is needed in every place.
  """
  if isinstance(value, tuple | list):
    if not all(_number(v) for v in value):
      raise ConfigError(f"{field}: {','.join(map(str, value))!r} is not a list of numbers")
    return tuple(value)
  return value


def names(*reserved: str) -> Check:
  """A list of distinct non-empty names, none of `reserved` (or None); the command line
  gives `a,b` as the tuple ("a", "b")."""

  def check(field: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
      return None
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, tuple | list) or not all(isinstance(v, str) and v for v in items):
      raise ConfigError(f"{field}: must be a list of names, got {value!r}")
    taken = [v for v in items if v in reserved]
    if taken:
      raise ConfigError(
        f"{field}: {taken[0]!r} is a batch's own key ({', '.join(reserved)}); name another"
      )
    if len(set(items)) != len(items):
      raise ConfigError(f"{field}: names {', '.join(items)} more than once")
    return tuple(items)

  return check


def non_finite(value: Any) -> bool:
  """Whether `value` (or a number in it, for a list) is a NaN or an infinity."""
  if isinstance(value, tuple | list):
    return any(non_finite(v) for v in value)
  return isinstance(value, float) and not math.isfinite(value)
