"""The trainer: a config's plan, phase by phase, with evaluation, logs and checkpoints.

`train_and_evaluate(config, workdir)` checks everything it can before any
long work (config, data, mesh, checkpoint), then runs each phase of the
plan with the train step compiled for the phase's batch size (the next
phase's compiled in the background). The data position is a function of the
step, so a run resumed from any checkpoint continues exactly where it
stopped, across batch-size changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm
from tensorflow.core.framework import summary_pb2

from bigbatch import checkpoint as ckpt
from bigbatch import config as bbconfig
from bigbatch import data, memory
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.planner import Phase, Plan
from bigbatch.report import format_plan


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the message names the step."""


@dataclasses.dataclass
class PhaseTiming:
  index: int
  batch_size: int
  steps: int = 0
  seconds: float = 0.0


# What `tf.summary.scalar` writes, without needing the tensorboard package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
  plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


class _Logs:
  """Metrics as JSON lines and TensorBoard events, written by process 0 only."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path = workdir / "metrics.jsonl"
    if self.path.exists():  # drop lines past the checkpoint being resumed
      kept = [
        line
        for line in self.path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= resume_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))
    self._file = self.path.open("a")
    self._writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: _scalar(v) for k, v in values.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    with self._writer.as_default(step=step):
      for key, value in row.items():
        if key != "step" and isinstance(value, int | float):
          tf.summary.write(key, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._writer.close()


def _scalar(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


def _position(plan: Plan, step: int) -> int:
  """Examples consumed before `step`: the one place steps become data positions."""
  if step >= plan.total_steps:
    last = plan.phases[-1]
    return last.first_example + last.steps * last.batch_size
  phase = plan.phase_at(step)
  return phase.first_example + (step - phase.first_step) * phase.batch_size


def _derived(plan: Plan, mesh, config) -> str:
  """The batch arithmetic a user checks first: global / per-host / per-device, steps/epoch."""
  processes, devices = jax.process_count(), shd.data_parallel_size(mesh)
  lines = [
    f"devices: {devices} ({jax.devices()[0].platform}) in {processes} process(es); "
    f"mesh {dict(mesh.shape)}; ghost batch {config.get('ghost_batch_size')}",
    "phase  global batch  per host  per device  steps/epoch  steps",
  ]
  for phase in plan.phases:
    lines.append(
      f"{phase.index:5d}  {phase.batch_size:12,d}  {phase.batch_size // processes:8,d}  "
      f"{phase.batch_size // devices:10,d}  {plan.dataset_size / phase.batch_size:11,.1f}  "
      f"{phase.steps:5,d}"
    )
  return "\n".join(lines)


def _require_fields(config: ml_collections.ConfigDict, fields: Sequence[str]) -> None:
  for field in fields:
    value = config.get(field)
    if value is None or (isinstance(value, int | float) and value <= 0):
      raise bbconfig.ConfigError(f"{field}: must be a positive number, got {value!r}")


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
    workdir: checkpoints, `metrics.jsonl`, TensorBoard events, `summary.json`.
    devices: the devices of the mesh (default: all).
    stop_at_step: stop there as if preempted (checkpoint, then return).
    progress: show a progress bar.

  Returns:
    The summary (also written to `workdir/summary.json` at the end): final
    test accuracy and loss, updates, wall time, time and compile time per
    phase, and `status` ("completed" or "preempted").

  Raises:
    ConfigError, DataError, ShardingError, CheckpointError: bad input, before
      anything long starts.
    NonFiniteLossError: a NaN or infinite loss, naming the step; the last
      checkpoint before it is kept.
  """
  started = time.perf_counter()
  workdir = pathlib.Path(workdir)
  _require_fields(config, ("eval_every_epochs", "eval_batch_size", "log_every_steps"))
  _require_fields(config, ("checkpoint_every_steps", "keep_checkpoints"))
  say = print if jax.process_index() == 0 else (lambda *a, **k: None)
  memory.resolve_max_batch_size(config, workdir=workdir, devices=devices, log=say)
  plan = bbconfig.plan_from_config(config)
  optimizer = bbconfig.optimizer_from_config(config, plan)
  spec = data.dataset_spec(config.dataset.get("name"), config.dataset.get("image_size"))
  model = bbconfig.model_from_config(config, spec.num_classes)
  block = config.get("mesh") or {}
  mesh = shd.make_mesh(int(block.get("data", -1)), int(block.get("fsdp", 1)), devices=devices)
  bbconfig.check_plan_on_mesh(config, plan, mesh)
  shd.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
  if int(config.get("eval_train_examples", 0)) < 0:
    raise bbconfig.ConfigError(
      f"eval_train_examples: must be >= 0 (0: off), got {config.eval_train_examples}"
    )
  train_source = data.load_split(config.dataset, "train")
  if len(train_source) != plan.dataset_size:
    raise bbconfig.ConfigError(
      f"dataset.num_train_examples: {plan.dataset_size:,} but the {spec.tfds_name} train split "
      f"has {len(train_source):,} examples"
    )
  eval_source = data.load_split(config.dataset, "eval")

  checkpoints = ckpt.Checkpoints(
    workdir / "checkpoints", keep=int(config.keep_checkpoints), async_save=True
  )
  inputs = jax.ShapeDtypeStruct((1, *spec.input_shape), np.float32)
  fsdp_min = int(block.get("fsdp_min_size", 2**14))
  shardings = st.train_state_shardings(model, optimizer, inputs, mesh, fsdp_min_size=fsdp_min)
  latest = checkpoints.latest_step()
  if latest is not None:
    checkpoints.check_compatible(latest, config)
    abstract = jax.eval_shape(
      lambda: st.init_train_state(model, optimizer, inputs, jax.random.key(0))
    )
    state = checkpoints.restore(latest, ckpt.abstract_state(shardings, abstract))
  else:
    state = st.create_train_state(
      model, optimizer, inputs, mesh, seed=int(config.seed), fsdp_min_size=fsdp_min
    )
  if config.get("compilation_cache_dir"):
    st.enable_compilation_cache(config.compilation_cache_dir)

  step = int(jax.device_get(state.step))
  say(format_plan(plan))
  say(_derived(plan, mesh, config))
  if latest is not None:
    say(f"resuming from the checkpoint at step {step:,} in {checkpoints.directory}")

  train_step = st.make_train_step(
    model,
    optimizer,
    dataset_size=plan.dataset_size,
    label_smoothing=float(config.get("label_smoothing", 0.0)),
    micro_batch_size=plan.max_batch_size if plan.strategy == "accumulate" else None,
    data_shards=shd.data_parallel_size(mesh),
  )
  steps = st.CompiledSteps(
    train_step, state, data.example_batch(spec), mesh, ghost_batch_size=config.ghost_batch_size
  )
  evaluator = st.CompiledSteps(
    st.make_eval_step(model),
    state,
    {**data.example_batch(spec), "mask": jax.ShapeDtypeStruct((), np.int32)},
    mesh,
    returns_state=False,
  )
  logs = _Logs(workdir, step)
  seed = int(config.seed)
  eval_period = float(config.eval_every_epochs) * plan.dataset_size

  eval_train_examples = int(config.get("eval_train_examples", 0))

  def measure(state, source, prefix: str, num_examples: int | None = None) -> dict[str, float]:
    batch_size = int(config.eval_batch_size)
    local = shd.process_batch_slice(mesh, batch_size)
    totals = {"correct": 0, "loss": 0.0, "count": 0}
    batches = data.eval_batches(
      source, spec, batch_size=batch_size, local=local, num_examples=num_examples
    )
    for batch in batches:
      sums = jax.device_get(evaluator(state, shd.global_batch(mesh, batch, batch_size)))
      totals = {key: totals[key] + sums[key] for key in totals}
    count = max(int(totals["count"]), 1)
    return {
      f"{prefix}_accuracy": float(totals["correct"]) / count,
      f"{prefix}_loss": float(totals["loss"]) / count,
    }

  def evaluate(state) -> dict[str, float]:
    results = measure(state, eval_source, "eval")
    if eval_train_examples > 0:
      results |= measure(state, train_source, "train_eval", eval_train_examples)
    return results

  def record(step: int) -> dict[str, Any]:
    return {
      "step": step,
      "position": _position(plan, step),
      "seed": seed,
      "config": json.loads(config.to_json_best_effort()),
      "plan": plan.to_dict(),
    }

  preempted = []
  previous_handler = None
  if jax.process_count() == 1 and _in_main_thread():
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))

  timings = [PhaseTiming(p.index, p.batch_size) for p in plan.phases]
  last_eval: dict[str, float] = {}
  status = "completed"
  bar = tqdm.tqdm(
    total=plan.total_steps,
    initial=step,
    disable=not progress or jax.process_index() != 0,
    dynamic_ncols=True,
    file=sys.stderr,
  )
  pending: list[tuple[int, Phase, dict[str, Any]]] = []
  last_log_time, last_log_step = time.perf_counter(), step

  def flush() -> None:
    """Fetches the pending steps' metrics, stops on a non-finite loss, logs."""
    nonlocal last_log_time, last_log_step
    if not pending:
      return
    fetched = jax.device_get([m for _, _, m in pending])
    for (at, phase, _), metrics in zip(pending, fetched):
      loss, norm = float(metrics["loss"]), float(metrics["param_norm"])
      if not (math.isfinite(loss) and math.isfinite(norm)):
        checkpoints.wait()
        good = checkpoints.latest_step()
        what = f"loss is {loss}" if not math.isfinite(loss) else "parameters became non-finite"
        raise NonFiniteLossError(
          f"{what} at step {at} (phase {phase.index}, batch {phase.batch_size}, "
          f"lr {float(metrics.get('learning_rate', float('nan'))):.4g}); the last good "
          f"checkpoint (step {good}) is kept in {checkpoints.directory}"
        )
    at, phase, _ = pending[-1]
    now = time.perf_counter()
    examples = _position(plan, at) - _position(plan, last_log_step)
    rate = examples / max(now - last_log_time, 1e-9)
    last_log_time, last_log_step = now, at
    values = {
      **fetched[-1],
      "epoch": _position(plan, at) / plan.dataset_size,
      "phase": phase.index,
      "examples_per_second": rate,
    }
    logs.write(at, values)
    bar.set_postfix(
      phase=phase.index,
      epoch=f"{values['epoch']:.2f}",
      loss=f"{float(values['loss']):.4f}",
      lr=f"{float(values.get('learning_rate', 0.0)):.4g}",
      batch=phase.batch_size,
      ex_s=f"{rate:,.0f}",
      refresh=False,
    )
    pending.clear()

  try:
    for phase in plan.phases:
      if step >= phase.end_step:
        continue
      if config.get("background_compile", True) and phase.index + 1 < len(plan.phases):
        steps.prefetch(plan.phases[phase.index + 1].batch_size)
      phase_start, first = time.perf_counter(), step
      batch_size = phase.batch_size
      stop = phase.end_step if stop_at_step is None else min(phase.end_step, stop_at_step)
      batches = data.train_batches(
        train_source,
        spec,
        seed=seed,
        batch_size=batch_size,
        start_position=_position(plan, step),
        num_steps=stop - step,
        local=shd.process_batch_slice(mesh, batch_size),
      )
      for batch in batches:
        state, metrics = steps(state, shd.global_batch(mesh, batch, batch_size))
        step += 1
        bar.update(1)
        pending.append((step, phase, metrics))
        end_of_phase = step == phase.end_step
        crossed_eval = (
          _position(plan, step) // eval_period > _position(plan, step - 1) // eval_period
        )
        if step % config.log_every_steps == 0 or end_of_phase or crossed_eval:
          flush()
        if crossed_eval and step < plan.total_steps:
          last_eval = evaluate(state)
          logs.write(step, {**last_eval, "epoch": _position(plan, step) / plan.dataset_size})
        if step % config.checkpoint_every_steps == 0 or end_of_phase:
          flush()
          checkpoints.save(step, state, record(step))
        if preempted or (_preemption_sync(step)) or step == stop_at_step:
          flush()
          checkpoints.save(step, state, record(step))
          status = "preempted"
          break
      timings[phase.index].steps += step - first
      timings[phase.index].seconds += time.perf_counter() - phase_start
      if status == "preempted":
        break
    flush()
    if status == "completed":
      last_eval = evaluate(state)
      logs.write(step, {**last_eval, "epoch": _position(plan, step) / plan.dataset_size})
      checkpoints.save(step, state, record(step))
  finally:
    bar.close()
    steps.close()
    evaluator.close()
    checkpoints.close()
    logs.close()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)

  compile_seconds: dict[int, float] = {}
  for entry in steps.records:
    compile_seconds[entry.batch_size] = compile_seconds.get(entry.batch_size, 0.0) + entry.seconds
  summary = {
    "status": status,
    "step": step,
    "updates": plan.total_steps,
    "baseline_updates": plan.baseline_total_steps,
    "final_test_accuracy": last_eval.get("eval_accuracy"),
    "final_test_loss": last_eval.get("eval_loss"),
    "final_train_eval_loss": last_eval.get("train_eval_loss"),
    "wall_seconds": time.perf_counter() - started,
    "phases": [
      {
        "phase": t.index,
        "batch_size": t.batch_size,
        "steps": t.steps,
        "seconds": t.seconds,
        "compile_seconds": compile_seconds.get(t.batch_size, 0.0),
      }
      for t in timings
    ],
  }
  if status == "completed" and jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  say(format_summary(summary))
  return summary


def format_summary(summary: Mapping[str, Any]) -> str:
  """The end-of-run summary as a few lines of text."""
  lines = [
    f"{summary['status']} at step {summary['step']:,} of {summary['updates']:,} "
    f"(baseline {summary['baseline_updates']:,}); wall time {summary['wall_seconds']:.1f} s",
  ]
  if summary.get("final_test_accuracy") is not None:
    lines.append(
      f"final test accuracy {summary['final_test_accuracy']:.4f}, "
      f"test loss {summary['final_test_loss']:.4f}"
    )
  lines.append("phase  batch    seconds  compile s")
  for phase in summary["phases"]:
    lines.append(
      f"{phase['phase']:5d}  {phase['batch_size']:6,d}  {phase['seconds']:8.1f}  "
      f"{phase['compile_seconds']:9.2f}"
    )
  return "\n".join(lines)


def _in_main_thread() -> bool:
  import threading

  return threading.current_thread() is threading.main_thread()


def _preemption_sync(step: int) -> bool:
  """On several hosts, all agree to stop at the same step when one is preempted."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils

  with contextlib.suppress(RuntimeError):  # no preemption service: never preempted
    return bool(multihost_utils.reached_preemption_sync_point(step))
  return False
