"""The trainer: a config's plan, phase by phase, with evaluation, logs and checkpoints.

`train_and_evaluate(config, workdir)` checks everything it can before any
long work (config, workdir, data, mesh, checkpoint), then runs each phase of
the plan with the train step compiled for the phase's batch size (the next
phase's compiled in the background). The data position is a function of the
step (`_position`, the one place steps become examples), so a run resumed
from any checkpoint continues exactly where it stopped, across batch-size
changes.

What a run has written is kept consistent wherever its process dies: every
metrics row up to a checkpoint's step is on disk before that checkpoint is
saved, a resumed run drops the rows after its checkpoint and writes them
again, and the final checkpoint carries the final evaluation, so a finished
run started again changes nothing. Each checkpoint also carries the run's
time so far, so the summary describes the whole run across restarts. With a
restarting schedule the model at the end of each cycle is kept apart
(`bigbatch.snapshots`), before the checkpoint of its step.
"""

from __future__ import annotations

import json
import math
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import tqdm

from bigbatch import adaptive, data, faults, noise, optim
from bigbatch import sharding as shd
from bigbatch import snapshots as snaps
from bigbatch import step as st
from bigbatch import workdir as wd
from bigbatch.clock import Clock
from bigbatch.evaluate import Evaluator
from bigbatch.phases import Phase, Plan
from bigbatch.report import format_batch_arithmetic, format_plan, format_summary
from bigbatch.run import Run, set_up
from bigbatch.runlog import MetricsLog

__all__ = ["NonFiniteLossError", "format_summary", "train_and_evaluate"]


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the message names the step."""


# B_simple's estimate and its confidence bounds, as the step reports them
NOISE_KEYS = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")


def _position(plan: Plan, step: int) -> int:
  """Examples consumed before `step`: the one place steps become data positions."""
  if step >= plan.total_steps:
    last = plan.phases[-1]
    return last.first_example + last.steps * last.batch_size
  phase = plan.phase_at(step)
  return phase.first_example + (step - phase.first_step) * phase.batch_size


class _Loop:
  """The phase loop: steps, logs, evaluations and checkpoints of one process's share of a run."""

  def __init__(
    self,
    run: Run,
    clock: Clock,
    logs: MetricsLog,
    bar: tqdm.tqdm,
    snapshots: snaps.Keeper | None = None,
  ):
    self.run, self.plan, self.clock, self.logs, self.bar = run, run.plan, clock, logs, bar
    self.snapshots = snapshots
    config = run.config
    train_step, self._metric_keys = st.packed_metrics(run.train_step)
    self.steps = st.CompiledSteps(
      train_step,
      run.state,
      data.example_batch(run.spec),
      run.mesh,
      ghost_batch_size=config.ghost_batch_size,
    )
    self.evaluate = Evaluator(run, run.state)
    self.eval_period = float(config.eval_every_epochs) * self.plan.dataset_size
    self.preempted: list[bool] = []
    self._pending: list[tuple[int, Phase, dict[str, Any]]] = []
    self._last_log = (time.perf_counter(), int(jax.device_get(run.state.step)))
    noise = config.get("noise") or {}
    self._noise_horizon = float(noise.get("horizon_epochs", 0.1)) * self.plan.dataset_size
    self._warn_ratio = float(noise.get("warn_ratio", 8.0))
    self._warned: set[int] = set()

  def record(self, step: int, **extra: Any) -> dict[str, Any]:
    """What a checkpoint carries besides the state."""
    return {
      "step": step,
      "state_format": st.STATE_FORMAT,
      "position": _position(self.plan, step),
      "seed": int(self.run.config.seed),
      "config": json.loads(self.run.config.to_json_best_effort()),
      "plan": self.plan.to_dict(),
      "elapsed": self.clock.totals(step, self.steps.records),
      **({"policy": self.run.policy.state_dict()} if self.run.policy is not None else {}),
      **extra,
    }

  def save(self, state, step: int, **extra: Any) -> None:
    jax.block_until_ready(state)  # the steps dispatched so far count as training
    start = time.perf_counter()
    self.flush()
    self.logs.sync()  # the rows up to `step` are on disk before the checkpoint is
    self.run.checkpoints.save(step, state, self.record(step, **extra))
    # the step's phase: the one its last update belonged to
    phase = self.plan.phase_at(max(min(step, self.plan.total_steps) - 1, 0)).index
    self.clock.spend(phase, "checkpoint_seconds", time.perf_counter() - start)

  def _evaluate(self, state, phase: Phase) -> dict[str, float]:
    """The evaluation, its time counted apart from the phase's training."""
    jax.block_until_ready(state)  # the steps dispatched so far count as training
    start = time.perf_counter()
    values = self.evaluate(state)
    self.clock.spend(phase.index, "eval_seconds", time.perf_counter() - start)
    return values

  def flush(self, evaluation: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fetches the pending steps' metrics, stops on a non-finite loss, logs the last (and
    returns its row's values).

    An evaluation at the same step joins its row: one row per step, so each
    (step, metric) is logged once.
    """
    if not self._pending:
      return {**(evaluation or {})}
    keys = self._metric_keys
    fetched = [dict(zip(keys, row)) for row in jax.device_get([m for _, _, m in self._pending])]
    for (at, phase, _), metrics in zip(self._pending, fetched):
      loss, norm = float(metrics["loss"]), float(metrics["param_norm"])
      if not (math.isfinite(loss) and math.isfinite(norm)):
        self._stop_non_finite(at, phase, metrics, loss)
      if self.run.policy is not None:  # every step's loss, for the smoothed training loss
        self.run.policy.observe_loss(loss, phase.batch_size)
    at, phase, _ = self._pending[-1]
    now, (then, then_step) = time.perf_counter(), self._last_log
    examples = _position(self.plan, at) - _position(self.plan, then_step)
    rate = examples / max(now - then, 1e-9)
    self._last_log = (now, at)
    values = {
      **fetched[-1],
      "epoch": _position(self.plan, at) / self.plan.dataset_size,
      "phase": phase.index,
      "examples_per_second": rate,
      **(evaluation or {}),
    }
    self.logs.write(at, values)
    self._watch_noise(at, phase, values)
    self.bar.set_postfix(
      phase=phase.index,
      epoch=f"{values['epoch']:.2f}",
      loss=f"{float(values['loss']):.4f}",
      lr=f"{float(values.get('learning_rate', 0.0)):.4g}",
      batch=phase.batch_size,
      ex_s=f"{rate:,.0f}",
      refresh=False,
    )
    self._pending.clear()
    return values

  def _watch_noise(self, at: int, phase: Phase, values: Mapping[str, Any]) -> None:
    """Keeps each phase's latest B_simple and its bounds for the summary; says once if the
    batch is far above the upper bound."""
    if "grad_noise_scale_low" not in values:  # not measured
      return
    known = {key: noise.known(values.get(key)) for key in NOISE_KEYS}
    for key, value in known.items():
      self.clock.note(phase.index, key, value)
    high = known["grad_noise_scale_high"]
    settled = _position(self.plan, at) >= self._noise_horizon  # the EMA has seen a horizon
    far = high is not None and high > 0 and phase.batch_size > self._warn_ratio * high
    if settled and far and phase.index not in self._warned:
      self._warned.add(phase.index)
      note = noise.batch_above_noise_scale_note(
        phase.index, phase.batch_size, high, known["grad_noise_scale"]
      )
      self.bar.write(note)

  def _stop_non_finite(self, at: int, phase: Phase, metrics, loss: float) -> None:
    checkpoints = self.run.checkpoints
    checkpoints.wait()
    good = checkpoints.latest_step()
    what = f"loss is {loss}" if not math.isfinite(loss) else "parameters became non-finite"
    kept = (
      f"the last good checkpoint (step {good}) is kept in {checkpoints.directory}"
      if good is not None
      else f"no checkpoint was written yet in {checkpoints.directory}"
    )
    raise NonFiniteLossError(
      f"{what} at step {at} (phase {phase.index}, batch {phase.batch_size}, "
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
      start = time.perf_counter()
      self.steps.compiled(phase.batch_size)
      self.clock.spend(phase.index, "compile_wait_seconds", time.perf_counter() - start)
      self._prefetch_next(phase)
      state, step, outcome = self._phase(state, phase, step, stop, stop_at_step)
      self.clock.end_phase(step)
      if outcome == "stopped":
        self.save(state, step)
        return state, "preempted"
    return state, "completed"  # the last steps' metrics are logged by `finish`

  def _prefetch_next(self, phase: Phase) -> None:
    """Compiles the batch size that comes next in the background: the plan's next
    phase's, or the one the next decision of an adaptive strategy would switch to."""
    if not compiles_in_background(self.run.config.get("background_compile", "auto")):
      return
    policy, following = self.run.policy, None
    if policy is not None:
      change = adaptive.next_phase(policy.settings, phase, self.plan.dataset_size)
      following = change[0] if change else None
    elif phase.index + 1 < len(self.plan.phases):
      following = self.plan.phases[phase.index + 1].batch_size
    if following is not None and following != phase.batch_size:
      self.steps.prefetch(following)

  def _phase(self, state, phase: Phase, step: int, stop: int, stop_at_step: int | None):
    """One phase's steps from `step` to `stop`.

    Returns:
      (state, step, outcome): "done" at the phase's end, "stopped" (preempted or
      `stop_at_step`), or "decided" (an adaptive strategy ended the phase here).
    """
    config, mesh, plan = self.run.config, self.run.mesh, self.plan
    batch_size = phase.batch_size
    batches = data.train_batches(
      self.run.train_source,
      self.run.spec,
      seed=int(config.seed),
      batch_size=batch_size,
      start_position=_position(plan, step),
      num_steps=stop - step,
      local=shd.process_batch_slice(mesh, batch_size),
    )
    # read once: this loop's own work is paid at every step, on the cores the step uses
    log_every, save_every = int(config.log_every_steps), int(config.checkpoint_every_steps)
    total, period, hosts = plan.total_steps, self.eval_period, jax.process_count()
    position = _position(plan, step)
    for batch in batches:
      state, metrics = self.steps(state, shd.step_batch(mesh, batch, batch_size))
      step += 1
      end_of_phase, before = step == phase.end_step, position
      # `_position(plan, step)`: one batch on inside the phase; at its end, where the next starts
      position = _position(plan, step) if end_of_phase else position + batch_size
      faults.point("step", step)
      self._snapshot(state, step)
      self.bar.update(1)
      self._pending.append((step, phase, metrics))
      crossed_eval = position // period > before // period
      if step == total:  # logged with the final evaluation, before the final checkpoint
        continue
      if step % log_every == 0 or end_of_phase or crossed_eval:
        values = self.flush(self._evaluate(state, phase) if crossed_eval else None)
        if crossed_eval and self.run.policy is not None:
          decision = self.run.policy.decide(step, position, phase, values)
          if decision is not None:
            return self._apply(state, decision), step, "decided"
      if step % save_every == 0 or end_of_phase:
        self.save(state, step)
      if self.preempted or (hosts > 1 and _preemption_sync(step)) or step == stop_at_step:
        return state, step, "stopped"
    return state, step, "done"

  def _snapshot(self, state, step: int) -> None:
    """Keeps the snapshot of a cycle that ends at `step`, before any checkpoint of the step."""
    if self.snapshots is None:
      return
    position = _position(self.plan, step)
    cycle = self.snapshots.due(_position(self.plan, step - 1), position)
    if cycle is not None:
      self.snapshots.save(state, step, position, cycle)

  def _apply(self, state, decision: adaptive.Decision):
    """Switches to the decided phase: learning rate, plan, logs, and a checkpoint here."""
    state = state.replace(
      opt_state=optim.set_hyperparams(state.opt_state, learning_rate=decision.learning_rate)
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
    final = self._evaluate(state, self.plan.phases[-1])
    if self._pending:
      self.flush(final)
    else:  # resumed at the last step: no training row to join
      self.logs.write(step, {**final, "epoch": _position(self.plan, step) / self.plan.dataset_size})
    faults.point("final_eval", step)
    self.save(state, step, final_eval=final)
    self.run.checkpoints.wait()
    faults.point("summary", step)
    return final

  def close(self) -> None:
    self.steps.close()
    self.evaluate.close()
    if self.snapshots is not None:
      self.snapshots.close()


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


def _summary(run: Run, status: str, step: int, elapsed: Mapping[str, Any], final) -> dict:
  plan = run.plan
  final = final or {}
  return {
    "status": status,
    "step": step,
    "updates": plan.total_steps,
    "baseline_updates": plan.baseline_total_steps,
    "final_test_accuracy": final.get("eval_accuracy"),
    "final_test_loss": final.get("eval_loss"),
    "final_train_eval_loss": final.get("train_eval_loss"),
    "sessions": elapsed["sessions"],
    "wall_seconds": elapsed["wall_seconds"],
    "phases": elapsed["phases"],
    "noise_confidence": float((run.config.get("noise") or {}).get("confidence", 0.95)),
  }


def _write_summary(run: Run, summary: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    wd.write_atomic(run.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  *,
  devices: Sequence[jax.Device] | None = None,
  stop_at_step: int | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains `config`'s plan in `workdir`, resuming from its latest checkpoint.

  Args:
    config: a training config (see `configs/`).
    workdir: checkpoints, `metrics.jsonl`, TensorBoard events, `summary.json`,
      and with a restarting schedule the snapshots of its cycles (`bigbatch.snapshots`).
    devices: the devices of the mesh (default: all).
    stop_at_step: stop there as if preempted (checkpoint, then return).
    progress: show a progress bar.

  Returns:
    The summary of the whole run, across restarts (also written to
    `workdir/summary.json` at the end): final test accuracy and loss, updates,
    wall time, time and compile time per phase, the number of starts
    (`sessions`), and `status` ("completed", "preempted", or "complete" for a
    run that had already finished and was left as it was).

  Raises:
    ConfigError, DataError, ShardingError, CheckpointError, WorkdirError: bad
      input, before anything long starts.
    CheckpointSaveError: a checkpoint save failed (the earlier ones are kept).
    NonFiniteLossError: a NaN or infinite loss, naming the step; the last
      checkpoint before it is kept.
  """
  say = print if jax.process_index() == 0 else (lambda *a, **k: None)
  workdir = wd.prepare(workdir)
  lock = wd.Lock(workdir) if jax.process_index() == 0 else None
  try:
    faults.point("startup")
    snapshot_epochs = snaps.snapshot_epochs(config)
    run = set_up(config, workdir, devices, say)
    keeper = None
    if snapshot_epochs:
      keeper = snaps.Keeper(
        workdir / "snapshots", snapshot_epochs, run.plan.dataset_size, run.config
      )
    try:
      return _train(run, keeper, stop_at_step=stop_at_step, progress=progress)
    finally:
      run.checkpoints.close()
  finally:
    if lock is not None:
      lock.release()


def _train(
  run: Run, keeper: snaps.Keeper | None, *, stop_at_step: int | None, progress: bool
) -> dict[str, Any]:
  plan, say = run.plan, run.say
  step = int(jax.device_get(run.state.step))
  clock = Clock(plan, (run.record or {}).get("elapsed"))
  if run.complete:
    say(
      f"the run in {run.workdir} is complete (step {step:,} of {plan.total_steps:,}); nothing to do"
    )
    elapsed = {**run.record["elapsed"]}
    summary = _summary(run, "completed", step, elapsed, run.record["final_eval"])
    if not (run.workdir / "summary.json").exists():  # the kill came before it was written
      _write_summary(run, summary)
    return {**summary, "status": "complete"}
  say(format_plan(plan))
  say(
    format_batch_arithmetic(
      plan,
      devices=shd.data_parallel_size(run.mesh),
      processes=jax.process_count(),
      platform=jax.devices()[0].platform,
      mesh_shape=run.mesh.shape,
      ghost=run.config.get("ghost_batch_size"),
    )
  )
  if run.record is not None:
    say(f"resuming from the checkpoint at step {step:,} in {run.checkpoints.directory}")
  if run.config.get("compilation_cache_dir"):
    st.enable_compilation_cache(run.config.compilation_cache_dir)
  logs = MetricsLog(run.workdir, step, enabled=jax.process_index() == 0, say=say)
  bar = tqdm.tqdm(
    total=plan.total_steps,
    initial=step,
    disable=not progress or jax.process_index() != 0,
    dynamic_ncols=True,
    file=sys.stderr,
  )
  loop = _Loop(run, clock, logs, bar, keeper)
  previous_handler = None
  if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: loop.preempted.append(True))
  try:
    state, status = loop.train(run.state, stop_at_step)
    final = loop.finish(state) if status == "completed" else None
  finally:
    bar.close()
    loop.close()
    logs.close()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
  step = int(jax.device_get(state.step))
  summary = _summary(run, status, step, clock.totals(step, loop.steps.records), final)
  if status == "completed":
    _write_summary(run, summary)
  say(format_summary(summary))
  return summary


def _preemption_sync(step: int) -> bool:
  """On several hosts, all agree to stop at the same step when one is preempted."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils

  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # no preemption service: never preempted
    return False
