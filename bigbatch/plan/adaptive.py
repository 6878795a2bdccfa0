"""Phases decided while training: the batch grows when measurements say so.

A fixed plan follows a schedule the user already knows. The strategies here
decide the phases online instead, at each evaluation (every
`eval_every_epochs`, the points where Keras and PyTorch's ReduceLROnPlateau
decide):

* `plateau`: ReduceLROnPlateau (monitor, mode, factor, patience, cooldown,
  threshold, threshold_mode, min_delta), except that at a plateau the
  **batch** grows by `factor` instead of the learning rate falling.
* `plateau_lr`: the classic ReduceLROnPlateau (the learning rate falls by
  `factor`, the batch stays): the baseline to compare with.
* `noise`: the batch grows by `factor` when the measured gradient noise
  scale B_simple is confidently above `noise_ratio` times the batch: the
  lower bound of its confidence interval (`gradients.interval`) clears
  `noise_ratio` x B. It also grows when |G|^2 has not been resolved at any
  evaluation of the phase while tr(S) has been: the gradient never stood out
  of its noise, so B_simple is far above the batch (an unbiased |G|^2 near
  zero is what made the old point estimate negative, and a negative estimate
  read as "do not grow", the wrong way round). Either way the phase must have
  lasted `min_phase_epochs`, and the predicted saving of steps
  (1 + B_noise/B) / (1 + B_noise/B') - 1 at B_noise = the lower bound must be
  at least `min_gain` (AdaptDL re-decides at epoch ends and only for a gain
  over 5%; the same guards keep this rule from thrashing on a noisy estimate).

Every strategy grows the batch by a whole factor, rounded down to
`batch_multiple`, never past `max_batch_size` (or the dataset) and never
down. Whatever part of the factor the batch cannot take (the cap, rounding),
the learning rate takes, as the `hybrid` plan does, so a decision always
lowers the noise scale lr N / B by `factor`; at the cap the learning rate
falls by the whole factor, down to `min_learning_rate`. The learning rate is
otherwise held, for SGD as for Adam: the paper's increasing-batch schedules
hold it for both (section 5.1 runs Adam on the same batch steps). With
`plan.adam_rule` set, a decision follows that rule instead
(`bigbatch.plan.adam_rules`): under `sqrt` and `sde` the batch x k takes
lr x sqrt(k), so a cut of the noise by `factor` is batch x factor with
lr / sqrt(factor) (Seesaw), and `sde` and `beta2_halflife` move b1, b2 and
eps with k. With the measured B_simple known, the rule does not raise the
learning rate for the part of the batch past B_simple (Surge, Li et al.
2024: Adam's best learning rate stops rising near B_noise); the decision
says so.

Each decision (step, data position, new batch, new learning rate, the reason
and the measurement behind it) goes into the checkpoint and metrics, and
the plan is a function of the decisions (`plan_from_decisions`), so the data
position after a restart is exactly what it was.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import optax

from bigbatch.plan import adam_rules, noise
from bigbatch.plan.phases import Phase, Plan, steps_to_end

STRATEGIES = ("plateau", "plateau_lr", "noise")
MONITORS = ("train_loss", "eval_loss", "train_eval_loss", "eval_accuracy")


@dataclasses.dataclass(frozen=True)
class Decision:
  """One change of phase, as the checkpoint and the metrics record it."""

  step: int
  position: int
  batch_size: int
  learning_rate: float
  reason: str
  measurement: float | None  # what the reason names; None: not a number (unbounded)
  # Adam's b1, b2 and eps from here, where the plan's Adam rule moves them (else None)
  b1: float | None = None
  b2: float | None = None
  eps: float | None = None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> Decision:
    """A recorded decision (one recorded before the Adam fields has none of them)."""
    fields = dataclasses.fields(cls)
    return cls(**{f.name: values[f.name] for f in fields if f.name in values})


@dataclasses.dataclass(frozen=True)
class Change:
  """What a decision changes: the batch, the learning rate, and Adam's b1, b2 and eps
  where its rule moves them; `surge`: the learning rate was not raised past B_simple."""

  batch_size: int
  learning_rate: float
  b1: float | None = None
  b2: float | None = None
  eps: float | None = None
  surge: bool = False


@dataclasses.dataclass(frozen=True)
class Settings:
  """The `plan` fields an adaptive strategy reads (see `config.default_plan_config`)."""

  strategy: str
  factor: float = 5.0
  monitor: str = "train_loss"
  mode: str = "min"
  patience: int = 2
  cooldown: int = 0
  threshold: float = 1e-4
  threshold_mode: str = "rel"
  min_delta: float = 0.0
  min_learning_rate: float = 0.0
  monitor_horizon_epochs: float = 0.5
  noise_ratio: float = 1.0
  min_phase_epochs: float = 1.0  # the plan's own field: the shortest phase
  min_gain: float = 0.05
  max_batch_size: int | None = None
  batch_multiple: int = 1
  adam_rule: str | None = None  # the plan's own field (`bigbatch.plan.adam_rules`)

  @classmethod
  def from_config(cls, plan: Mapping[str, Any]) -> Settings:
    """From a config's `plan` block: `strategy`, `max_batch_size`, `batch_multiple`,
    `min_phase_epochs`, and the rest from its `adapt` block."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(plan.get("adapt") or {})
    for key in _SHARED:
      values[key] = plan.get(key)
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})

  def check(self) -> None:
    """Raises ValueError naming the first `plan.` field out of range."""

    def need(ok: bool, field: str, allowed: str) -> None:
      if not ok:
        where = "plan" if field in ("strategy", "min_phase_epochs") else "plan.adapt"
        raise ValueError(f"{where}.{field}: must be {allowed}, got {getattr(self, field)!r}")

    need(self.strategy in STRATEGIES, "strategy", f"one of {', '.join(STRATEGIES)}")
    need(self.factor > 1, "factor", "> 1 (the noise scale falls by it at each decision)")
    need(self.monitor in MONITORS, "monitor", f"one of {', '.join(MONITORS)}")
    need(self.mode in ("min", "max"), "mode", "min or max")
    need(self.patience >= 0, "patience", ">= 0")
    need(self.cooldown >= 0, "cooldown", ">= 0")
    need(self.threshold >= 0, "threshold", ">= 0")
    need(self.threshold_mode in ("rel", "abs"), "threshold_mode", "rel or abs")
    need(self.min_delta >= 0, "min_delta", ">= 0")
    need(self.min_learning_rate >= 0, "min_learning_rate", ">= 0")
    need(self.monitor_horizon_epochs > 0, "monitor_horizon_epochs", "> 0")
    need(self.noise_ratio > 0, "noise_ratio", "> 0")
    need(self.min_phase_epochs >= 0, "min_phase_epochs", ">= 0")
    need(self.min_gain >= 0, "min_gain", ">= 0")


def default_config() -> dict[str, Any]:
  """The `plan.adapt` block: every field of `Settings` a config sets there, at its default."""
  return {f.name: f.default for f in dataclasses.fields(Settings) if f.name not in _SHARED}


# the fields of `Settings` that are the plan's own, not `plan.adapt`'s
_SHARED = ("strategy", "max_batch_size", "batch_multiple", "min_phase_epochs", "adam_rule")


def initial_plan(plan: Plan, strategy: str, learning_rate: float) -> Plan:
  """The plan before any decision: one phase at the first batch and `learning_rate` to
  the end of the budget (`plan` is the config's baseline, whose schedule the decisions
  replace)."""
  first = dataclasses.replace(plan.phases[0], learning_rate=float(learning_rate))
  first = dataclasses.replace(
    first,
    noise_scale=learning_rate
    * noise.batch_noise_factor(plan.dataset_size, first.batch_size)
    / (1.0 - first.momentum),
  )
  only = dataclasses.replace(
    first,
    end_epoch=plan.epochs,
    steps=steps_to_end(
      0, first.batch_size, round(plan.epochs * plan.dataset_size), plan.baseline_batch_size
    ),
    baseline_steps=plan.baseline_total_steps,
    final_learning_rate=first.learning_rate,
    final_momentum=first.momentum,
    learning_rate_fn=optax.constant_schedule(first.learning_rate),
    momentum_fn=optax.constant_schedule(first.momentum),
  )
  return dataclasses.replace(plan, phases=(only,), strategy=strategy)


def plan_from_decisions(initial: Plan, decisions: list[Decision]) -> Plan:
  """The plan that `decisions` made of `initial` (the one place phases are rebuilt).

  Phase k runs from decision k-1 (or step 0) to decision k; the last runs to
  the end of the epoch budget at its batch size, as a plan's last phase does
  (`steps_to_end`), and at least one step: a decision taken is trained.
  """
  first = initial.phases[0]
  n, end_example = initial.dataset_size, round(initial.epochs * initial.dataset_size)
  starts = [(0, 0, first.batch_size, first.learning_rate, first.start_epoch)]
  starts += [(d.step, d.position, d.batch_size, d.learning_rate, d.position / n) for d in decisions]
  adam = [(first.momentum, first.b2, first.eps)]
  for d in decisions:  # a rule that moves none of them leaves the first phase's
    b1, b2, eps = adam[-1]
    adam.append((b1 if d.b1 is None else d.b1, b2 if d.b2 is None else d.b2,
                 eps if d.eps is None else d.eps))  # fmt: skip
  power = adam_rules.rule(initial.adam_rule).lr_power
  b0 = initial.baseline_batch_size  # the baseline's, for its steps over the same examples
  phases = []
  for index, (step, position, batch, lr, epoch) in enumerate(starts):
    if index + 1 < len(starts):
      steps, end_epoch = starts[index + 1][0] - step, starts[index + 1][4]
      until = starts[index + 1][1]
    else:
      steps = max(steps_to_end(position, batch, end_example, b0), 1)
      end_epoch = initial.epochs
      until = end_example
    g = lr * noise.batch_noise_factor(n, batch) ** power / (1.0 - first.momentum)
    b1, b2, eps = adam[index]
    phases.append(
      dataclasses.replace(
        first,
        index=index,
        start_epoch=epoch,
        end_epoch=end_epoch,
        first_step=step,
        steps=steps,
        first_example=position,
        batch_size=batch,
        learning_rate=lr,
        final_learning_rate=lr,
        noise_scale=g,
        noise_deviation=g / first.noise_scale - 1.0 if first.noise_scale else 0.0,
        baseline_steps=-(-until // b0) - (-(-position // b0)),
        learning_rate_fn=optax.constant_schedule(lr),
        momentum=b1,
        final_momentum=b1,
        momentum_fn=optax.constant_schedule(b1),
        b2=b2,
        eps=eps,
      )
    )
  return dataclasses.replace(initial, phases=tuple(phases))


def next_phase(
  settings: Settings, phase: Phase, dataset_size: int, b_simple: float | None = None
) -> Change | None:
  """What a decision in `phase` changes; None if nothing can change.

  The noise scale falls by `factor`: the batch takes what it can (a whole
  multiple of `batch_multiple`, at most the cap), the learning rate the rest
  (down to `min_learning_rate`). Under an Adam rule the batch's ratio k raises
  the learning rate by k^lr_power (sqrt(k) under `sqrt` and `sde`) and moves
  b1, b2 and eps; `b_simple` (the measured noise scale, if known) caps the
  part of k that raises the learning rate at B_simple (Surge).
  """
  batch, lr = phase.batch_size, phase.learning_rate
  if settings.strategy == "plateau_lr":
    new_batch = batch
  else:
    cap = min(settings.max_batch_size or dataset_size, dataset_size)
    cap -= cap % settings.batch_multiple
    wanted = math.floor(batch * settings.factor / settings.batch_multiple + 1e-9)
    new_batch = max(batch, min(wanted * settings.batch_multiple, cap))
  rule = adam_rules.rule(settings.adam_rule)
  ratio = raised = new_batch / batch
  if rule.name is not None and b_simple is not None and new_batch > b_simple:
    raised = max(1.0, min(new_batch, b_simple) / batch)  # no rise for the part past it
  new_lr = max(lr * raised**rule.lr_power / settings.factor, settings.min_learning_rate)
  if new_batch == batch and new_lr >= lr:
    return None
  change = Change(new_batch, new_lr, surge=raised < ratio)
  if rule.moves_betas:
    moved = rule.hyperparams(ratio, phase.momentum, phase.b2, phase.eps)
    change = dataclasses.replace(change, b1=moved.b1, b2=moved.b2, eps=moved.eps)
  return change


def measured_noise_scale(values: Mapping[str, Any]) -> float | None:
  """B_simple where an evaluation's values resolve it (|G|^2 stands out of its noise, so
  the interval is closed): the estimate; else None.

  Surge's cap needs B_simple below the new batch, which a lower bound alone (B_simple is
  at least L, possibly unbounded) can never show: a run whose |G|^2 is not resolved has
  B_simple far above its batch, and an Adam rule then raises the rate in full.
  """
  if noise.known(values.get("grad_noise_scale_high")) is None:
    return None
  return noise.known(values.get("grad_noise_scale"))


class Policy:
  """The deciding state of a run: a plateau detector, or the noise rule, and the decisions.

  Everything it holds travels in the checkpoint's record (`state_dict`), so a
  resumed run decides exactly as the uninterrupted one.
  """

  def __init__(self, settings: Settings, dataset_size: int, state: Mapping[str, Any] | None):
    state = state or {}
    self.settings, self.dataset_size = settings, dataset_size
    self.decisions = [Decision.from_dict(d) for d in state.get("decisions", [])]
    self.best = state.get("best")
    self.bad = int(state.get("bad", 0))
    self.cooldown_left = int(state.get("cooldown_left", 0))
    self.loss_ema = float(state.get("loss_ema", 0.0))
    self.loss_weight = float(state.get("loss_weight", 0.0))
    # the noise rule, over the phase's evaluations so far: was |G|^2 ever resolved, and
    # was tr(S) (some lower bound known)?
    self.resolved_in_phase = bool(state.get("resolved_in_phase", False))
    self.measured_in_phase = bool(state.get("measured_in_phase", False))

  def state_dict(self) -> dict[str, Any]:
    return {
      "decisions": [d.to_dict() for d in self.decisions],
      "best": self.best,
      "bad": self.bad,
      "cooldown_left": self.cooldown_left,
      "loss_ema": self.loss_ema,
      "loss_weight": self.loss_weight,
      "resolved_in_phase": self.resolved_in_phase,
      "measured_in_phase": self.measured_in_phase,
    }

  def observe_loss(self, loss: float, batch_size: int) -> None:
    """Folds one step's training loss into the smoothed training loss (horizon in examples)."""
    horizon = self.settings.monitor_horizon_epochs * self.dataset_size
    decay = math.exp(-batch_size / horizon)
    self.loss_ema = decay * self.loss_ema + (1 - decay) * loss
    self.loss_weight = decay * self.loss_weight + (1 - decay)

  @property
  def smoothed_loss(self) -> float:
    return self.loss_ema / self.loss_weight if self.loss_weight > 0 else math.nan

  def _improved(self, value: float) -> bool:
    s = self.settings
    if self.best is None:
      return True
    sign = 1.0 if s.mode == "min" else -1.0
    margin = max(
      s.threshold * abs(self.best) if s.threshold_mode == "rel" else s.threshold, s.min_delta
    )
    return sign * (self.best - value) > margin

  def _plateau(self, value: float) -> bool:
    """PyTorch's ReduceLROnPlateau.step: True when `patience` evaluations brought nothing."""
    if self._improved(value):
      self.best, self.bad = value, 0
    else:
      self.bad += 1
    if self.cooldown_left > 0:
      self.cooldown_left -= 1
      self.bad = 0
    if self.bad > self.settings.patience:
      self.cooldown_left, self.bad = self.settings.cooldown, 0
      return True
    return False

  def _noise_says_grow(
    self, phase: Phase, position: int, values: Mapping[str, Any]
  ) -> tuple[str, float | None] | None:
    """The noise rule at an evaluation: (reason, measurement) to grow, or None."""
    s = self.settings
    low = noise.known(values.get("grad_noise_scale_low"))
    resolved = noise.known(values.get("grad_noise_scale_high")) is not None
    self.resolved_in_phase |= resolved
    self.measured_in_phase |= low is not None
    long_enough = position - phase.first_example >= s.min_phase_epochs * self.dataset_size
    change = next_phase(s, phase, self.dataset_size, measured_noise_scale(values))
    if not long_enough or change is None:
      return None
    if low is not None and low >= s.noise_ratio * phase.batch_size:
      reason = f"B_simple >= {low:,.0f} (its lower bound) >= {s.noise_ratio:g} x batch"
    elif self.measured_in_phase and not self.resolved_in_phase:
      reason = "|G|^2 not resolved at any evaluation of the phase: B_simple far above the batch"
    else:
      return None
    if change.batch_size != phase.batch_size and low is not None:  # below the cap: worth it?
      steps_now, _ = noise.critical_batch_costs(phase.batch_size, low)
      steps_then, _ = noise.critical_batch_costs(change.batch_size, low)
      if steps_now / steps_then - 1.0 < s.min_gain:
        return None
    return reason, low

  def decide(
    self, step: int, position: int, phase: Phase, values: Mapping[str, float]
  ) -> Decision | None:
    """At an evaluation: the decision this strategy makes now, if any (and records it).

    Args:
      step: the step just done.
      position: examples consumed so far.
      phase: the phase in progress.
      values: the evaluation's values (`eval_loss`, ...) and the step's
        metrics (`grad_noise_scale`, ...).
    """
    s = self.settings
    if s.strategy == "noise":
      grow = self._noise_says_grow(phase, position, values)
      if grow is None:
        return None
      reason, measurement = grow
    else:
      monitored = self.smoothed_loss if s.monitor == "train_loss" else values.get(s.monitor)
      if monitored is None or not math.isfinite(monitored) or not self._plateau(monitored):
        return None
      reason = f"{s.monitor} plateau: no improvement in {s.patience + 1} evaluations"
      measurement = monitored
    change = next_phase(s, phase, self.dataset_size, measured_noise_scale(values))
    if change is None:
      return None
    measurement = None if measurement is None else float(measurement)
    if change.surge:
      reason += "; lr not raised past the measured B_simple (Surge)"
    decision = Decision(
      step, position, change.batch_size, change.learning_rate, reason, measurement,
      change.b1, change.b2, change.eps,
    )  # fmt: skip
    self.decisions.append(decision)
    self.resolved_in_phase = self.measured_in_phase = False  # a new phase
    return decision


@dataclasses.dataclass(frozen=True)
class _ConstantPlan(Plan):
  """A plan whose every field, as an optimizer hyperparameter, is its first phase's number."""

  def schedule(self, name: str):  # a number, not a function of the step
    return float(getattr(self.phases[0], name))


def constants(plan: Plan) -> Plan:
  """`plan` for building an optimizer whose hyperparameters live in its state.

  `optax.inject_hyperparams` keeps a number in the optimizer state, where a
  decision can change it between steps (`optim.set_hyperparams`) without
  compiling again; a plan's schedule would be baked into the compiled step.
  """
  return _ConstantPlan(**{f.name: getattr(plan, f.name) for f in dataclasses.fields(Plan)})


def describe(settings: Settings, plan: Plan, eval_every_epochs: float) -> str:
  """The bounds an adaptive strategy works within, for `bigbatch plan`."""
  s, first = settings, plan.phases[0]
  cap = min(s.max_batch_size or plan.dataset_size, plan.dataset_size)
  cap -= cap % s.batch_multiple
  if s.strategy == "plateau_lr":
    change = f"the learning rate falls by {s.factor:g} (down to {s.min_learning_rate:g})"
  else:
    change = (
      f"the batch grows x{s.factor:g} (multiples of {s.batch_multiple:,}, at most {cap:,}); "
      f"past that the learning rate takes the rest (down to {s.min_learning_rate:g})"
    )
  if s.strategy == "noise":
    rule = (
      f"when the lower bound of the measured B_simple >= {s.noise_ratio:g} x batch (or |G|^2 "
      f"is not resolved at any evaluation of a phase), after {s.min_phase_epochs:g} epochs in "
      f"a phase, for a predicted saving of steps >= {s.min_gain:.0%}"
    )
  else:
    rule = (
      f"when {s.monitor} ({s.mode}) has not improved by {s.threshold:g} ({s.threshold_mode}) "
      f"or {s.min_delta:g} for {s.patience + 1} evaluations; cooldown {s.cooldown}"
    )
  fewest = -(-round(plan.epochs * plan.dataset_size) // cap)
  rule = adam_rules.rule(s.adam_rule)
  adam = (
    [f"  {rule.describe()}; with B_simple measured, the rate is not raised past it (Surge)"]
    if rule.name
    else []
  )
  return "\n".join(
    [
      f"adaptive: {s.strategy}: phases are decided at each evaluation (every "
      f"{eval_every_epochs:g} epochs), starting at batch {first.batch_size:,}, lr "
      f"{first.learning_rate:g}",
      f"  {rule}: {change}",
      f"  updates: at most {plan.total_steps:,} (no decision), at least about {fewest:,} "
      f"(the cap from the start)",
      *adam,
    ]
  )
