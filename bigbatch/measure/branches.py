"""Branches from a run's checkpoint at several batch sizes: the critical batch measured.

`bigbatch cbs` (Merrill et al. 2025) takes a run's checkpoint at step S and
trains a short branch from it at each batch size asked for, each on the same
budget of examples (tokens for a language model) with the data order
reseeded at the branch, and compares their held-out losses
(`bigbatch.measure.critical_batch`). Each branch follows the plan's rule for
a change of batch from the run's batch B_S at S to its own B: the paper's
g-rule for SGD (lr x f(B_S) / f(B), f(B) = N/B or N/B - 1 as the plan's
`noise_rule`, momentum held), and the configured Adam rule for Adam, AdamW
and AMSGrad (`plan.adam_rule`: lr x (f(B_S)/f(B))^p, b1, b2 and eps moved),
at the rate the run had at S, held constant.

A branch is an ordinary run in `WORKDIR/cbs/step_S/B`: its spec is the
run's, with that batch, rate and budget, a constant schedule and the
reseeded data order; its state at its step 0 is the run's at S (the step
counter set back to 0). So any other command reads it, and a branch killed
midway resumes bitwise from its own checkpoints; a finished branch (its
`summary.json` complete) is read back, not trained again. A batch past the
run's memory cap (`plan.max_batch_size`) is computed as micro-batches of
the cap (`accumulate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch import workdir as wd
from bigbatch.measure.critical_batch import BranchResult
from bigbatch.plan import adam_rules, adaptive, noise
from bigbatch.spec import PlanSpec, RunSpec, ScheduleSpec
from bigbatch.train.experiment import Experiment
from bigbatch.train.trainer import Trainer
from bigbatch.workdir import checkpoint as ckpt

__all__ = ["BranchError", "Parent", "branch_spec", "open_parent", "read_branch", "run_branch"]

EVALUATIONS = 8  # held-out evaluations along a branch: its loss against its budget


class BranchError(ValueError):
  """Input `bigbatch cbs` cannot branch from; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Parent:
  """The run a branch starts from: its spec (durations in epochs), the checkpoint's step,
  and the batch, learning rate, b1, b2 and eps it had there."""

  workdir: pathlib.Path
  spec: RunSpec
  step: int
  batch_size: int
  learning_rate: float
  b1: float
  b2: float | None
  eps: float | None
  rows: tuple[dict[str, Any], ...]  # its metrics.jsonl, up to the step
  position: int = 0  # examples (sequences) the run had trained before the step

  @property
  def root(self) -> pathlib.Path:
    """Where the branches from this step live: `WORKDIR/cbs/step_S`."""
    return self.workdir / "cbs" / f"step_{self.step}"

  @property
  def tokens_per_example(self) -> int | None:
    return self.spec.dataset.sequence_length

  def noise_scale(self) -> dict[str, float | None]:
    """B_simple (with its bounds) as the run last logged it at or before the step."""
    keys = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")
    measured = [r for r in self.rows if "grad_noise_scale_low" in r or "grad_noise_scale" in r]
    last = measured[-1] if measured else {}
    return {k: noise.known(last.get(k)) for k in keys}


def _checked_workdir(workdir: pathlib.Path) -> ckpt.Checkpoints:
  if not (workdir / "checkpoints").is_dir():
    raise BranchError(f"--workdir: {workdir} holds no run (no checkpoints in it)")
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  if checkpoints.latest_step() is None:
    checkpoints.close()
    raise BranchError(f"--workdir: {workdir} holds no checkpoint to branch from")
  return checkpoints


def open_parent(workdir: str | pathlib.Path, step: int) -> Parent:
  """The run in `workdir` at its checkpoint `step`.

  Raises:
    BranchError: naming `--workdir` (no run there) or `--step` (no checkpoint at that
      step: the steps that have one are listed).
  """
  workdir = pathlib.Path(workdir)
  checkpoints = _checked_workdir(workdir)
  try:
    steps = checkpoints.all_steps()
    if step not in steps:
      raise BranchError(
        f"--step {step}: no checkpoint at that step in {workdir / 'checkpoints'}; "
        f"checkpoints at steps {', '.join(map(str, steps))} (keep_checkpoints keeps the latest)"
      )
    record = checkpoints.record(step)
  finally:
    checkpoints.close()
  experiment = Experiment.from_record(record)
  plan = experiment.plan
  if experiment.spec.plan.adaptive:  # the phases its decisions made, up to the step
    decisions = [
      adaptive.Decision.from_dict(d) for d in record.get("policy", {}).get("decisions", [])
    ]
    plan = adaptive.plan_from_decisions(plan, decisions)
  phase = plan.phase_at(min(step, plan.total_steps - 1))
  rule = plan.adam_rule is not None
  rows = wd.read_rows(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").exists() else []
  return Parent(
    workdir=workdir,
    spec=experiment.spec,
    step=step,
    batch_size=phase.batch_size,
    learning_rate=float(plan.schedule("learning_rate")(step)),
    b1=float(plan.schedule("momentum")(step)),
    b2=float(plan.schedule("b2")(step)) if rule else experiment.spec.optimizer.options.get("b2"),
    eps=float(plan.schedule("eps")(step)) if rule else experiment.spec.optimizer.options.get("eps"),
    rows=tuple(r for r in rows if r.get("step", 0) <= step),
    position=plan.examples_before(step),
  )


def _branch_seed(seed: int, step: int, repeat: int) -> int:
  """A data order of the branch's own (a function of the run's seed, S and the repeat)."""
  return int(np.random.SeedSequence([seed, step, repeat]).generate_state(1)[0] % 2**31)


def _rates(parent: Parent, batch: int) -> tuple[float, float, float | None, float | None]:
  """The branch's learning rate, b1, b2 and eps: the run's at S, moved by the plan's rule
  from the run's batch at S to `batch`."""
  spec = parent.spec
  adam = spec.optimizer.family == "adaptive"  # `plan.adam_rule` is this family's rule
  rule = adam_rules.rule(spec.plan.adam_rule if adam else None)
  n, exact = spec.dataset.num_train_examples, spec.plan.noise_rule == "exact"
  factor = noise.batch_noise_factor(n, parent.batch_size, exact) / noise.batch_noise_factor(
    n, batch, exact
  )
  learning_rate = parent.learning_rate * factor**rule.lr_power
  if not adam or rule.name is None:  # SGD's g-rule (or Adam's paper): the betas held
    return learning_rate, parent.b1, parent.b2, parent.eps
  moved = rule.hyperparams(batch / parent.batch_size, parent.b1, parent.b2, parent.eps)
  return learning_rate, moved.b1, moved.b2, moved.eps


def branch_spec(parent: Parent, batch: int, budget: int, repeat: int = 0) -> RunSpec:
  """The spec of the branch at `batch` (examples) for `budget` examples: the run's, at the
  rule's rate held constant, reseeded, evaluated `EVALUATIONS` times."""
  spec = parent.spec
  learning_rate, b1, b2, eps = _rates(parent, batch)
  options = dict(spec.optimizer.options)
  if spec.optimizer.momentum_field is not None:  # a factory may have no momentum
    options[spec.optimizer.momentum_field] = b1
  if b2 is not None and "b2" in options:
    options |= {"b2": b2, "eps": eps}
  cap = spec.plan.max_batch_size
  micro = cap if cap is not None and cap > 0 and batch > cap else None
  epochs = budget / spec.dataset.num_train_examples
  branch = spec.replace(
    num_epochs=epochs,
    batch_size=batch,
    seed=_branch_seed(spec.seed, parent.step, repeat),
    optimizer=dataclasses.replace(spec.optimizer, learning_rate=learning_rate, options=options),
    schedule=ScheduleSpec("constant"),
    plan=PlanSpec(
      strategy="accumulate" if micro else "decay_lr",
      max_batch_size=micro,
      noise_rule=spec.plan.noise_rule,
      adam_rule=spec.plan.adam_rule,
    ),
    eval=dataclasses.replace(spec.eval, every_epochs=epochs / EVALUATIONS),
    snapshots="off",
  )
  length = parent.tokens_per_example
  if not length:
    return branch
  tokens = {"num_tokens": budget * length, "batch_tokens": batch * length,
            "eval_every_tokens": budget * length / EVALUATIONS}  # fmt: skip
  if micro:
    tokens["plan.max_batch_tokens"] = micro * length
  if "noise.horizon_tokens" in spec.token_fields:
    tokens["noise.horizon_tokens"] = spec.token_fields["noise.horizon_tokens"]
  return dataclasses.replace(branch, token_fields=tokens)


def _from_parent(parent: Parent):
  """`Experiment.start` of a branch: the run's state at S, its step set back to 0."""

  def start(experiment: Experiment) -> st.TrainState:
    checkpoints = ckpt.Checkpoints(parent.workdir / "checkpoints")
    try:
      state = st.restore_train_state(checkpoints, parent.step, experiment.abstract_state())
    finally:
      checkpoints.close()
    step = jax.device_put(np.zeros((), np.int32), state.step.sharding)
    return state.replace(step=step)

  return start


def read_branch(workdir: pathlib.Path, batch: int) -> BranchResult | None:
  """A finished branch's result (None: not finished)."""
  path = workdir / "summary.json"
  summary = json.loads(path.read_text()) if path.exists() else {}
  if summary.get("status") not in ("completed", "complete"):
    return None
  rows = wd.read_rows(workdir / "metrics.jsonl")
  curve = tuple((int(r["step"]), float(r["eval_loss"])) for r in rows if "eval_loss" in r)
  return BranchResult(batch, int(summary["step"]), float(summary["final_test_loss"]), curve)


def run_branch(
  parent: Parent,
  spec: RunSpec,
  workdir: pathlib.Path,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> BranchResult:
  """Trains (or resumes, or reads back) the branch of `spec` in `workdir`; the trainer's
  output goes to `workdir/branch.log`."""
  done = read_branch(workdir, spec.batch_size)
  if done is not None:
    return done
  workdir.mkdir(parents=True, exist_ok=True)
  experiment = dataclasses.replace(
    Experiment.from_spec(spec, devices=devices), start=_from_parent(parent)
  )
  with open(workdir / "branch.log", "a") as log, contextlib.redirect_stdout(log):
    Trainer(experiment, workdir, devices=devices, progress=False).run()
  result = read_branch(workdir, spec.batch_size)
  assert result is not None  # the trainer returned: the branch is complete
  return result


def check_batch_sizes(parent: Parent, batches: Sequence[int], devices) -> None:
  """Refuses a batch the mesh cannot split (naming `--batch-sizes`)."""
  mesh = shd.make_mesh(-1, parent.spec.mesh.fsdp, parent.spec.mesh.tensor, devices=devices)
  for batch in batches:
    cap = parent.spec.plan.max_batch_size
    micro = cap if cap is not None and cap > 0 and batch > cap else batch
    try:
      shd.check_batch_size(
        micro, mesh, ghost_batch_size=parent.spec.ghost_batch_size, field="--batch-sizes"
      )
    except shd.ShardingError as error:
      raise BranchError(str(error)) from None
    if micro != batch and batch % micro:
      raise BranchError(
        f"--batch-sizes: {batch} is past the run's memory cap {micro} and not a multiple of it"
      )
