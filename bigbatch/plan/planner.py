"""The phase planner: from a learning-rate schedule to batch-size phases.

Smith et al. 2018 replace each drop of the learning rate by a rise of the
batch size that leaves the SGD noise scale `g = lr (N/B - 1) / (1 - m)` on the
same path. `plan_phases` turns a baseline (a schedule over epochs at a fixed
batch) into phases of constant batch size; within a phase the learning rate
and momentum may still follow a schedule. Durations are epochs throughout and
become steps here and nowhere else: a phase boundary is a count of examples,
so it falls where the baseline's does whatever the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax

from bigbatch.plan import adam_rules, noise
from bigbatch.plan.phases import Phase, Plan, steps_to_end
from bigbatch.schedules import Schedule

__all__ = ["plan_phases"]  # Phase, Plan: phases.py; PlanError and the names allowed: checks.py

from bigbatch.plan.checks import check, validate


def _cut_points(
  schedule: Schedule, epochs: float, strategy: str, min_phase_epochs: float
) -> list[tuple[float, bool]]:
  """Candidate phase starts: (epoch, forced). Forced ones are the schedule's jumps."""
  forced = sorted({0.0, *(b for b in schedule.breakpoints() if 0.0 < b < epochs)})
  cuts = []
  for start, end in zip(forced, forced[1:] + [epochs]):
    cuts.append((start, True))
    if strategy == "decay_lr" or schedule.constant_between(start, end):
      continue
    epoch = start + min_phase_epochs
    while epoch <= end - min_phase_epochs * (1 - 1e-9):
      cuts.append((epoch, False))
      epoch += min_phase_epochs
  return cuts


def _running_peak(schedule: Schedule, epochs: float, at: list[float]) -> np.ndarray:
  """max over [0, t] of the baseline's learning-rate multiplier, for each t in `at`."""
  grid = np.unique(
    np.concatenate(
      [
        np.linspace(0.0, epochs, 20_001),
        np.asarray(at, float),
        [k for k in schedule.knots() if 0.0 <= k <= epochs],
      ]
    )
  )
  peak = np.maximum.accumulate(np.asarray(schedule.multiplier(grid), np.float64))
  return peak[np.searchsorted(grid, at)]


def _phase_fn(values: Callable, start_epoch: float, epochs_per_step: float, scale: float):
  """A within-phase optax schedule: step in phase -> scale * values(epoch)."""

  def fn(step):
    epoch = start_epoch + jnp.asarray(step, jnp.float32) * epochs_per_step
    return scale * values(epoch, jnp)

  return fn


def _choose_batches(
  schedule: Schedule,
  epochs: float,
  strategy: str,
  min_phase_epochs: float,
  *,
  n: int,
  b0: int,
  exact: bool,
  max_batch_size: int | None,
  batch_multiple: int,
  ramp: tuple = (),
) -> list[tuple[float, int]]:
  """Each phase's first epoch and batch (see `plan_phases`).

  The batch is rounded down to a multiple, so the learning rate that matches
  the noise scale never exceeds its running peak.
  """
  if strategy == "ramp":
    return _ramp_batches(schedule, epochs, b0, ramp)
  cuts = _cut_points(schedule, epochs, strategy, min_phase_epochs)
  peaks = _running_peak(schedule, epochs, [t for t, _ in cuts])
  capped = max_batch_size is not None and strategy != "accumulate"
  largest = min(max_batch_size, n) if capped else n
  largest -= largest % batch_multiple
  phases: list[tuple[float, int]] = []
  batch = b0
  for (epoch, forced), peak in zip(cuts, peaks):
    current = float(schedule.multiplier(epoch))
    ratio = current / peak if peak > 0 else 1.0
    new_batch = batch
    if strategy != "decay_lr":
      target = noise.batch_noise_factor(n, b0, exact) * ratio
      ideal = noise.batch_size_for_noise_factor(n, target, exact) if ratio > 0 else math.inf
      floor = (
        math.floor(ideal / batch_multiple * (1 + 1e-9)) * batch_multiple
        if math.isfinite(ideal)
        else math.inf
      )
      if strategy == "accumulate" and math.isfinite(floor) and floor > max_batch_size:
        floor -= floor % max_batch_size  # whole micro-batches of the cap
      new_batch = max(batch, floor)
      if new_batch > largest:
        check(
          strategy == "hybrid",
          "strategy",
          f"increase_batch needs batch {ideal:,.0f} at epoch {epoch:g}, above "
          + (
            f"max_batch_size={max_batch_size}"
            if max_batch_size is not None and max_batch_size <= n
            else f"the dataset size {n:,}"
          )
          + "; use strategy 'hybrid' (then the learning rate takes the rest)",
        )
        new_batch = largest
    if forced or new_batch != batch or not phases:
      phases.append((epoch, new_batch))
    batch = new_batch
  return phases


def _ramp_batches(schedule: Schedule, epochs: float, b0: int, ramp) -> list[tuple[float, int]]:
  """The phases of a ramp: a cut at each of its epochs and at the schedule's jumps, the
  batch the ramp's last entry at or before it (`b0` before the first)."""
  starts = sorted(
    {0.0, *(float(e) for e, _ in ramp), *(b for b in schedule.breakpoints() if 0.0 < b < epochs)}
  )
  phases = []
  for start in starts:
    batch = max([b0, *(int(b) for e, b in ramp if e <= start)])
    phases.append((start, batch))
  return phases


def _phase_rates(schedule: Schedule, values, first_epoch, per_step, steps, scale):
  """`((lr, last lr, lr_fn), (momentum, last momentum, momentum_fn))` of a phase whose
  steps start at `first_epoch`, `per_step` epochs apart; the lr is multiplied by `scale`.
  Where the schedule is constant over the phase the functions are constants, which the
  optimizer reads without evaluating a schedule."""
  lr_values, momentum_values = values
  lr_fn = _phase_fn(lr_values, first_epoch, per_step, scale)
  m_fn = _phase_fn(momentum_values, first_epoch, per_step, 1.0)
  last_epoch = first_epoch + (steps - 1) * per_step
  lr, lr_end = (scale * float(lr_values(e, np)) for e in (first_epoch, last_epoch))
  mom, mom_end = (float(momentum_values(e, np)) for e in (first_epoch, last_epoch))
  if schedule.constant_between(first_epoch, last_epoch + per_step):
    lr_fn, m_fn = optax.constant_schedule(lr), optax.constant_schedule(mom)
  return (lr, lr_end, lr_fn), (mom, mom_end, m_fn)


def _held(rule: adam_rules.Rule, lr: float, n: int, batch: int, momentum: float) -> float:
  """The noise the rule holds at a phase's first step: lr N/B (the paper's), or lr sqrt(N/B)
  (Adam's square-root rules), over 1 - m."""
  return lr * noise.batch_noise_factor(n, batch) ** rule.lr_power / (1.0 - momentum)


def _moved_momentum(rule: adam_rules.Rule, ratio: float, m_fn):
  """A phase's momentum schedule (step -> b1) moved by the rule at batch ratio `ratio`."""

  def fn(step):
    return rule.momentum(ratio, m_fn(step))

  return fn


def _phase(where, schedule, values, scale, *, n, b0, weight_decay, micro_batch, adam) -> Phase:
  """One phase: `where` is (index, start epoch, end epoch, first step, steps, first example,
  batch, the baseline's first and end examples); its rates from `values` (the baseline's lr
  and momentum functions) times `scale`, its noise against the baseline's."""
  index, start, end, step, steps, consumed, batch, start_example, end_example = where
  rule, b2, eps = adam
  lr_values = values[0]
  first_epoch, per_step = consumed / n, batch / n
  (lr, lr_end, lr_fn), (mom, mom_end, m_fn) = _phase_rates(
    schedule, values, first_epoch, per_step, steps, scale
  )
  base_lr = float(lr_values(first_epoch, np))  # the baseline's, at the same example
  g, g_base = (_held(rule, rate, n, b, mom) for rate, b in ((lr, batch), (base_lr, b0)))
  ratio = batch / b0
  moved = rule.hyperparams(ratio, mom, b2, eps) if rule.name else None
  if rule.name == "sde":  # b1 follows the batch, from the schedule's value at each step
    mom, mom_end = moved.b1, rule.momentum(ratio, mom_end)
    m_fn = _moved_momentum(rule, ratio, m_fn)
  return Phase(
    index=index,
    start_epoch=start,
    end_epoch=end,
    first_step=step,
    steps=steps,
    first_example=consumed,
    batch_size=batch,
    learning_rate=lr,
    final_learning_rate=lr_end,
    momentum=mom,
    final_momentum=mom_end,
    weight_decay=float(weight_decay),
    noise_scale=g,
    noise_deviation=g / g_base - 1.0 if g_base > 0 else 0.0,
    baseline_learning_rate=base_lr,
    baseline_noise_scale=g_base,
    baseline_steps=-(-end_example // b0) - (-(-start_example // b0)),
    learning_rate_fn=lr_fn,
    momentum_fn=m_fn,
    micro_batches=-(-batch // micro_batch) if micro_batch else 1,
    b2=moved.b2 if moved else None,
    eps=moved.eps if moved else None,
  )


def _phases(
  chosen: list[tuple[float, int]],
  schedule: Schedule,
  epochs: float,
  *,
  n: int,
  b0: int,
  exact: bool,
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  micro_batch: int | None,
  adam: tuple[adam_rules.Rule, float | None, float | None],
) -> list[Phase]:
  """The chosen (first epoch, batch) pairs as phases of whole steps, boundaries where the
  baseline's fall; `micro_batch`: accumulate over micro-batches of this size; `adam`:
  the Adam rule and the b2 and eps it starts from (the paper's rule for SGD)."""
  rule = adam[0]

  def lr_values(epoch, xp):
    return learning_rate * schedule.multiplier(epoch, xp)

  def momentum_values(epoch, xp):
    return schedule.momentum(epoch, momentum, xp)

  values, budget = (lr_values, momentum_values), round(epochs * n)
  result, consumed, step = [], 0, 0
  ends = [p[0] for p in chosen[1:]] + [epochs]
  for (start, batch), end in zip(chosen, ends):
    # Whatever part of a change of the noise scale the batch did not take
    # (rises, the cap, rounding), the learning rate takes: in full under the
    # paper's rule (lr / B held), by its square root under Adam's square-root
    # rules (lr^2 / B held).
    factor = noise.batch_noise_factor(n, b0, exact) / noise.batch_noise_factor(n, batch, exact)
    start_example, end_example = round(start * n), round(end * n)
    steps = min(-(-(end_example - consumed) // batch), steps_to_end(consumed, batch, budget, b0))
    if steps <= 0:  # the previous phase's last step already passed this one's end
      continue
    where = (len(result), start, end, step, steps, consumed, batch, start_example, end_example)
    result.append(
      _phase(
        where,
        schedule,
        values,
        factor**rule.lr_power,
        n=n,
        b0=b0,
        weight_decay=weight_decay,
        micro_batch=micro_batch,
        adam=adam,
      )
    )
    consumed += steps * batch
    step += steps
  return result


def plan_phases(
  *,
  dataset_size: int,
  epochs: float,
  learning_rate: float,
  batch_size: int,
  momentum: float = 0.0,
  schedule: Schedule | None = None,
  weight_decay: float = 0.0,
  strategy: str = "increase_batch",
  max_batch_size: int | None = None,
  batch_multiple: int = 1,
  noise_rule: str = "approx",
  min_phase_epochs: float | None = None,
  adam_rule: str | None = None,
  b2: float | None = None,
  eps: float | None = None,
  ramp: tuple = (),
) -> Plan:
  """Derives batch-size phases that keep the noise scale on the baseline's path.

  The baseline trains at `batch_size` with the learning rate
  `learning_rate * schedule.multiplier(epoch)`. The strategies:

  * `decay_lr`: the baseline itself (batch fixed).
  * `increase_batch`: each drop of the noise scale below the running peak is
    taken by the batch, the learning rate held at its peak; refuses to pass
    `max_batch_size` or the dataset size.
  * `hybrid`: as `increase_batch` up to `max_batch_size`; past it the batch
    stays at the cap and the learning rate takes the rest of each drop.
  * `ramp`: the batch follows `ramp` (explicit (epoch, batch) pairs); the
    learning rate takes what keeps the noise scale on the baseline's path.
  * `accumulate`: as `increase_batch` without the cap; a batch past
    `max_batch_size` is a multiple of it, computed as `micro_batches`
    micro-batches of the cap per update (gradient accumulation).

  Rises of the noise scale (warm-up, restarts) are always taken by the
  learning rate: the batch never shrinks, so an SGDR restart after the batch
  grew k-fold restarts at k times the baseline's peak rate (the `B ∝ lr`
  rule). Batch sizes are rounded down to multiples of
  `batch_multiple` and the learning rate takes what rounding leaves, so it
  never exceeds the baseline's running peak. Under `noise_rule="exact"` the
  plan therefore follows the baseline's noise scale exactly; under `approx`
  it drifts where B is not small against N, and `noise_deviation` says by
  how much. Continuous schedules are cut into phases at least
  `min_phase_epochs` long, a cut kept only where the batch grows; within a
  phase the learning rate follows the schedule.

  Args:
    dataset_size: training examples `N`.
    epochs: training length.
    learning_rate: the baseline's peak learning rate.
    batch_size: the baseline's (and the first phase's) batch size.
    momentum: momentum (or Adam's b1), unless the schedule drives it.
    schedule: the baseline's schedule (`bigbatch.schedules`); constant if None.
    weight_decay: carried into every phase (optax-style decay is multiplied
      by the learning rate, so per epoch it follows the noise scale).
    strategy: `decay_lr`, `increase_batch`, `hybrid` or `accumulate`.
    max_batch_size: the largest batch the devices hold (needed by `hybrid`
      and `accumulate`).
    batch_multiple: batch sizes are multiples of this (devices x ghost batch).
    noise_rule: `approx` multiplies the batch by each decay factor, as the
      paper does (`g ∝ lr N / B`); `exact` solves `lr (N/B - 1) = const`.
    min_phase_epochs: shortest phase cut from a continuous schedule; default
      a tenth of training.
    adam_rule: for Adam, AdamW and AMSGrad, how the learning rate, b1, b2 and
      eps follow the batch (`bigbatch.plan.adam_rules`: `paper`, `sqrt`, `sde`,
      `beta2_halflife`); None: SGD's, the paper's rule. Under `sqrt` and `sde`
      a decay by a becomes batch x a and lr / sqrt(a) (Seesaw), and the noise
      columns hold lr sqrt(N/B) / (1 - m), the quantity those rules keep.
    b2, eps: Adam's at the baseline's batch (needed with `adam_rule`).
    ramp: `ramp`'s batches: (epoch, batch) pairs, the batch from each epoch on
      (a warm-up of the batch, as Merrill et al. 2025 build one from measured
      critical batches); the learning rate keeps the noise on the baseline's
      path (`adam_rule`'s quantity), so a batch x k takes lr x k (SGD's g-rule)
      or lr x sqrt(k) (Adam's square-root rules).

  Returns:
    The `Plan`.

  Raises:
    PlanError: naming the argument, for input no plan can satisfy.
  """
  validate(**locals())  # every argument, by name
  schedule = schedule or Schedule()
  n, b0 = int(dataset_size), int(batch_size)
  # what both the batches' choice and the phases read: the dataset, the base batch, the rule
  shape = {"n": n, "b0": b0, "exact": noise_rule == "exact"}
  chosen = _choose_batches(
    schedule, float(epochs), strategy, min_phase_epochs or epochs / 10, **shape,
    max_batch_size=max_batch_size, batch_multiple=batch_multiple, ramp=tuple(ramp),
  )  # fmt: skip
  result = _phases(
    chosen,
    schedule,
    float(epochs),
    **shape,
    learning_rate=learning_rate,
    momentum=momentum,
    weight_decay=weight_decay,
    micro_batch=max_batch_size if strategy == "accumulate" else None,
    adam=(adam_rules.rule(adam_rule), b2, eps),
  )
  return Plan(
    phases=tuple(result),
    dataset_size=n,
    epochs=float(epochs),
    strategy=strategy,
    noise_rule=noise_rule,
    max_batch_size=max_batch_size,
    baseline_total_steps=-(-round(epochs * n) // b0),
    baseline_batch_size=b0,
    baseline_learning_rate=float(learning_rate),
    baseline_momentum=float(momentum),
    baseline_schedule=schedule,
    adam_rule=adam_rule,
  )
