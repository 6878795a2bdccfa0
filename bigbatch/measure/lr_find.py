"""The arithmetic of the learning-rate range test, and the batch size it points to.

The range test (Smith 2015, "Cyclical Learning Rates for Training Neural
Networks", section 3.3; fastai's `lr_find`) trains for one short run while the
learning rate grows exponentially from tiny to huge, and reads the useful
range off the loss: it falls fastest somewhere, then turns and diverges.
Run at two batch sizes, it also measures the noise scale: McCandlish et al.
2018 ("An Empirical Model of Large-Batch Training") give the best rate at
batch B as `lr_opt(B) = lr_max / (1 + B_noise / B)`, so two best rates fix
`lr_max` and `B_noise`, and Smith et al.'s `B ∝ lr` rule then turns the
config's (learning rate, batch) into a larger pair with the same noise.

Everything here is NumPy and plain floats on the recorded (rate, loss)
pairs, like `bigbatch.plan.noise`: no training loop, nothing compiled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def _positive(value: float, name: str) -> float:
  if not (isinstance(value, (int, float, np.floating, np.integer)) and value > 0):
    raise ValueError(f"{name}: must be a positive number, got {value!r}")
  return float(value)


def exponential_rates(start: float = 1e-7, end: float = 10.0, steps: int = 100) -> np.ndarray:
  """The range test's learning rate at each step: `start * (end/start)^(i/(steps-1))`.

  fastai's defaults (1e-7 to 10 over 100 steps). This schedule ends exactly
  at `end`; fastai's own steps by `i / steps` and stops one step short of it.

  Raises:
    ValueError: naming `start`, `end` or `steps`.
  """
  _positive(start, "start")
  if not (isinstance(end, (int, float)) and end > start):
    raise ValueError(f"end: must be larger than start={start}, got {end!r}")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
    raise ValueError(f"steps: must be an integer >= 2, got {steps!r}")
  return start * (end / start) ** (np.arange(steps) / (steps - 1))


def smooth(losses: Sequence[float], beta: float = 0.98) -> np.ndarray:
  """fastai's debiased exponential moving average of the losses.

  `m_i = beta m_{i-1} + (1 - beta) loss_i` from `m_0 = 0`, reported as
  `m_i / (1 - beta^i)` (i from 1): without the division the first values
  would be pulled towards zero (as Adam's moments are). A non-finite loss
  makes every later value non-finite, which `should_stop` catches.

  Raises:
    ValueError: naming `beta` or `losses`.
  """
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"beta: must be in [0, 1), got {beta!r}")
  losses = np.asarray(losses, np.float64)
  if losses.ndim != 1:
    raise ValueError(f"losses: must be one loss per step (1-D), got shape {losses.shape}")
  smoothed = np.empty_like(losses)
  average = 0.0
  for i, loss in enumerate(losses):
    average = beta * average + (1.0 - beta) * loss
    smoothed[i] = average / (1.0 - beta ** (i + 1))
  return smoothed


def should_stop(smoothed: float, best: float, factor: float = 4.0) -> bool:
  """fastai's divergence test: stop when the smoothed loss exceeds `factor` x its minimum.

  Args:
    smoothed: this step's smoothed loss.
    best: the smallest smoothed loss so far (this step's included or not).
    factor: how far above its minimum the loss may go (fastai: 4).

  Returns:
    True when `smoothed > factor * best`, or `smoothed` is not finite.

  Raises:
    ValueError: naming `factor`.
  """
  if not factor >= 1.0:
    raise ValueError(f"factor: must be >= 1 (fastai's is 4), got {factor!r}")
  return not math.isfinite(smoothed) or smoothed > factor * best


def _first_rise(smoothed: np.ndarray, factor: float) -> int:
  """The first step at which `should_stop` fires against the running minimum; len if none."""
  best = math.inf
  for i, value in enumerate(smoothed):
    best = min(best, value) if math.isfinite(value) else best
    if should_stop(value, best, factor):
      return i
  return len(smoothed)


class Suggestion(NamedTuple):
  """The rates `suggest` reads off a range test.

  Attributes:
    steepest: where the smoothed loss falls fastest against log lr.
    minimum: where the smoothed loss is smallest.
    minimum_over_10: `minimum / 10`, fastai's classic suggestion.
    largest_stable: the largest rate before the smoothed loss first rises
      more than `rise` (relative) above its minimum so far.
    diverged: the step at which the test stops (`should_stop` with
      `factor`); the number of steps if it never does.
  """

  steepest: float
  minimum: float
  minimum_over_10: float
  largest_stable: float
  diverged: int


def suggest(
  rates: Sequence[float],
  smoothed: Sequence[float],
  *,
  factor: float = 4.0,
  rise: float = 0.1,
  skip_start: int = 0,
) -> Suggestion:
  """Reads the learning rates off a range test's smoothed loss.

  Only the steps before the divergence count (the first step at which the
  loss exceeds `factor` times its running minimum, or is not finite).

  The steepest descent is the minimum of `d loss / d log(lr)`: the rates are
  spaced evenly in log lr, and the curve is read on a log axis, so the slope
  that matters is against log lr. PyTorch Lightning's suggestion
  differentiates against linear lr instead (first against the step index,
  reported in their issue #14248, then against `lr` itself, reported in
  #21141); `d loss / d lr = (d loss / d log lr) / lr` divides the slope by
  the rate, which pulls the minimum towards the smallest rates, where the
  loss has barely begun to fall.

  "Largest stable" is defined as the largest rate before the smoothed loss
  first rises more than `rise` (relative, 10% by default) above its minimum
  so far: the same test as the divergence with `factor = 1 + rise`, the
  point where larger rates start to cost loss rather than gain it. It is
  the top of Smith's useful range, typically a little past `minimum`;
  `minimum / 10` is fastai's safer pick.

  The first `skip_start` steps are not read for the steepest descent and the
  minimum: there the debiased average is still mostly the first few losses,
  whose batch-to-batch noise looks like a steep fall. fastai's `lr_find`
  skips the first tenth of its steps likewise. At least the last three
  steps before the divergence are always read.

  Args:
    rates: the learning rate of each step, increasing.
    smoothed: the smoothed loss of each step (`smooth`).
    factor: the divergence factor (fastai: 4).
    rise: the relative rise that ends the stable range.
    skip_start: steps at the start not read for `steepest` and `minimum`.

  Returns:
    A `Suggestion`.

  Raises:
    ValueError: naming `rates`, `smoothed`, `factor` or `rise`.
  """
  rates = np.asarray(rates, np.float64)
  smoothed = np.asarray(smoothed, np.float64)
  if rates.ndim != 1 or np.any(rates <= 0) or np.any(np.diff(rates) <= 0):
    raise ValueError("rates: must be positive and increasing (one per step)")
  if smoothed.shape != rates.shape:
    raise ValueError(f"smoothed: needs one loss per rate ({len(rates)}), got {smoothed.shape}")
  if not rise > 0:
    raise ValueError(f"rise: must be positive, got {rise!r}")
  if isinstance(skip_start, bool) or not isinstance(skip_start, int) or skip_start < 0:
    raise ValueError(f"skip_start: must be an integer >= 0, got {skip_start!r}")
  diverged = _first_rise(smoothed, factor)
  if diverged < 3:
    raise ValueError(
      f"smoothed: the loss diverges at step {diverged}, before three steps to read a slope "
      "from; start the test at a smaller rate"
    )
  first = min(skip_start, diverged - 3)
  log_rates, losses = np.log(rates[first:diverged]), smoothed[first:diverged]
  steepest = first + int(np.argmin(np.gradient(losses, log_rates)))
  lowest = first + int(np.argmin(losses))
  stable = _first_rise(smoothed[:diverged], 1.0 + rise) - 1
  return Suggestion(
    steepest=float(rates[steepest]),
    minimum=float(rates[lowest]),
    minimum_over_10=float(rates[lowest] / 10.0),
    largest_stable=float(rates[stable]),
    diverged=diverged,
  )


@dataclasses.dataclass(frozen=True)
class NoiseFit:
  """`lr_opt(B) = lr_max / (1 + b_noise / B)` fitted to range tests (McCandlish et al.).

  Attributes:
    lr_max: the best rate of an infinitely large batch.
    b_noise: the noise scale, in examples: the batch at which the best rate
      is half of `lr_max`.
    batch_sizes: the batches tested.
    best_rates: the best rate found at each.
  """

  lr_max: float
  b_noise: float
  batch_sizes: tuple[float, ...]
  best_rates: tuple[float, ...]

  def best_rate(self, batch_size: float) -> float:
    """`lr_opt(B)` at `batch_size`."""
    return self.lr_max / (1.0 + self.b_noise / _positive(batch_size, "batch_size"))


def fit_noise_scale(batch_sizes: Sequence[float], best_rates: Sequence[float]) -> NoiseFit:
  """Fits McCandlish et al.'s `lr_opt(B) = lr_max / (1 + B_noise / B)`.

  The model is a line in `1/B`: `1/lr = 1/lr_max + (B_noise / lr_max) / B`.
  Two tests fix it in closed form (slope = `(1/lr1 - 1/lr2) / (1/B1 - 1/B2)`,
  intercept = `1/lr1 - slope / B1`, then `lr_max = 1 / intercept` and
  `B_noise = slope * lr_max`); more tests are fitted by least squares.

  Args:
    batch_sizes: the batch of each range test, at least two distinct.
    best_rates: the best rate found by each (e.g. `suggest(...).steepest`;
      the same reading for all).

  Returns:
    A `NoiseFit`.

  Raises:
    ValueError: naming `batch_sizes` or `best_rates`; in particular when the
      best rate does not grow with the batch (no positive `B_noise`), or grows
      as fast as the batch or faster (every batch tested is far below
      `B_noise`, whose value the tests cannot then tell).
  """
  batches = np.asarray(batch_sizes, np.float64)
  rates = np.asarray(best_rates, np.float64)
  if batches.ndim != 1 or len(batches) < 2 or not np.all(batches > 0):
    raise ValueError(f"batch_sizes: needs two or more positive batch sizes, got {batch_sizes!r}")
  if len(np.unique(batches)) != len(batches):
    raise ValueError(f"batch_sizes: must be distinct, got {batch_sizes!r}")
  if rates.shape != batches.shape or not np.all(rates > 0):
    raise ValueError(
      f"best_rates: needs one positive rate per batch size ({len(batches)}), got {best_rates!r}"
    )
  slope, intercept = np.polyfit(1.0 / batches, 1.0 / rates, 1)
  tested = ", ".join(f"lr {r:.4g} at batch {b:g}" for b, r in zip(batches, rates))
  if slope <= 0:
    raise ValueError(
      f"best_rates: must grow with the batch for a positive B_noise in "
      f"lr_opt(B) = lr_max / (1 + B_noise / B); got {tested}"
    )
  if intercept <= 0:
    raise ValueError(
      f"best_rates: grow as fast as the batch or faster ({tested}), so every batch tested is "
      "far below B_noise and the fit cannot find it; add a test at a larger batch"
    )
  lr_max = 1.0 / intercept
  return NoiseFit(float(lr_max), float(slope * lr_max), tuple(batches), tuple(rates))


@dataclasses.dataclass(frozen=True)
class Start:
  """A starting (learning_rate, batch_size) and the figures it came from.

  Attributes:
    learning_rate: the proposed rate.
    batch_size: the proposed batch.
    unrounded: the batch the rule gives before rounding and capping.
    config_learning_rate: the config's rate it was scaled from.
    config_batch_size: the config's batch it was scaled from.
    batch_multiple: the batch was rounded down to a multiple of this.
    max_batch_size: the cap applied, or None.
  """

  learning_rate: float
  batch_size: int
  unrounded: float
  config_learning_rate: float
  config_batch_size: int
  batch_multiple: int
  max_batch_size: int | None


def propose_start(
  lr_max: float,
  b_noise: float,
  *,
  learning_rate: float,
  batch_size: int,
  batch_multiple: int = 1,
  max_batch_size: int | None = None,
) -> Start:
  """The largest batch that keeps the config's noise, and its rate, by `B ∝ lr`.

  Smith et al. 2018's `B ∝ lr` rule: every pair `(k lr, k B)` has the noise
  scale `lr N / B` of the config's (for `B << N`), so trains alike per epoch
  in fewer steps the larger `k`. McCandlish et al.'s curve bounds `k`: past
  the batch where `lr / B * B'` reaches `lr_opt(B')` the scaled rate would
  exceed the best rate. That batch solves `lr / B = lr_max / (B' + B_noise)`:

      B' = lr_max * B / lr - B_noise,    lr' = lr * B' / B = lr_opt(B'),

  rounded down to `batch_multiple` (and capped at `max_batch_size`), with
  the rate following the rounded batch. This is the paper's advice, "first
  find the largest stable lr with `B ∝ lr`", with the range tests locating it.

  Args:
    lr_max: from `fit_noise_scale`.
    b_noise: from `fit_noise_scale`.
    learning_rate: the config's learning rate.
    batch_size: the config's batch size.
    batch_multiple: what a batch must be a multiple of (devices x ghost batch).
    max_batch_size: the largest batch the hardware holds; None: no cap.

  Returns:
    A `Start`; its batch may be smaller than the config's, when the config's
    rate is above the best rate at its own batch.

  Raises:
    ValueError: naming the argument; `learning_rate` when the config's
      `lr / B` is at or above `lr_max / B_noise`, above the best rate at
      every batch.
  """
  for value, name in ((lr_max, "lr_max"), (b_noise, "b_noise"), (learning_rate, "learning_rate")):
    _positive(value, name)
  for value, name in ((batch_size, "batch_size"), (batch_multiple, "batch_multiple")):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}: must be a positive integer, got {value!r}")
  if max_batch_size is not None and (
    not isinstance(max_batch_size, int) or max_batch_size < batch_multiple
  ):
    raise ValueError(
      f"max_batch_size: must be an integer >= {batch_multiple}, got {max_batch_size!r}"
    )
  unrounded = lr_max * batch_size / learning_rate - b_noise
  if unrounded < batch_multiple:
    raise ValueError(
      f"learning_rate: {learning_rate:g} at batch {batch_size} (lr/B = "
      f"{learning_rate / batch_size:.4g}) is above the best rate at any batch of "
      f"{batch_multiple} or more (lr_max / (B + B_noise) <= {lr_max / (batch_multiple + b_noise):.4g}); "
      f"lower it to at most lr_opt({batch_size}) = {lr_max / (1 + b_noise / batch_size):.4g}"
    )
  batch = int(unrounded // batch_multiple) * batch_multiple
  if max_batch_size is not None:
    batch = min(batch, max_batch_size // batch_multiple * batch_multiple)
  return Start(
    learning_rate=learning_rate * batch / batch_size,
    batch_size=batch,
    unrounded=unrounded,
    config_learning_rate=learning_rate,
    config_batch_size=batch_size,
    batch_multiple=batch_multiple,
    max_batch_size=max_batch_size,
  )


def explain(fit: NoiseFit, start: Start | None = None) -> list[str]:
  """The fit's and the proposal's arithmetic, one printable line each."""
  slope = fit.b_noise / fit.lr_max
  tested = "; ".join(f"batch {b:g} -> lr {r:.4g}" for b, r in zip(fit.batch_sizes, fit.best_rates))
  lines = [
    "McCandlish et al.: lr_opt(B) = lr_max / (1 + B_noise / B), "
    "i.e. 1/lr = 1/lr_max + (B_noise / lr_max) / B",
    f"  range tests: {tested}",
    f"  line through (1/B, 1/lr): slope B_noise/lr_max = {slope:.4g}, "
    f"intercept 1/lr_max = {1 / fit.lr_max:.4g}",
    f"  lr_max = {fit.lr_max:.4g}, B_noise = {slope:.4g} x {fit.lr_max:.4g} = {fit.b_noise:.4g}",
  ]
  if start is None:
    return lines
  lr, batch = start.config_learning_rate, start.config_batch_size
  lines += [
    f"B ∝ lr (Smith et al.): keep the config's lr / B = {lr:g} / {batch} = {lr / batch:.4g}",
    f"  largest batch with lr <= lr_opt(B): B = lr_max x {batch} / {lr:g} - B_noise = "
    f"{fit.lr_max * batch / lr:.4g} - {fit.b_noise:.4g} = {start.unrounded:.4g}",
  ]
  cap = "" if start.max_batch_size is None else f", at most {start.max_batch_size}"
  lines += [
    f"  rounded down to a multiple of {start.batch_multiple}{cap}: {start.batch_size}",
    f"  start: batch_size = {start.batch_size}, learning_rate = {lr:g} x {start.batch_size} / "
    f"{batch} = {start.learning_rate:.4g} (lr_opt({start.batch_size}) = "
    f"{fit.best_rate(start.batch_size):.4g})",
  ]
  return lines
