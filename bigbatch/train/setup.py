"""A training run checked and set up, before any long work.

`set_up` takes an `Experiment` (the plan, optimizer, model, data and mesh of
a spec), checks what training needs of it, and restores the workdir's latest
checkpoint (or initialises the state), refusing anything it cannot use with
an error that names the field or the path. The checkpoint is verified against the checksums saved
with it; a corrupt one is reported as corruption, with the older checkpoint
that is intact and how to resume from it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

from bigbatch import step as st
from bigbatch.plan import adaptive
from bigbatch.plan.phases import Plan
from bigbatch.spec import RunSpec
from bigbatch.train.experiment import Experiment
from bigbatch.workdir import checkpoint as ckpt


@dataclasses.dataclass
class Run:
  """A run checked and set up: everything the loop needs, built before any long work."""

  experiment: Experiment
  workdir: pathlib.Path
  plan: Plan
  checkpoints: ckpt.Checkpoints
  state: Any
  record: dict[str, Any] | None  # of the checkpoint resumed, if any
  policy: adaptive.Policy | None  # the deciding state of an adaptive strategy
  say: Callable[[str], None]

  @property
  def spec(self) -> RunSpec:
    return self.experiment.spec

  # what the loop reads of the experiment
  dataset = property(lambda self: self.experiment.dataset)
  mesh = property(lambda self: self.experiment.mesh)
  model = property(lambda self: self.experiment.model)
  loss_fn = property(lambda self: self.experiment.loss_fn)
  train_source = property(lambda self: self.experiment.train_source)
  eval_source = property(lambda self: self.experiment.eval_source)
  train_step = property(lambda self: self.experiment.train_step.fn)
  measures_noise = property(lambda self: self.experiment.train_step.measures_noise)

  @property
  def initial_plan(self) -> Plan:
    """The plan before any decision (`plan` is rebuilt from it)."""
    return self.experiment.plan

  @property
  def complete(self) -> bool:
    """Whether the workdir already holds the finished run (final evaluation included)."""
    return (
      self.record is not None
      and self.record.get("step") == self.plan.total_steps
      and self.record.get("final_eval") is not None
    )


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


def set_up(experiment: Experiment, workdir: pathlib.Path, say) -> Run:
  """The run of `experiment` in `workdir`: its latest checkpoint restored (checked against
  the spec and its checksums), or the initial state.

  Raises:
    ConfigError, ShardingError: a plan the mesh cannot split, or a training split of
      another size than the spec's.
    CheckpointError, CorruptCheckpointError: a checkpoint the run cannot continue from.
  """
  experiment.check_for_training()
  spec = experiment.spec
  checkpoints = ckpt.Checkpoints(
    workdir / "checkpoints", keep=spec.checkpoints.keep, async_save=True
  )
  record = None
  if checkpoints.latest_step() is not None:
    state, record = restore_latest(checkpoints, spec.to_dict(), experiment.abstract_state())
    if record.get("state_format", 1) < st.STATE_FORMAT:
      say(
        f"the checkpoint at step {record['step']:,} was written before B_simple had bounds: "
        "its noise-scale smoothing starts again from here"
      )
  else:
    state = experiment.initial_state()
  plan, policy = experiment.plan, None
  if spec.plan.adaptive:  # the phases decided so far, from the checkpoint
    policy = adaptive.Policy(spec.plan.settings(), plan.dataset_size, (record or {}).get("policy"))
    plan = adaptive.plan_from_decisions(plan, policy.decisions)
  return Run(
    experiment=experiment,
    workdir=workdir,
    plan=plan,
    checkpoints=checkpoints,
    state=state,
    record=record,
    policy=policy,
    say=say,
  )
