"""The learning-rate range test run on a spec: the trainer's start, a growing rate.

`run` builds what a training run builds before its first step (its
`Experiment`: plan, mesh, model, the initial state from `spec.seed`, the training stream from
position 0, the sharded train step) and trains a few steps at each batch size
while the learning rate grows exponentially (`lr_find.exponential_rates`),
stopping when the smoothed loss diverges (`lr_find.should_stop`).

The rate travels in the optimizer's state (`optim.set_hyperparams`), as an
adaptive run's decisions do: the optimizer is built with the plan's first
phase as constants (`adaptive.constants`), so one step compiled per batch
size takes every rate of the test. The workdir's checkpoints are neither read
nor written: the test starts from the spec, not from a run.

Every process runs the same loop on its share of each batch and reads the
same (replicated) loss, so all stop at the same step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from bigbatch import data, optim
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.measure import lr_find
from bigbatch.spec import RunSpec
from bigbatch.train.experiment import Experiment


@dataclasses.dataclass(frozen=True)
class Curve:
  """One range test: the rates tried and the losses they gave.

  Attributes:
    batch_size: the global batch of every step.
    rates: the learning rate of each step done.
    losses: each step's training loss (on its batch, before its update).
    planned_steps: the steps of the whole schedule; fewer are done when the
      loss diverges.
    factor: the divergence test's factor (`lr_find.should_stop`).
  """

  batch_size: int
  rates: np.ndarray
  losses: np.ndarray
  planned_steps: int
  factor: float = 4.0

  @property
  def smoothed(self) -> np.ndarray:
    return lr_find.smooth(self.losses)

  @property
  def stopped_early(self) -> bool:
    return len(self.losses) < self.planned_steps

  def suggestion(self) -> lr_find.Suggestion:
    """`lr_find.suggest` on this curve, its first tenth not read (as fastai's).

    Raises:
      ValueError: when the loss diverges before three steps.
    """
    skip = self.planned_steps // 10  # fastai's: the first tenth is still mostly noise
    return lr_find.suggest(self.rates, self.smoothed, factor=self.factor, skip_start=skip)


@dataclasses.dataclass(frozen=True)
class RangeTest:
  """The curves of a range test, one per batch size, and the executables it compiled."""

  curves: list[Curve]
  compiles: int


def run(
  spec: RunSpec,
  *,
  rates: Sequence[float],
  batch_sizes: Sequence[int] | None = None,
  batch_sizes_field: str = "batch_size",
  factor: float = 4.0,
  workdir=None,
  devices: Sequence[jax.Device] | None = None,
  say: Callable[[str], None] = print,
) -> RangeTest:
  """The range test of `spec`: `rates` in turn, from the initial state, at each batch size.

  Args:
    spec: the run's spec (`bigbatch.config.read` of a config).
    rates: the learning rate of each step (`lr_find.exponential_rates`).
    batch_sizes: the global batches to test (default: the spec's `batch_size`).
    batch_sizes_field: the name a batch the mesh cannot split is reported under.
    factor: stop when the smoothed loss exceeds `factor` x its minimum (fastai: 4).
    workdir: where a probed `plan.max_batch_size=auto` is cached; nothing else
      is read or written there.
    devices: the devices of the mesh (default: all).
    say: where setup messages go.

  Returns:
    A `RangeTest`.

  Raises:
    ConfigError, DataError, ShardingError, ProbeError: bad input, before any
      step is compiled.
  """
  batch_sizes = [int(b) for b in batch_sizes or [spec.batch_size]]
  # the trainer's experiment, its learning rate in the optimizer's state
  start = Experiment.from_spec(
    spec, devices=devices, workdir=workdir, say=say, adjustable_rate=True
  )
  start.check_batch_sizes(batch_sizes, batch_sizes_field)
  start.check_train_size()
  first = start.initial_state()
  steps = st.CompiledSteps(
    start.train_step.fn,
    first,
    data.example_batch(start.dataset),
    start.mesh,
    ghost_batch_size=spec.ghost_batch_size,
  )
  rates = np.asarray(rates, np.float64)
  try:
    curves = [  # every test from the same initial state
      _one_test(start, steps, first if i == 0 else start.initial_state(), batch, rates, factor)
      for i, batch in enumerate(batch_sizes)
    ]
  finally:
    steps.close()
  return RangeTest(curves, steps.compile_count)


def _one_test(
  start: Experiment,
  steps: st.CompiledSteps,
  state,
  batch_size: int,
  rates: np.ndarray,
  factor: float,
) -> Curve:
  """`rates` in turn at `batch_size` from `state`, until the smoothed loss diverges."""
  mesh = start.mesh
  stream = data.train_batches(
    start.train_source,
    start.dataset,
    seed=start.spec.seed,
    batch_size=batch_size,
    start_position=0,
    num_steps=len(rates),
    local=shd.process_batch_slice(mesh, batch_size),
  )
  losses: list[float] = []
  best = math.inf
  try:
    for rate, batch in zip(rates, stream):
      opt_state = optim.set_hyperparams(state.opt_state, learning_rate=float(rate))
      state, metrics = steps(
        state.replace(opt_state=opt_state), shd.global_batch(mesh, batch, batch_size)
      )
      losses.append(float(jax.device_get(metrics["loss"])))
      smoothed = float(lr_find.smooth(losses)[-1])
      best = min(best, smoothed) if math.isfinite(smoothed) else best
      if lr_find.should_stop(smoothed, best, factor):
        break
  finally:
    stream.close()  # its prefetching stops with it when the test ends early
  done = len(losses)
  return Curve(batch_size, np.asarray(rates[:done]), np.asarray(losses), len(rates), factor)


def _finite_or_none(values: np.ndarray) -> list[float | None]:
  return [float(v) if math.isfinite(v) else None for v in values]


def curve_dict(curve: Curve) -> dict[str, Any]:
  """A curve as JSON-ready values (a non-finite loss as None); its suggestion if it has one."""
  try:
    suggestion = curve.suggestion()._asdict()
  except ValueError:  # diverged too soon: `format_table` says why
    suggestion = None
  return {
    "batch_size": curve.batch_size,
    "steps": len(curve.losses),
    "stopped_early": curve.stopped_early,
    "rates": [float(r) for r in curve.rates],
    "losses": _finite_or_none(curve.losses),
    "smoothed": _finite_or_none(curve.smoothed),
    "suggestion": suggestion,
  }


def fit(curves: Sequence[Curve]) -> lr_find.NoiseFit:
  """`lr_opt(B) = lr_max / (1 + B_noise / B)` fitted to the curves' steepest rates.

  Raises:
    ValueError: naming what cannot be fitted (`lr_find.fit_noise_scale`'s messages),
      or a curve's reason for having no suggestion.
  """
  return lr_find.fit_noise_scale(
    [c.batch_size for c in curves], [c.suggestion().steepest for c in curves]
  )


def propose(noise: lr_find.NoiseFit, spec: RunSpec) -> lr_find.Start:
  """The (learning_rate, batch_size) `noise` proposes for `spec` (`lr_find.propose_start`):
  a multiple of `plan.batch_multiple`, at most `plan.max_batch_size` and the training set.

  Raises:
    ValueError: when the config's rate is above the best rate at every batch.
  """
  multiple = spec.plan.batch_multiple
  cap = spec.dataset.num_train_examples
  if spec.plan.max_batch_size:
    cap = min(cap, spec.plan.max_batch_size)
  return lr_find.propose_start(
    noise.lr_max,
    noise.b_noise,
    learning_rate=spec.optimizer.learning_rate,
    batch_size=spec.batch_size,
    batch_multiple=multiple,
    max_batch_size=cap if cap >= multiple else None,
  )


def format_table(curves: Sequence[Curve], rates: np.ndarray) -> str:
  """The tests' schedule, one row per batch size, and the suggestion of each."""
  factor = curves[0].factor if curves else 4.0
  ratio = rates[1] / rates[0]
  lines = [
    f"learning-rate range test: lr {rates[0]:.3g} -> {rates[-1]:.3g} over {len(rates)} steps "
    f"(x{ratio:.4g} a step); stops when the smoothed loss exceeds {factor:g} x its minimum",
    f"{'batch':>7} {'steps':>6} {'stopped at lr':>14} {'lowest loss':>12} {'at lr':>10} "
    f"{'steepest':>10} {'largest stable':>15} {'lowest/10':>10}",
  ]
  notes = []
  for curve in curves:
    stopped = f"{curve.rates[-1]:.4g}" if curve.stopped_early else "-"
    head = f"{curve.batch_size:>7} {len(curve.losses):>6} {stopped:>14}"
    try:
      s = curve.suggestion()
    except ValueError as error:
      lines.append(f"{head}   no suggestion: {error}")
      continue
    lowest = float(np.nanmin(curve.smoothed[: s.diverged]))
    lines.append(
      f"{head} {lowest:>12.4g} {s.minimum:>10.4g} {s.steepest:>10.4g} "
      f"{s.largest_stable:>15.4g} {s.minimum_over_10:>10.4g}"
    )
    at_end = s.largest_stable == curve.rates[-1] and not curve.stopped_early
    end = " (the range's end: no 10% rise above the minimum yet; a larger --end tests past it)"
    notes.append(
      f"batch {curve.batch_size:,}: learning_rate {s.steepest:.4g} (the smoothed loss falls "
      f"fastest against log lr there); largest stable rate {s.largest_stable:.4g}"
      f"{end if at_end else ''}"
    )
  if notes:
    lines += ["suggestion:", *(f"  {note}" for note in notes)]
  return "\n".join(lines)


def plot(curves: Sequence[Curve], path: str, *, title: str = "") -> None:
  """Draws each curve's smoothed loss against the learning rate (log axis) to a PNG, its
  steepest-descent rate (o) and largest stable rate (^) marked."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axis = plt.subplots(figsize=(8, 5))
  low, high = math.inf, -math.inf
  for i, curve in enumerate(curves):
    colour = f"C{i}"
    smoothed = curve.smoothed
    axis.plot(curve.rates, smoothed, color=colour, label=f"batch {curve.batch_size:,}")
    finite = smoothed[np.isfinite(smoothed)]
    if len(finite):  # the view stops where the test does: a diverged loss would flatten it
      low = min(low, float(finite.min()))
      high = max(high, float(min(finite.max(), curve.factor * finite.min())))
    try:
      s = curve.suggestion()
    except ValueError:
      continue
    for rate, marker, name in ((s.steepest, "o", "steepest"), (s.largest_stable, "^", "stable")):
      at = float(np.interp(np.log(rate), np.log(curve.rates), smoothed))
      axis.plot([rate], [at], marker, color=colour, markersize=8, label=f"  {name} {rate:.3g}")
  axis.set_xscale("log")
  if math.isfinite(low) and high > low:
    margin = 0.05 * (high - low)
    axis.set_ylim(low - margin, high + margin)
  axis.set_xlabel("learning rate")
  axis.set_ylabel("smoothed training loss")
  axis.grid(True, which="both", alpha=0.3)
  axis.legend(loc="best")
  axis.set_title(title or "learning-rate range test")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
