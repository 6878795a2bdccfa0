"""The learning-rate range test run on a config: the trainer's start, a growing rate.

`run` builds what a training run builds before its first step (plan, mesh,
model, the initial state from `config.seed`, the training stream from
position 0, the sharded train step) and trains a few steps at each batch size
while the learning rate grows exponentially (`lr_find.exponential_rates`),
stopping when the smoothed loss diverges (`lr_find.should_stop`).

The rate travels in the optimizer's state (`optim.set_hyperparams`), as an
adaptive run's decisions do: the optimizer is built with the plan's first
phase as constants (`adaptive.constants`), so one step compiled per batch
size takes every rate of the test. The workdir's checkpoints are neither read
nor written: the test starts from the config, not from a run.

Every process runs the same loop on its share of each batch and reads the
same (replicated) loss, so all stop at the same step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bigbatch import adaptive, data, fields, lr_find, memory, optim
from bigbatch import config as bbconfig
from bigbatch import sharding as shd
from bigbatch import step as st


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


@dataclasses.dataclass
class _Start:
  """What a run builds before its first step, with the learning rate in the optimizer state."""

  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  model: Any
  optimizer: Any
  mesh: Any
  train_source: Any
  train_step: Callable
  fsdp_min_size: int

  @functools.cached_property
  def _init(self) -> Callable:
    # `step.create_train_state` jitted once, so that each batch size's test starts from a
    # fresh copy of the same state without compiling the init again
    inputs = jax.ShapeDtypeStruct((1, *self.spec.input_shape), np.float32)
    shardings = st.train_state_shardings(
      self.model, self.optimizer, inputs, self.mesh, fsdp_min_size=self.fsdp_min_size
    )
    return jax.jit(
      lambda rng: st.init_train_state(self.model, self.optimizer, inputs, rng),
      out_shardings=shardings,
    )

  def initial_state(self) -> Any:
    """The trainer's initial state: the same init, seed and shardings as `run.set_up`'s."""
    return self._init(jax.random.key(int(self.config.seed)))


def _set_up(config, batch_sizes: Sequence[int], field: str, workdir, devices, say) -> _Start:
  """The config checked and built as the trainer builds it; nothing compiled but the init."""
  fields.check_run_fields(config)
  memory.resolve_max_batch_size(config, workdir=workdir, devices=devices, log=say)
  plan = bbconfig.plan_from_config(config)
  optimizer = bbconfig.optimizer_from_config(config, adaptive.constants(plan))
  spec = data.spec_for(config.dataset)
  model = bbconfig.model_from_config(config, spec.num_classes)
  bbconfig.loss_from_config(config, model, spec)  # a bad loss: one line, before compiling
  block = config.get("mesh") or {}
  mesh = shd.mesh_from_config(config, devices)
  for batch_size in batch_sizes:
    shd.check_batch_size(
      batch_size, mesh, ghost_batch_size=config.get("ghost_batch_size"), field=field
    )
  train_source = data.load_split(config.dataset, "train")
  if len(train_source) != plan.dataset_size:
    raise bbconfig.ConfigError(
      f"dataset.num_train_examples: {plan.dataset_size:,} but the {spec.tfds_name} train split "
      f"has {len(train_source):,} examples"
    )
  train_step, _ = bbconfig.train_step_from_config(
    config,
    model,
    optimizer,
    plan,
    mesh,
    input_shape=spec.input_shape,
    normalisation=spec.device_normalisation,
  )
  return _Start(
    config=config,
    spec=spec,
    model=model,
    optimizer=optimizer,
    mesh=mesh,
    train_source=train_source,
    train_step=train_step,
    fsdp_min_size=int(block.get("fsdp_min_size", 2**14)),
  )


def run(
  config: ml_collections.ConfigDict,
  *,
  rates: Sequence[float],
  batch_sizes: Sequence[int] | None = None,
  batch_sizes_field: str = "batch_size",
  factor: float = 4.0,
  workdir=None,
  devices: Sequence[jax.Device] | None = None,
  say: Callable[[str], None] = print,
) -> RangeTest:
  """The range test of `config`: `rates` in turn, from the initial state, at each batch size.

  Args:
    config: a training config (see `configs/`).
    rates: the learning rate of each step (`lr_find.exponential_rates`).
    batch_sizes: the global batches to test (default: the config's `batch_size`).
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
  batch_sizes = [int(b) for b in batch_sizes or [config.batch_size]]
  start = _set_up(config, batch_sizes, batch_sizes_field, workdir, devices, say)
  first = start.initial_state()
  steps = st.CompiledSteps(
    start.train_step,
    first,
    data.example_batch(start.spec),
    start.mesh,
    ghost_batch_size=config.get("ghost_batch_size"),
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
  start: _Start, steps: st.CompiledSteps, state, batch_size: int, rates: np.ndarray, factor: float
) -> Curve:
  """`rates` in turn at `batch_size` from `state`, until the smoothed loss diverges."""
  mesh = start.mesh
  stream = data.train_batches(
    start.train_source,
    start.spec,
    seed=int(start.config.seed),
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


def propose(noise: lr_find.NoiseFit, config: ml_collections.ConfigDict) -> lr_find.Start:
  """The (learning_rate, batch_size) `noise` proposes for `config` (`lr_find.propose_start`):
  a multiple of `plan.batch_multiple`, at most `plan.max_batch_size` and the training set.

  Raises:
    ValueError: when the config's rate is above the best rate at every batch.
  """
  multiple = int(config.plan.get("batch_multiple") or 1)
  cap = int(config.dataset.num_train_examples)
  if config.plan.get("max_batch_size"):
    cap = min(cap, int(config.plan.max_batch_size))
  return lr_find.propose_start(
    noise.lr_max,
    noise.b_noise,
    learning_rate=float(config.optimizer.learning_rate),
    batch_size=int(config.batch_size),
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
