"""The phase loop: one process's share of a run, step by step.

`Loop` runs each phase of the plan with the train step compiled for the
phase's batch size (the next phase's compiled in the background on a GPU or
TPU). The data position is a function of the step (`data_position`, the one place
steps become examples), so a run resumed from any checkpoint continues
exactly where it stopped, across batch-size changes. Beside the steps it
logs metrics rows, evaluates, saves checkpoints, and calls its hooks
(`bigbatch.train.hooks`): what is logged up to a checkpoint's step is on disk
before the checkpoint is saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import tqdm

from bigbatch import data, optim
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.plan import adaptive, noise
from bigbatch.plan.phases import Phase, Plan
from bigbatch.train.clock import Clock
from bigbatch.train.evaluate import Evaluator
from bigbatch.train.hooks import NOISE_KEYS, Hook, StepInfo
from bigbatch.train.setup import Run
from bigbatch.workdir import faults
from bigbatch.workdir.runlog import MetricsLog

__all__ = ["Loop", "NonFiniteLossError", "compiles_in_background", "data_position"]


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss, or an array of the train state (parameters,
  batch statistics, optimizer state, noise accumulators) that is not finite; the message
  names the step, what went non-finite first, and the last checkpoint (all finite)."""


def data_position(plan: Plan, step: int) -> int:
  """Examples consumed before `step` (`Plan.examples_before`)."""
  return plan.examples_before(step)


class Loop:
  """The phase loop: steps, logs, evaluations and checkpoints of one process's share of a run."""

  def __init__(
    self,
    run: Run,
    clock: Clock,
    logs: MetricsLog,
    bar: tqdm.tqdm,
    hooks: Sequence[Hook] = (),
  ):
    self.run, self.plan, self.clock, self.logs, self.bar = run, run.plan, clock, logs, bar
    self.hooks = tuple(hooks)
    spec = run.spec
    train_step, self._metric_keys = st.packed_metrics(run.train_step)
    self.steps = self._compiled(train_step)
    # `noise.every` > 1: the steps between measurements take the batch whole (`between`)
    self.between, self.every = None, spec.noise.every
    if run.between_step is not None:
      between_step, self._between_keys = st.packed_metrics(run.between_step)
      self.between = self._compiled(between_step)
    self.evaluate = Evaluator(run, run.state)
    self.eval_period = spec.eval.every_epochs * self.plan.dataset_size
    self.preempted: list[bool] = []
    self.one_in_flight = waits_for_each_step(run.mesh)
    self._pending: list[tuple[int, Phase, dict[str, Any]]] = []
    self._last_log = (time.perf_counter(), int(jax.device_get(run.state.step)))

  def _compiled(self, step) -> st.CompiledSteps:
    run = self.run
    return st.CompiledSteps(
      step,
      run.state,
      data.example_batch(run.dataset),
      run.mesh,
      ghost_batch_size=run.spec.ghost_batch_size,
    )

  def step_at(self, step: int) -> st.CompiledSteps:
    """The compiled step that runs step `step`: the measuring one, or between two
    measurements of `noise.every` the one that takes the batch whole."""
    return self.steps if self.between is None or step % self.every == 0 else self.between

  @property
  def compile_records(self) -> list[st.CompileRecord]:
    return self.steps.records + (self.between.records if self.between is not None else [])

  def record(self, step: int, **extra: Any) -> dict[str, Any]:
    """What a checkpoint carries besides the state."""
    return {
      "step": step,
      "state_format": st.STATE_FORMAT,
      "position": data_position(self.plan, step),
      "seed": self.run.spec.seed,
      "config": self.run.spec.to_dict(),
      "plan": self.plan.to_dict(),
      "elapsed": self.clock.totals(step, self.compile_records),
      **({"policy": self.run.policy.state_dict()} if self.run.policy is not None else {}),
      **extra,
    }

  def save(self, state, step: int, **extra: Any) -> None:
    jax.block_until_ready(state)  # the steps dispatched so far count as training
    start = self.clock.now()
    self.flush(state)
    self.logs.sync()  # the rows up to `step` are on disk before the checkpoint is
    self.run.checkpoints.save(step, state, self.record(step, **extra))
    # the step's phase: the one its last update belonged to
    phase = self.plan.phase_at(max(min(step, self.plan.total_steps) - 1, 0)).index
    self.clock.spend(phase, "checkpoint_seconds", self.clock.now() - start)

  def _evaluate(self, state, phase: Phase) -> dict[str, float]:
    """The evaluation, its time counted apart from the phase's training."""
    jax.block_until_ready(state)  # the steps dispatched so far count as training
    start = self.clock.now()
    values = self.evaluate(state)
    self.clock.spend(phase.index, "eval_seconds", self.clock.now() - start)
    return values

  def flush(self, state, evaluation: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fetches the pending steps' metrics, stops on a non-finite loss, logs the last (and
    returns its row's values), and calls the hooks of a logged row.

    An evaluation at the same step joins its row: one row per step, so each
    (step, metric) is logged once.
    """
    if not self._pending:
      return {**(evaluation or {})}
    keys = self._metric_keys
    fetched = [dict(zip(keys, row)) for row in jax.device_get([m for _, _, m in self._pending])]
    for (at, phase, _), metrics in zip(self._pending, fetched):
      loss, bad = float(metrics["loss"]), int(metrics.pop(st.NONFINITE_KEY, -1))
      if not math.isfinite(loss) or bad >= 0:  # before any save: checkpoints stay finite
        self._stop_non_finite(state, at, phase, metrics, loss, bad)
      if self.run.policy is not None:  # every step's loss, for the smoothed training loss
        self.run.policy.observe_loss(loss, phase.batch_size)
    at, phase, _ = self._pending[-1]
    now, (then, then_step) = time.perf_counter(), self._last_log
    examples = data_position(self.plan, at) - data_position(self.plan, then_step)
    rate = examples / max(now - then, 1e-9)
    self._last_log = (now, at)
    position = data_position(self.plan, at)
    throughput = self.run.experiment.throughput
    tokens = (
      {"tokens": position * throughput.tokens_per_example} if throughput.tokens_per_example else {}
    )
    values = {
      **fetched[-1],
      "epoch": position / self.plan.dataset_size,
      **tokens,
      "phase": phase.index,
      "examples_per_second": rate,
      **throughput.rates(rate),
      **noise.in_tokens(fetched[-1], throughput.tokens_per_example),  # B_simple in tokens
      **(evaluation or {}),
    }
    self.logs.write(at, values)
    self._note_noise(phase, values)
    self.call_hooks("log", state, at, phase, values)
    where = (
      {"tokens": f"{values['tokens']:,}", "tok_s": f"{values['tokens_per_second']:,.0f}"}
      if "tokens" in values
      else {"epoch": f"{values['epoch']:.2f}", "ex_s": f"{rate:,.0f}"}
    )
    self.bar.set_postfix(
      phase=phase.index,
      loss=f"{float(values['loss']):.4f}",
      lr=f"{float(values.get('learning_rate', 0.0)):.4g}",
      batch=phase.batch_size,
      **where,
      refresh=False,
    )
    self._pending.clear()
    return values

  def _note_noise(self, phase: Phase, values: Mapping[str, Any]) -> None:
    """Keeps each phase's latest B_simple and its bounds for the summary."""
    if "grad_noise_scale_low" in values:  # measured
      for key in NOISE_KEYS:
        self.clock.note(phase.index, key, noise.known(values.get(key)))

  def call_hooks(
    self, moment: str, state, step: int, phase: Phase, values: Mapping[str, Any] | None = None
  ) -> adaptive.Decision | None:
    """Calls the hooks due at `step` at `moment`; the first decision one returns, if any."""
    hooks = [hook for hook in self.hooks if hook.due(step, moment)]
    if not hooks:
      return None
    info = StepInfo(
      step=step,
      state=state,
      phase=phase,
      plan=self.plan,
      position=data_position(self.plan, step),
      previous_position=data_position(self.plan, step - 1) if step > 0 else 0,
      values=values,
      say=self.bar.write,
    )
    decision = None
    for hook in hooks:
      returned = hook.fn(info)
      if decision is None and isinstance(returned, adaptive.Decision):
        decision = returned
    return decision

  def _stop_non_finite(self, state, at: int, phase: Phase, metrics, loss: float, bad: int):
    """Stops the run at step `at`, naming what went non-finite there first: the loss, or
    the first array of the new state (`bad`, its index in `st.leaf_names` order)."""
    checkpoints = self.run.checkpoints
    checkpoints.wait()
    good = checkpoints.latest_step()
    what = [f"loss is {loss}"] if not math.isfinite(loss) else []
    if bad >= 0:
      what.append(f"{st.leaf_names(state)[bad]} became non-finite")
    # every checkpoint is saved after its step's state was read finite (`flush`)
    kept = (
      f"the last good checkpoint (step {good}, every array finite) is kept in "
      f"{checkpoints.directory}"
      if good is not None
      else f"no checkpoint was written yet in {checkpoints.directory}"
    )
    raise NonFiniteLossError(
      f"{' and '.join(what)} at step {at} (phase {phase.index}, batch {phase.batch_size}, "
      f"lr {float(metrics.get('learning_rate', float('nan'))):.4g}); {kept}"
    )

  def train(self, state, stop_at_step: int | None) -> tuple[Any, str]:
    """Runs the phases from the state's step; returns the state and the status."""
    step = int(jax.device_get(state.step))
    while step < self.plan.total_steps:  # an adaptive plan grows phases as it goes
      phase = self.plan.phase_at(step)
      stop = phase.end_step if stop_at_step is None else min(phase.end_step, stop_at_step)
      self.clock.start_phase(phase.index, step, phase.batch_size)
      # this phase's step first: compiling the next one beside it would only slow both
      start = self.clock.now()
      self.steps.compiled(phase.batch_size)
      if self.between is not None:
        self.between.compiled(phase.batch_size)
        # one metrics vector, read by one list of keys (filled in as each step is traced)
        assert self._between_keys == self._metric_keys, (self._between_keys, self._metric_keys)
      self.clock.spend(phase.index, "compile_wait_seconds", self.clock.now() - start)
      self._prefetch_next(phase)
      state, step, outcome = self._phase(state, phase, step, stop, stop_at_step)
      jax.block_until_ready(state)  # its steps still in flight are the phase's time
      self.clock.end_phase(step)
      if outcome == "stopped":
        self.save(state, step)
        return state, "preempted"
    return state, "completed"  # the last steps' metrics are logged by `finish`

  def _prefetch_next(self, phase: Phase) -> None:
    """Compiles the batch size that comes next in the background: the plan's next
    phase's, or the one the next decision of an adaptive strategy would switch to."""
    if not compiles_in_background(self.run.spec.background_compile):
      return
    policy, following = self.run.policy, None
    if policy is not None:
      change = adaptive.next_phase(policy.settings, phase, self.plan.dataset_size)
      following = change.batch_size if change else None
    elif phase.index + 1 < len(self.plan.phases):
      following = self.plan.phases[phase.index + 1].batch_size
    if following is not None and following != phase.batch_size:
      self.steps.prefetch(following)
      if self.between is not None:
        self.between.prefetch(following)

  def _phase(self, state, phase: Phase, step: int, stop: int, stop_at_step: int | None):
    """One phase's steps from `step` to `stop`.

    Returns:
      (state, step, outcome): "done" at the phase's end, "stopped" (preempted or
      `stop_at_step`), or "decided" (an adaptive strategy ended the phase here).
    """
    spec, mesh, plan = self.run.spec, self.run.mesh, self.plan
    batch_size = phase.batch_size
    batches = data.train_batches(
      self.run.train_source,
      self.run.dataset,
      seed=spec.seed,
      batch_size=batch_size,
      start_position=data_position(plan, step),
      num_steps=stop - step,
      local=shd.process_batch_slice(mesh, batch_size),
    )
    # read once: this loop's own work is paid at every step, on the cores the step uses
    log_every, save_every = spec.log_every_steps, spec.checkpoints.every_steps
    total, period, hosts = plan.total_steps, self.eval_period, jax.process_count()
    position = data_position(plan, step)
    for batch in batches:
      state, metrics = self.step_at(step)(state, shd.step_batch(mesh, batch, batch_size))
      if self.one_in_flight:
        jax.block_until_ready(metrics)
      step += 1
      end_of_phase, before = step == phase.end_step, position
      # `data_position(plan, step)`: one batch on inside the phase; at its end, where the next starts
      position = data_position(plan, step) if end_of_phase else position + batch_size
      faults.point("step", step)
      self.call_hooks("step", state, step, phase)
      self.bar.update(1)
      self._pending.append((step, phase, metrics))
      crossed_eval = position // period > before // period
      if step == total:  # logged with the final evaluation, before the final checkpoint
        continue
      if step % log_every == 0 or end_of_phase or crossed_eval:
        values = self.flush(state, self._evaluate(state, phase) if crossed_eval else None)
        decision = self.call_hooks("eval", state, step, phase, values) if crossed_eval else None
        if decision is not None:
          return self._apply(state, decision), step, "decided"
      if step % save_every == 0 or end_of_phase:
        self.save(state, step)
      if self.preempted or (hosts > 1 and _preemption_sync(step)) or step == stop_at_step:
        return state, step, "stopped"
    return state, step, "done"

  def _apply(self, state, decision: adaptive.Decision):
    """Switches to the decided phase: learning rate, plan, logs, and a checkpoint here."""
    moved = {
      k: getattr(decision, k) for k in ("b1", "b2", "eps") if getattr(decision, k) is not None
    }
    state = state.replace(
      opt_state=optim.set_hyperparams(
        state.opt_state, learning_rate=decision.learning_rate, **moved
      )
    )
    self.plan = self.run.plan = adaptive.plan_from_decisions(
      self.run.initial_plan, self.run.policy.decisions
    )
    self.logs.write(
      decision.step, {f"decision_{k}": v for k, v in decision.to_dict().items() if k != "step"}
    )
    self.bar.total = self.plan.total_steps
    measured = f" ({decision.measurement:.4g})" if decision.measurement is not None else ""
    self.bar.write(
      f"step {decision.step:,}: {decision.reason}{measured}; batch "
      f"{decision.batch_size:,}, lr {decision.learning_rate:.4g} from here"
    )
    faults.point("decision", decision.step)
    self.save(state, decision.step)
    return state

  def finish(self, state) -> dict[str, float]:
    """The final evaluation, logged, then the final checkpoint that carries it."""
    step = self.plan.total_steps
    last = self.plan.phases[-1]
    final = self._evaluate(state, last)
    if self._pending:
      values = self.flush(state, final)
    else:  # resumed at the last step: no training row to join
      values = {**final, "epoch": data_position(self.plan, step) / self.plan.dataset_size}
      self.logs.write(step, values)
    self.call_hooks("eval", state, step, last, values)  # the run ends here: no decision
    faults.point("final_eval", step)
    self.save(state, step, final_eval=final)
    self.run.checkpoints.wait()
    faults.point("summary", step)
    return final

  def close(self) -> None:
    self.steps.close()
    if self.between is not None:
      self.between.close()
    self.evaluate.close()


def waits_for_each_step(mesh) -> bool:
  """Whether the loop waits for each step before the next: on CPU, with several devices.

  XLA's CPU collectives: with several executions of a multi-device step queued on few
  cores, an all-reduce can wait for a participant that never gets a thread, and XLA
  aborts the process after 40 s (seen with 8 CPU devices on 2 loaded cores, every time
  in 3 tries; waiting for each step, never). Measured on 8 CPU devices of 2 idle cores,
  waiting costs 6-7% of the examples/s at batches 128 and 640, nothing at 3,200.
  """
  devices = mesh.devices
  return devices.size > 1 and devices.flat[0].platform == "cpu"


def compiles_in_background(setting: Any, platform: str | None = None) -> bool:
  """Whether the next phase's step compiles while this phase trains (`background_compile`).

  "auto" does it on a GPU or TPU, where the compiler's host threads leave the
  device alone. On a CPU, XLA compiles on the same thread pool that runs the
  step, so a background compile only splits the cores: measured on 2 cores, a
  3.6 s compile took 10 s and slowed the steps beside it 2.4x, which cost
  more than compiling in the foreground at the switch.
  """
  if setting in ("on", True):
    return True
  if setting in ("off", False):
    return False
  return (platform or jax.devices()[0].platform) != "cpu"


def _preemption_sync(step: int) -> bool:
  """On several hosts, all agree to stop at the same step when one is preempted."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils

  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # no preemption service: never preempted
    return False
