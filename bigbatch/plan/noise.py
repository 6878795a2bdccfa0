"""The SGD noise scale and the two rules that keep it constant.

Smith et al. 2018 ("Don't Decay the Learning Rate, Increase the Batch Size")
model the noise of SGD with momentum `m` on a training set of `N` examples at
batch size `B` by the noise scale

    g = lr * (N / B - 1) / (1 - m)          (exact)
    g ~ lr * N / (B * (1 - m))              (approx, for B << N)

Two rules keep `g` unchanged when the batch size changes: scale the learning
rate with the batch (`B ∝ lr`) or scale `1 / (1 - m)` with it
(`B ∝ 1 / (1 - m)`). The functions here are plain Python floats: they run in
the planner and in configs, never inside a compiled step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _check_batch(batch_size: float, dataset_size: int, name: str = "batch_size") -> None:
  if dataset_size <= 0:
    raise ValueError(f"dataset_size must be positive, got {dataset_size}")
  if not 0 < batch_size <= dataset_size:
    raise ValueError(f"{name} must be in (0, dataset_size={dataset_size}], got {batch_size}")


def _check_momentum(momentum: float, name: str = "momentum") -> None:
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {momentum}")


def batch_noise_factor(dataset_size: int, batch_size: float, exact: bool = True) -> float:
  """The batch-size part of the noise scale: `N/B - 1` (exact) or `N/B`."""
  _check_batch(batch_size, dataset_size)
  ratio = dataset_size / batch_size
  return ratio - 1.0 if exact else ratio


def batch_size_for_noise_factor(dataset_size: int, factor: float, exact: bool = True) -> float:
  """Inverse of `batch_noise_factor`: the (real-valued) batch size giving `factor`."""
  if factor < 0 or (not exact and factor == 0):
    raise ValueError(f"noise factor must be positive, got {factor}")
  return dataset_size / (factor + 1.0) if exact else dataset_size / factor


def noise_scale(
  learning_rate: float,
  dataset_size: int,
  batch_size: float,
  momentum: float = 0.0,
  exact: bool = True,
) -> float:
  """The SGD noise scale `g = lr * (N/B - 1) / (1 - m)`.

  Args:
    learning_rate: the learning rate `lr` of the accumulation-form momentum
      update `A <- m*A + grad; w <- w - lr*A`.
    dataset_size: number of training examples `N`.
    batch_size: batch size `B`, at most `N`.
    momentum: momentum coefficient `m` in [0, 1).
    exact: if False, use the approximation `lr * N / (B * (1 - m))`.

  Returns:
    The noise scale `g`.

  Raises:
    ValueError: for a batch outside (0, N] or momentum outside [0, 1).
  """
  _check_momentum(momentum)
  return learning_rate * batch_noise_factor(dataset_size, batch_size, exact) / (1.0 - momentum)


def batch_size_for_noise_scale(
  target: float,
  learning_rate: float,
  dataset_size: int,
  momentum: float = 0.0,
  exact: bool = True,
) -> float:
  """The batch size at which `noise_scale(...)` equals `target` (real-valued).

  Raises:
    ValueError: if no batch size in (0, N] reaches `target` (e.g. a target
      above what a batch of one gives, or a non-positive target).
  """
  _check_momentum(momentum)
  if target <= 0 or learning_rate <= 0:
    raise ValueError(f"target and learning_rate must be positive, got {target}, {learning_rate}")
  factor = target * (1.0 - momentum) / learning_rate
  batch = batch_size_for_noise_factor(dataset_size, factor, exact)
  if batch < 1.0:
    raise ValueError(
      f"noise scale {target} needs batch {batch:.3g} < 1 at learning rate {learning_rate}"
    )
  return batch


def scale_learning_rate(
  learning_rate: float,
  batch_size: float,
  new_batch_size: float,
  dataset_size: int,
  exact: bool = True,
) -> float:
  """The `B ∝ lr` rule: the learning rate that keeps `g` when B changes.

  With `exact=False` this is the linear scaling rule `lr * B_new / B`.
  """
  return learning_rate * (
    batch_noise_factor(dataset_size, batch_size, exact)
    / batch_noise_factor(dataset_size, new_batch_size, exact)
  )


def scale_momentum(
  momentum: float,
  batch_size: float,
  new_batch_size: float,
  dataset_size: int,
  exact: bool = True,
) -> float:
  """The `B ∝ 1/(1-m)` rule: the momentum that keeps `g` when B changes.

  Smith et al. warn that this rule costs accuracy (the accumulator needs about
  `B / (N (1 - m))` epochs to settle after each change); prefer
  `scale_learning_rate` up to the largest stable learning rate.

  Raises:
    ValueError: if no momentum in [0, 1) keeps `g` (the batch shrank too much).
  """
  _check_momentum(momentum)
  one_minus = (1.0 - momentum) * (
    batch_noise_factor(dataset_size, new_batch_size, exact)
    / batch_noise_factor(dataset_size, batch_size, exact)
  )
  if not 0.0 < one_minus <= 1.0:
    raise ValueError(
      f"no momentum in [0, 1) keeps the noise scale going from batch {batch_size} "
      f"to {new_batch_size} at momentum {momentum}"
    )
  return 1.0 - one_minus


def critical_batch_costs(batch_size: float, measured_noise_scale: float) -> tuple[float, float]:
  """McCandlish et al. 2018: steps and examples at batch B, relative to their minimums.

  Training to a given loss takes `S = S_min (1 + B_noise / B)` steps and
  `E = E_min (1 + B / B_noise)` examples, with `B_noise` ~ the measured
  `B_simple`. Below `B_noise` a larger batch saves steps almost linearly;
  far above it, it only spends examples.

  Returns:
    `(S / S_min, E / E_min)`.
  """
  if batch_size <= 0 or measured_noise_scale <= 0:
    raise ValueError(
      f"batch_size and measured_noise_scale must be positive, got {batch_size}, "
      f"{measured_noise_scale}"
    )
  return 1.0 + measured_noise_scale / batch_size, 1.0 + batch_size / measured_noise_scale


def batch_above_noise_scale_note(
  phase: int, batch_size: int, high: float, value: float | None = None
) -> str:
  """The trainer's one line when a phase's batch far exceeds the measured B_simple.

  `high` is the upper bound of B_simple's confidence interval (and `value`
  its estimate, where known): with B_noise at most `high`, the steps are at
  most 1 + high/B of the minimum and the examples at least 1 + B/high.
  """
  steps, examples = critical_batch_costs(batch_size, high)

  def figure(x: float) -> str:  # a language model's B_simple in sequences may be under 1
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"

  estimate = f"{figure(value)}, " if value is not None else ""
  return (
    f"phase {phase}: batch {batch_size:,} is {batch_size / high:.1f}x the upper bound of the "
    f"measured gradient noise scale B_simple ({estimate}at most {figure(high)}); predicted: at "
    f"most {steps:.2f}x the minimum steps (1 + B_noise/B), at least {examples:.1f}x the minimum "
    f"examples (1 + B/B_noise), so most of this phase's examples buy no fewer steps"
  )


def known(value: Any) -> float | None:
  """A metric as a float; None where it is missing, unknown (NaN) or unbounded (inf)."""
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


# The measured B_simple and its confidence bounds, as the step reports them (in examples).
MEASURED_KEYS = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")


def in_tokens(values: Mapping[str, Any], tokens_per_example: int | None) -> dict[str, float]:
  """A language model's measured B_simple and bounds in tokens: `{KEY}_tokens` for each of
  `MEASURED_KEYS` in `values` (B_simple in sequences times T); `{}` for any other model.

  A sequence of T tokens is one example of the step's batch, so the noise
  scale it measures in examples is T times smaller than in tokens, the unit
  the batches and budgets of a language model are given in.
  """
  if not tokens_per_example:
    return {}
  return {
    f"{key}_tokens": float(values[key]) * tokens_per_example
    for key in MEASURED_KEYS
    if values.get(key) is not None
  }
