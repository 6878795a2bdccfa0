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
import json
import pathlib
from collections.abc import Callable
from typing import Any

from bigbatch import step as st
from bigbatch.plan import adaptive
from bigbatch.plan.phases import Plan
from bigbatch.spec import RunSpec
from bigbatch.train import build
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
  between_step = property(lambda self: self.experiment.train_step.between)
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
  """The latest checkpoint's state and record, checked against the config, its checksums
  and for non-finite values.

  Raises:
    CheckpointError: if the config cannot continue from it.
    CorruptCheckpointError: if it cannot be read back as written; the message
      says which older checkpoint is intact and how to resume from it.
    NonFiniteCheckpointError: if an array of it holds a NaN or an infinity (one
      saved before every state was checked); the message names the array and
      the older checkpoint that is finite.
  """
  latest = checkpoints.latest_step()
  try:
    record = checkpoints.check_compatible(latest, config)
    state = st.restore_train_state(checkpoints, latest, target)
  except ckpt.CorruptCheckpointError as error:
    raise ckpt.CorruptCheckpointError(f"{error}{_older(checkpoints, latest, target)}") from None
  bad = st.nonfinite_leaf(state)
  if bad is not None:
    name, count, size = bad
    raise ckpt.NonFiniteCheckpointError(
      f"{checkpoints.path(latest)}: {name} holds {count:,} non-finite values of {size:,}"
      f"{_older(checkpoints, latest, target)}"
    )
  return state, record


def _older(checkpoints: ckpt.Checkpoints, latest: int, target: Any) -> str:
  """The newest older checkpoint that is intact and finite, and how to resume from it."""
  broken = checkpoints.path(latest)
  for older in reversed([s for s in checkpoints.all_steps() if s < latest]):
    try:
      state = st.restore_train_state(checkpoints, older, target)
    except ckpt.CorruptCheckpointError:
      continue
    if st.nonfinite_leaf(state) is not None:
      continue
    return (
      f"; the checkpoint at step {older} is intact and finite: move {broken} out of "
      f"{checkpoints.directory} (e.g. `mv {broken} {broken.parent.parent}/broken-{latest}`) "
      f"and start again to resume from it"
    )
  return "; no older checkpoint is intact and finite: use another --workdir to start afresh"


# The config fields a plan's phases are made of, named when a resume would change them.
_PLAN_FIELDS = ("num_epochs", "num_tokens", "batch_size", "batch_tokens", "schedule", "plan")


def check_workdir(spec: RunSpec, workdir: pathlib.Path) -> None:
  """Refuses a spec that the workdir's latest checkpoint binds otherwise, before any data
  is built or any model compiled: the binding fields (`checkpoint.BINDING_FIELDS`: the
  dataset and its size, the model, the loss, the optimizer, ...) and the plan's steps
  up to the checkpoint (each phase's first step, batch and data position).

  A checkpoint whose record cannot be read is left to `set_up`, which names the
  older checkpoint that is intact.

  Raises:
    CheckpointError: naming the field and both values.
  """
  directory = workdir / "checkpoints"
  if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
    return
  checkpoints = ckpt.Checkpoints(directory, keep=spec.checkpoints.keep, async_save=False)
  try:
    latest = checkpoints.latest_step()
    record = checkpoints.record(latest) if latest is not None else None
  except ckpt.CorruptCheckpointError:
    record = None
  try:
    if record is not None:
      # a language model's corpus size is known once it is read; the record has it
      unresolved = () if spec.resolved else ("dataset.num_train_examples",)
      checkpoints.check_compatible(latest, spec.to_dict(), skip=unresolved)
      _check_plan_so_far(spec, record, checkpoints.path(latest))
  finally:
    checkpoints.close()


def _check_plan_so_far(spec: RunSpec, record: dict[str, Any], path: pathlib.Path) -> None:
  """Refuses a plan that differs from the checkpoint's before its step: the run could not
  continue as the same run (the data position at the step would differ)."""
  if spec.plan.adaptive or "plan" not in record:  # its phases are its decisions, recorded
    return
  if not spec.resolved:
    spec = spec.resolve(int(record["config"]["dataset"]["num_train_examples"]))
  plan, step = build.plan_of(spec), int(record["step"])
  saved = [p for p in record["plan"]["phases"] if p["first_step"] < step]
  now = [p.to_dict() for p in plan.phases if p.first_step < step]
  keys = ("first_step", "batch_size", "first_example")
  same = [tuple(p[k] for k in keys) for p in saved] == [tuple(p[k] for k in keys) for p in now]
  if same and plan.examples_before(step) == record.get("position"):
    return
  before, after = (
    _flat(json.loads(json.dumps(c, default=str))) for c in (record["config"], spec.to_dict())
  )
  changed = [
    f"{key} {before.get(key)!r} -> {after.get(key)!r}"
    for key in sorted(set(before) | set(after))
    if key.split(".")[0] in _PLAN_FIELDS and before.get(key) != after.get(key)
  ]
  raise ckpt.CheckpointError(
    f"plan: the checkpoint at step {step:,} in {path.parent} was trained by a plan whose "
    f"phases before it differ from this config's ({', '.join(changed) or 'the planned phases'})"
    f"; the run cannot continue as the same run: use another --workdir, or set them back"
  )


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out |= _flat(value, f"{prefix}{key}.")
    else:
      out[f"{prefix}{key}"] = value
  return out


def set_up(experiment: Experiment, workdir: pathlib.Path, say) -> Run:
  """The run of `experiment` in `workdir`: its latest checkpoint restored (checked against
  the spec and its checksums), or the initial state.

  Raises:
    ConfigError, ShardingError: a plan the mesh cannot split, or a training split of
      another size than the spec's.
    CheckpointError, CorruptCheckpointError, NonFiniteCheckpointError: a checkpoint the
      run cannot continue from.
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
