"""The trainer: an experiment's plan, phase by phase, with evaluation, logs and checkpoints.

`Trainer(experiment, workdir).run()` checks everything it can before any long
work (workdir, the plan on the mesh, data, checkpoint), then trains the plan
in the phase loop (`bigbatch.train.loop`), resuming from the workdir's latest
checkpoint. `train_and_evaluate(config, workdir)` does the same from a config
or a spec; it is what `bigbatch train` runs.

What a run has written is kept consistent wherever its process dies: every
metrics row up to a checkpoint's step is on disk before that checkpoint is
saved, a resumed run drops the rows after its checkpoint and writes them
again, and the final checkpoint carries the final evaluation, so a finished
run started again changes nothing. Each checkpoint also carries the run's
resolved spec and its time so far, so the summary describes the whole run
across restarts. With a restarting schedule the model at the end of each
cycle is kept apart (`bigbatch.workdir.snapshots`), before the checkpoint of its step.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import tqdm

from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch import workdir as wd
from bigbatch.plan.report import format_batch_arithmetic, format_plan
from bigbatch.plan.summary import format_summary
from bigbatch.spec import RunSpec
from bigbatch.train import build
from bigbatch.train.clock import Clock
from bigbatch.train.experiment import Experiment, elastic_slices
from bigbatch.train.hooks import Hook, NoiseWarning, PolicyHook, SnapshotHook, StepInfo
from bigbatch.train.loop import Loop, NonFiniteLossError, data_position
from bigbatch.train.setup import Run, check_workdir, set_up
from bigbatch.workdir import faults
from bigbatch.workdir import snapshots as snaps
from bigbatch.workdir.runlog import MetricsLog

__all__ = ["NonFiniteLossError", "Trainer", "format_summary", "train_and_evaluate"]

# what the tests and older callers read the data position as
_position = data_position


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
    "noise_confidence": run.spec.noise.confidence,
    "noise_every": run.spec.noise.every,
    "noise_unmeasured": run.experiment.train_step.unmeasured,
    **_language_model_summary(run, final),
  }


def _language_model_summary(run: Run, final: Mapping[str, Any]) -> dict[str, Any]:
  """A language model's: the held-out perplexity and bits per byte, and what turns the
  phases' examples/s into tokens/s and MFU."""
  throughput = run.experiment.throughput
  if not throughput.tokens_per_example:
    return {}
  return {
    "final_test_perplexity": final.get("eval_perplexity"),
    "final_test_bits_per_byte": final.get("eval_bits_per_byte"),
    "throughput": throughput.to_dict(),
  }


def _write_summary(run: Run, summary: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    wd.write_atomic(run.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")


class Trainer:
  """Trains an experiment in a workdir: `Trainer(experiment, "runs/mine").run()`.

  Args:
    experiment: an `Experiment`, or a `RunSpec` to build one from once the
      workdir is locked (a probed `plan.max_batch_size` is cached there).
    workdir: checkpoints, `metrics.jsonl`, TensorBoard events, `summary.json`,
      and with a restarting schedule the snapshots of its cycles.
    devices: the devices of the mesh, when `experiment` is a spec (default: all).
    progress: show a progress bar.
  """

  def __init__(
    self,
    experiment: Experiment | RunSpec,
    workdir: str | pathlib.Path,
    *,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
  ):
    if not isinstance(experiment, Experiment | RunSpec):
      raise TypeError(f"experiment: an Experiment or a RunSpec, got {type(experiment).__name__}")
    self.experiment, self.workdir = experiment, workdir
    self.devices, self.progress = devices, progress
    self.hooks: list[Hook] = []

  def add_hook(self, fn: Callable[[StepInfo], Any], every: int | str = 1) -> None:
    """Calls `fn(info)` after every `every`-th step, or at each `"log"` or `"eval"`
    (`bigbatch.train.hooks`)."""
    self.hooks.append(Hook(fn, every))

  def run(self, *, stop_at_step: int | None = None) -> dict[str, Any]:
    """Trains the plan, resuming from the workdir's latest checkpoint.

    `stop_at_step` stops there as if preempted (checkpoint, then return).

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
    workdir = wd.prepare(self.workdir)
    lock = wd.Lock(workdir) if jax.process_index() == 0 else None
    try:
      faults.point("startup")
      experiment = self.experiment
      # before the data is built or the memory probed: both can take long
      check_workdir(experiment if isinstance(experiment, RunSpec) else experiment.spec, workdir)
      if isinstance(experiment, RunSpec):
        experiment = Experiment.from_spec(
          experiment, devices=self.devices, workdir=workdir, say=say
        )
      snapshot_epochs = snaps.snapshot_epochs(experiment.spec, build.schedule_of(experiment.spec))
      run = set_up(experiment, workdir, say)
      try:
        return _train(run, self._hooks(run, snapshot_epochs), stop_at_step, self.progress)
      finally:
        run.checkpoints.close()
    finally:
      if lock is not None:
        lock.release()

  def _hooks(self, run: Run, snapshot_epochs: Sequence[float]) -> list[Hook]:
    """The trainer's own hooks, then the user's, in the order added."""
    noise = run.spec.noise
    hooks = [Hook(NoiseWarning(noise.horizon_epochs * run.plan.dataset_size, noise.warn_ratio),
                  NoiseWarning.every)]  # fmt: skip
    if snapshot_epochs:
      keeper = snaps.Keeper(
        run.workdir / "snapshots", snapshot_epochs, run.plan.dataset_size, run.spec.to_dict()
      )
      hooks.insert(0, Hook(SnapshotHook(keeper), SnapshotHook.every))
    if run.policy is not None:
      hooks.append(Hook(PolicyHook(run.policy), PolicyHook.every))
    return hooks + self.hooks


def train_and_evaluate(
  config: Any,
  workdir: str | pathlib.Path,
  *,
  devices: Sequence[jax.Device] | None = None,
  stop_at_step: int | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains `config`'s plan in `workdir`, resuming from its latest checkpoint.

  `config` is a training config (a recipe's ConfigDict, read at once into a
  `RunSpec`) or a `RunSpec`; the rest is `Trainer.run`'s.
  """
  spec = config if isinstance(config, RunSpec) else RunSpec.read(config)
  trainer = Trainer(spec, workdir, devices=devices, progress=progress)
  return trainer.run(stop_at_step=stop_at_step)


def _train(
  run: Run, hooks: Sequence[Hook], stop_at_step: int | None, progress: bool
) -> dict[str, Any]:
  plan, say = run.plan, run.say
  step = int(jax.device_get(run.state.step))
  clock = Clock(plan, (run.record or {}).get("elapsed"), devices=shd.data_parallel_size(run.mesh))
  if run.complete:
    say(
      f"the run in {run.workdir} is complete (step {step:,} of {plan.total_steps:,}); nothing to do"
    )
    elapsed = {**run.record["elapsed"]}
    summary = _summary(run, "completed", step, elapsed, run.record["final_eval"])
    if not (run.workdir / "summary.json").exists():  # the kill came before it was written
      _write_summary(run, summary)
    return {**summary, "status": "complete"}
  _announce(run, step)
  wait = _wait_for_devices(run, step)
  if wait is not None and wait["step"] == step:  # resumed at that phase end, still too few
    summary = {**_summary(run, "needs_devices", step, clock.totals(step, []), None), **wait}
    say(format_summary(summary))
    return summary
  if wait is not None:
    stop_at_step = wait["step"] if stop_at_step is None else min(stop_at_step, wait["step"])
  if run.spec.compilation_cache_dir:
    st.enable_compilation_cache(run.spec.compilation_cache_dir)
  logs = MetricsLog(run.workdir, step, enabled=jax.process_index() == 0, say=say)
  bar = tqdm.tqdm(
    total=plan.total_steps,
    initial=step,
    disable=not progress or jax.process_index() != 0,
    dynamic_ncols=True,
    file=sys.stderr,
  )
  loop = Loop(run, clock, logs, bar, hooks)
  previous_handler = None
  if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: loop.preempted.append(True))
  try:
    state, status = loop.train(run.state, stop_at_step)
    final = loop.finish(state) if status == "completed" else None
  finally:
    bar.close()
    loop.close()
    for hook in hooks:  # a snapshot keeper waits for its last write
      if hasattr(hook.fn, "close"):
        hook.fn.close()
    logs.close()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
  step = int(jax.device_get(state.step))
  if status == "preempted" and wait is not None and step == wait["step"] and not loop.preempted:
    status = "needs_devices"
  summary = _summary(run, status, step, clock.totals(step, loop.compile_records), final)
  if status == "needs_devices":
    summary.update(wait)
  if status == "completed":
    _write_summary(run, summary)
  say(format_summary(summary))
  return summary


def _announce(run: Run, step: int) -> None:
  """The plan, how its batches split over the devices, and where the run resumes."""
  run.say(format_plan(run.plan))
  run.say(
    format_batch_arithmetic(
      run.plan,
      devices=shd.data_parallel_size(run.mesh),
      processes=jax.process_count(),
      platform=jax.devices()[0].platform,
      mesh_shape=run.mesh.shape,
      ghost=run.experiment.train_step.batch_norm.note,
    )
  )
  if run.record is not None:
    run.say(f"resuming from the checkpoint at step {step:,} in {run.checkpoints.directory}")


def _wait_for_devices(run: Run, step: int) -> dict[str, Any] | None:
  """Where `elastic.until_phase_end` stops the run: the end of the first phase, from
  `step` on, whose next phase wants more devices than the run has, as
  {"step", "next_phase", "next_devices", "next_batch_size", "devices"}; None where no
  phase does (or the setting is off)."""
  if not run.spec.elastic.until_phase_end:
    return None
  parts, _ = elastic_slices(run.spec, run.plan, run.mesh.devices.size)
  have = run.mesh.devices.size
  for current, following in itertools.pairwise(parts):
    end = run.plan.phases[current.phase].end_step
    if end >= step and following.devices > have:
      return {
        "step": end,
        "next_phase": following.phase,
        "next_devices": following.devices,
        "next_batch_size": following.batch_size,
        "devices": have,
      }
  return None
