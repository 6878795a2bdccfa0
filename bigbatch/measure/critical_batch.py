"""The critical batch from branches: the largest batch that does not lose, two ways.

McCandlish et al. (2018) predict the critical batch from the gradient noise
scale B_simple, which bigbatch measures in the step. Merrill et al. (2025,
"Critical Batch Size Revisited") measure it directly instead: from one
checkpoint, short branches train the same number of tokens at several batch
sizes, and the critical batch is the largest batch whose loss after that
budget is not worse than the smallest batch's. Zhang et al. (ICLR 2025)
define it by steps: the largest batch whose steps to a target loss exceed
ideal linear scaling (the smallest batch's steps x B_min / B) by no more
than 20%. `bigbatch cbs` runs the branches (`bigbatch.measure.branches`);
this module holds the arithmetic on their results.

"Not worse" needs a tolerance, since two branches that differ only in their
data order end at different losses. `tolerance_from_repeat` sizes it from
such a pair at the smallest batch: their difference d has a standard
deviation of sqrt(2) sigma, so |d| estimates sqrt(2) sigma and the tolerance
is 2 sigma = sqrt(2) |d|.

`warmup_ramp` turns critical batches measured at several points of a run into
a batch warm-up for `plan.strategy: ramp`, as Merrill et al. build theirs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

__all__ = [
  "BranchResult",
  "critical_batch",
  "steps_to",
  "tolerance_from_repeat",
  "warmup_ramp",
  "zhang_critical_batch",
]


@dataclasses.dataclass(frozen=True)
class BranchResult:
  """One branch: its batch, its updates, its held-out loss after the budget, and the
  held-out loss at each evaluation, as (step, loss) from the branch's start."""

  batch_size: int
  steps: int
  final_loss: float
  curve: tuple[tuple[int, float], ...] = ()


def tolerance_from_repeat(first: float, second: float, floor: float = 1e-4) -> float:
  """Two sigma of a branch's final loss, from two that differ only in their data order
  (sqrt(2) |d|), at least `floor` (two equal losses say little about the spread)."""
  return max(math.sqrt(2.0) * abs(first - second), floor)


def _by_batch(results: Sequence[BranchResult]) -> list[BranchResult]:
  ordered = sorted(results, key=lambda r: r.batch_size)
  if not ordered:
    raise ValueError("no branches")
  return ordered


def critical_batch(results: Sequence[BranchResult], tolerance: float) -> int:
  """The largest batch whose final loss is within `tolerance` of the smallest batch's
  (Merrill et al.); the smallest batch when none larger is."""
  ordered = _by_batch(results)
  reference = ordered[0].final_loss
  return max(r.batch_size for r in ordered if r.final_loss <= reference + tolerance)


def steps_to(curve: Sequence[tuple[int, float]], target: float) -> float | None:
  """The first step at which the loss reaches `target`, interpolated linearly between
  evaluations (the curve starts at the branch's start); None if it never does."""
  previous = None
  for step, loss in curve:
    if loss <= target:
      if previous is None or previous[1] <= target:
        return float(step)
      (s0, l0), (s1, l1) = previous, (step, loss)
      return s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    previous = (step, loss)
  return None


def zhang_critical_batch(
  results: Sequence[BranchResult], target: float, excess: float = 0.2
) -> tuple[int | None, dict[int, tuple[float | None, float | None]]]:
  """Zhang et al.'s critical batch: where the steps to `target` cross (1 + excess) x ideal
  linear scaling from the smallest batch: the largest batch before the first that needs
  more (or never reaches `target`).

  Returns:
    `(batch, {batch: (steps to target, ideal steps)})`; batch None when the smallest
    batch never reaches `target` (nothing to scale from).
  """
  ordered = _by_batch(results)
  base = steps_to(ordered[0].curve, target)
  table: dict[int, tuple[float | None, float | None]] = {}
  best, crossed = None, False
  for result in ordered:
    steps = steps_to(result.curve, target)
    ideal = None if base is None else base * ordered[0].batch_size / result.batch_size
    table[result.batch_size] = (steps, ideal)
    scales = steps is not None and ideal is not None and steps <= (1.0 + excess) * ideal
    crossed = crossed or not scales
    if not crossed:
      best = result.batch_size
  return best, table


def warmup_ramp(
  measured: Sequence[tuple[float, int | None]], base_batch: int, multiple: int = 1
) -> tuple[tuple[float, int], ...]:
  """A batch warm-up from critical batches measured along a run, for `plan.ramp` (or
  `plan.ramp_tokens`): from each point on, the batch is the largest critical batch measured
  so far, rounded down to `multiple`, and never below `base_batch`.

  A ramp never shrinks the batch (a smaller critical batch later, within the measurement's
  noise, does not undo an earlier rise), and an unmeasured point (None) changes nothing.

  Args:
    measured: (position, critical batch) pairs, the position in the ramp's unit (epochs,
      or tokens for a language model) and the batch in the plan's unit.
    base_batch: the run's batch before the ramp.
    multiple: the plan's `batch_multiple` (in the batch's unit).

  Returns:
    `(position, batch)` pairs, only where the batch rises; `()` when it never does, which
    is the constant `base_batch`.
  """
  if base_batch < 1 or multiple < 1:
    raise ValueError(f"base_batch and multiple must be >= 1, got {base_batch}, {multiple}")
  ramp: list[tuple[float, int]] = []
  current = base_batch
  for position, batch in sorted(measured, key=lambda pair: pair[0]):
    if batch is None:
      continue
    rounded = batch // multiple * multiple
    if rounded > current:
      ramp.append((position, rounded))
      current = rounded
  return tuple(ramp)
