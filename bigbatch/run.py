"""A training run checked and set up, before any long work.

`set_up` reads the config into a plan, an optimizer, a model and a mesh,
opens the data, and restores the workdir's latest checkpoint (or initialises
the state), refusing anything it cannot use with an error that names the
field or the path. The checkpoint is verified against the checksums saved
with it; a corrupt one is reported as corruption, with the older checkpoint
that is intact and how to resume from it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bigbatch import adaptive, data, fields, memory
from bigbatch import checkpoint as ckpt
from bigbatch import config as bbconfig
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.phases import Plan


@dataclasses.dataclass
class Run:
  """A run checked and set up: everything the loop needs, built before any long work."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  plan: Plan
  spec: data.DatasetSpec
  mesh: Any
  train_source: Any
  eval_source: Any
  checkpoints: ckpt.Checkpoints
  state: Any
  record: dict[str, Any] | None  # of the checkpoint resumed, if any
  train_step: Callable
  measures_noise: bool
  policy: adaptive.Policy | None  # the deciding state of an adaptive strategy
  initial_plan: Plan  # the plan before any decision (`plan` is rebuilt from it)
  model: Any
  say: Callable[[str], None]
  loss_fn: Callable | None = None  # the config's `loss` (None: cross-entropy and accuracy)

  @property
  def complete(self) -> bool:
    """Whether the workdir already holds the finished run (final evaluation included)."""
    return (
      self.record is not None
      and self.record.get("step") == self.plan.total_steps
      and self.record.get("final_eval") is not None
    )


def _require_fields(config: ml_collections.ConfigDict, fields: Sequence[str]) -> None:
  for field in fields:
    value = config.get(field)
    if value is None or (isinstance(value, int | float) and value <= 0):
      raise bbconfig.ConfigError(f"{field}: must be a positive number, got {value!r}")


def _checked_setup(config, workdir: pathlib.Path, devices, say) -> dict[str, Any]:
  """Config, plan, optimizer, model, mesh and data, all checked; nothing compiled."""
  fields.check_run_fields(config)
  _require_fields(config, ("eval_every_epochs", "eval_batch_size", "log_every_steps"))
  _require_fields(config, ("checkpoint_every_steps", "keep_checkpoints"))
  memory.resolve_max_batch_size(config, workdir=workdir, devices=devices, log=say)
  plan = bbconfig.plan_from_config(config)
  optimizer = bbconfig.optimizer_from_config(config, plan)
  spec = data.spec_for(config.dataset)
  model = bbconfig.model_from_config(config, spec.num_classes)
  loss_fn = bbconfig.loss_from_config(config, model, spec)
  mesh = shd.mesh_from_config(config, devices)
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
  return {
    "plan": plan,
    "optimizer": optimizer,
    "spec": spec,
    "model": model,
    "loss_fn": loss_fn,
    "mesh": mesh,
    "train_source": train_source,
    "eval_source": data.load_split(config.dataset, "eval"),
  }


def restore_latest(
  checkpoints: ckpt.Checkpoints, config, target: Any
) -> tuple[Any, dict[str, Any]]:
  """The latest checkpoint's state and record, checked against the config and its checksums.

  Raises:
    CheckpointError: if the config cannot continue from it.
    CorruptCheckpointError: if it cannot be read back as written; the message
      says which older checkpoint is intact and how to resume from it.
  """
  latest = checkpoints.latest_step()
  try:
    record = checkpoints.check_compatible(latest, config)
    return st.restore_train_state(checkpoints, latest, target), record
  except ckpt.CorruptCheckpointError as error:
    broken = checkpoints.path(latest)
    for older in reversed([s for s in checkpoints.all_steps() if s < latest]):
      try:
        st.restore_train_state(checkpoints, older, target)
      except ckpt.CorruptCheckpointError:
        continue
      hint = (
        f"; the checkpoint at step {older} is intact: move {broken} out of "
        f"{checkpoints.directory} (e.g. `mv {broken} {broken.parent.parent}/broken-{latest}`) "
        f"and start again to resume from it"
      )
      break
    else:
      hint = "; no older checkpoint is intact: use another --workdir to start afresh"
    raise ckpt.CorruptCheckpointError(f"{error}{hint}") from None


def set_up(config, workdir: pathlib.Path, devices, say) -> Run:
  parts = _checked_setup(config, workdir, devices, say)
  plan, model, optimizer, mesh = parts["plan"], parts["model"], parts["optimizer"], parts["mesh"]
  checkpoints = ckpt.Checkpoints(
    workdir / "checkpoints", keep=int(config.keep_checkpoints), async_save=True
  )
  inputs = jax.ShapeDtypeStruct((1, *parts["spec"].input_shape), np.float32)
  fsdp_min = int((config.get("mesh") or {}).get("fsdp_min_size", 2**14))
  record = None
  if checkpoints.latest_step() is not None:
    target = st.abstract_train_state(model, optimizer, inputs, mesh, fsdp_min_size=fsdp_min)
    state, record = restore_latest(checkpoints, config, target)
    if record.get("state_format", 1) < st.STATE_FORMAT:
      say(
        f"the checkpoint at step {record['step']:,} was written before B_simple had bounds: "
        "its noise-scale smoothing starts again from here"
      )
  else:
    state = st.create_train_state(
      model, optimizer, inputs, mesh, seed=int(config.seed), fsdp_min_size=fsdp_min
    )
  train_step, measures_noise = bbconfig.train_step_from_config(
    config,
    model,
    optimizer,
    plan,
    mesh,
    input_shape=parts["spec"].input_shape,
    normalisation=parts["spec"].device_normalisation,
  )
  initial, policy = plan, None
  if plan.strategy in adaptive.STRATEGIES:  # the phases decided so far, from the checkpoint
    settings = adaptive.Settings.from_config(config.plan)
    policy = adaptive.Policy(settings, plan.dataset_size, (record or {}).get("policy"))
    plan = adaptive.plan_from_decisions(initial, policy.decisions)
  return Run(
    config=config,
    workdir=workdir,
    plan=plan,
    spec=parts["spec"],
    mesh=mesh,
    train_source=parts["train_source"],
    eval_source=parts["eval_source"],
    checkpoints=checkpoints,
    state=state,
    record=record,
    train_step=train_step,
    measures_noise=measures_noise,
    policy=policy,
    initial_plan=initial,
    model=model,
    say=say,
    loss_fn=parts["loss_fn"],
  )
