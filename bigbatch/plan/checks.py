"""The phase planner's checks: each argument of `plan_phases` against what it allows.

Every mistake raises `PlanError` naming the argument and what is allowed, before any
phase is built, e.g. `max_batch_size: 1000 is not a multiple of batch_multiple=128`.
"""

from __future__ import annotations

import numpy as np

from bigbatch.plan import adam_rules

__all__ = ["NOISE_RULES", "STRATEGIES", "PlanError", "check", "validate"]

STRATEGIES = ("decay_lr", "increase_batch", "hybrid", "accumulate", "ramp")
NOISE_RULES = ("approx", "exact")


class PlanError(ValueError):
  """Input the planner cannot turn into a plan; the message names the field."""


def check(condition: bool, field: str, message: str) -> None:
  """A `PlanError` "field: message" unless `condition` holds."""
  if not condition:
    raise PlanError(f"{field}: {message}")


def validate(
  *,
  dataset_size,
  epochs,
  learning_rate,
  batch_size,
  momentum,
  weight_decay,
  strategy,
  max_batch_size,
  batch_multiple,
  noise_rule,
  min_phase_epochs,
  schedule,
  adam_rule,
  b2,
  eps,
  ramp,
):
  """Raises `PlanError` naming the first argument of `plan_phases` no plan can use."""
  del schedule  # checked when it was built
  check(
    isinstance(dataset_size, (int, np.integer)) and dataset_size > 0,
    "dataset_size",
    f"must be a positive integer, got {dataset_size!r}",
  )
  check(epochs > 0, "epochs", f"must be positive, got {epochs}")
  check(learning_rate > 0, "learning_rate", f"must be > 0, got {learning_rate}")
  check(0.0 <= momentum < 1.0, "momentum", f"must be in [0, 1), got {momentum}")
  check(weight_decay >= 0.0, "weight_decay", f"must be >= 0, got {weight_decay}")
  _validate_batch(dataset_size, batch_size, batch_multiple)
  check(strategy in STRATEGIES, "strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
  check(
    noise_rule in NOISE_RULES,
    "noise_rule",
    f"{noise_rule!r} is not one of {', '.join(NOISE_RULES)}",
  )
  _validate_cap(strategy, max_batch_size, batch_size, batch_multiple)
  check(
    min_phase_epochs is None or 0 < min_phase_epochs <= epochs,
    "min_phase_epochs",
    f"must be in (0, epochs={epochs}], got {min_phase_epochs}",
  )
  _validate_adam(adam_rule, b2, eps)
  _validate_ramp(strategy, ramp, epochs, batch_size, batch_multiple, dataset_size)


def _validate_ramp(strategy, ramp, epochs, batch_size, batch_multiple, dataset_size) -> None:
  """A ramp: (epoch, batch) pairs, the epochs rising inside training, the batches whole
  multiples of `batch_multiple` that never fall below the one before."""
  check(strategy == "ramp" or not ramp, "ramp", f"only with strategy 'ramp', not {strategy!r}")
  if strategy != "ramp":
    return
  check(bool(ramp), "ramp", "strategy 'ramp' needs (epoch, batch) pairs")
  before_epoch, before_batch = 0.0, batch_size
  for pair in ramp:
    check(len(pair) == 2, "ramp", f"each entry is (epoch, batch), got {pair!r}")
    epoch, batch = pair
    check(
      before_epoch < epoch < epochs,
      "ramp",
      f"epoch {epoch:g} is not in ({before_epoch:g}, {epochs:g})",
    )
    whole = float(batch).is_integer() and batch % batch_multiple == 0
    check(whole and before_batch <= batch <= dataset_size, "ramp",
           f"batch {batch:g} must be a multiple of {batch_multiple} from {before_batch:,} "
           f"to the dataset's {dataset_size:,}")  # fmt: skip
    before_epoch, before_batch = epoch, batch


def _validate_adam(adam_rule, b2, eps) -> None:
  """An Adam rule, with the b2 and eps it starts from."""
  check(
    adam_rule is None or adam_rule in adam_rules.ADAM_RULES,
    "adam_rule",
    f"{adam_rule!r} is not one of {', '.join(adam_rules.ADAM_RULES)}",
  )
  # an optimizer without b2 and eps (LARS, Lion, Muon) passes None: only a rule moving
  # them needs them
  if adam_rule is not None and (b2 is not None or adam_rules.rule(adam_rule).moves_betas):
    check(b2 is not None and 0.0 <= b2 < 1.0, "b2", f"must be in [0, 1), got {b2}")
    check(eps is not None and eps >= 0.0, "eps", f"must be >= 0, got {eps}")


def _validate_batch(dataset_size, batch_size, batch_multiple) -> None:
  """The initial batch: a positive whole multiple of `batch_multiple`, within the dataset."""
  check(
    isinstance(batch_multiple, (int, np.integer)) and batch_multiple >= 1,
    "batch_multiple",
    f"must be a positive integer, got {batch_multiple!r}",
  )
  check(
    isinstance(batch_size, (int, np.integer)) and batch_size >= 1,
    "batch_size",
    f"must be a positive integer, got {batch_size!r}",
  )
  check(
    batch_size <= dataset_size,
    "batch_size",
    f"{batch_size} is larger than the dataset ({dataset_size:,} examples)",
  )
  check(
    batch_size % batch_multiple == 0,
    "batch_size",
    f"{batch_size} is not a multiple of batch_multiple={batch_multiple}",
  )


def _validate_cap(strategy, max_batch_size, batch_size, batch_multiple) -> None:
  """The cap: a whole multiple of `batch_multiple` from the initial batch up; needed by
  the strategies that stop growing the batch at it."""
  if max_batch_size is not None:
    check(
      isinstance(max_batch_size, (int, np.integer)),
      "max_batch_size",
      f"must be an integer, got {max_batch_size!r}",
    )
    check(
      max_batch_size >= batch_size,
      "max_batch_size",
      f"{max_batch_size} is below the initial batch_size {batch_size}",
    )
    check(
      max_batch_size % batch_multiple == 0,
      "max_batch_size",
      f"{max_batch_size} is not a multiple of batch_multiple={batch_multiple}",
    )
  check(
    strategy not in ("hybrid", "accumulate") or max_batch_size is not None,
    "max_batch_size",
    f"strategy {strategy!r} needs a cap (the largest batch the devices hold)",
  )
