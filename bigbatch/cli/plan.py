"""`bigbatch plan` and `bigbatch probe`: a config's phases, and the batch that fits."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import flags

from bigbatch.cli import args


def plan(argv: list[str]) -> int:
  import jax

  from bigbatch.config import ConfigError, read
  from bigbatch.plan import adaptive, elastic, report
  from bigbatch.step import memory
  from bigbatch.train import build
  from bigbatch.train.experiment import Experiment, elastic_slices

  def define(values):
    args.define_workdir(values)
    flags.DEFINE_bool("json", False, "print the plan as JSON", flag_values=values)
    flags.DEFINE_string(
      "plot", None, "write a PNG of lr, batch, noise vs epochs", flag_values=values
    )

  values = args.parse("plan", argv, define)
  try:
    spec = read(values.config)
    log = (lambda line: print(line, file=sys.stderr)) if values.json else print
    if spec.plan.max_batch_size == memory.AUTO:  # the plan of the probed cap
      workdir = args.workdir_of(values, argv)
      plan = Experiment.from_spec(spec, workdir=workdir, say=log).plan
    else:
      plan = build.plan_of(spec)
  except (ConfigError, memory.ProbeError, ValueError) as error:
    return args.fail("plan", str(error))
  bounds = ""
  if plan.strategy in adaptive.STRATEGIES:
    bounds = adaptive.describe(
      spec.plan.settings(), plan, spec.eval.every_epochs
    )  # of the plan before any decision
    decided, plan = _decided_so_far(plan, values.workdir)
    bounds += decided
  given = not spec.elastic.enabled or spec.elastic.example_seconds is not None
  measured = None if given else _measured_step_time(values.workdir)
  try:
    parts, per = elastic_slices(spec, plan, jax.device_count(), measured)
  except ConfigError as error:
    return args.fail("plan", str(error))
  if values.json:
    extra = {} if parts is None else {"elastic": [dataclasses.asdict(p) for p in parts]}
    print(json.dumps({**plan.to_dict(), **extra}, indent=1))
  else:
    print(report.format_plan(plan))
    if bounds:
      print(bounds)
    if parts is not None:
      source = f"{measured.source} in {values.workdir}" if measured else "the step-time model"
      print(elastic.format_slices(parts, spec.elastic.slice_sizes, per, source))
  if values.plot:
    try:
      report.plot_plan(plan, values.plot)
    except OSError as error:
      return args.fail("plan", f"--plot: cannot write {values.plot}: {error.strerror}")
    print(f"wrote {values.plot}", file=sys.stderr if values.json else sys.stdout)
  return 0


def _latest_record(workdir: str | None) -> tuple[int, dict] | None:
  """(step, record) of the latest checkpoint in `workdir`, or None where it has none."""
  from bigbatch.workdir import checkpoint

  directory = pathlib.Path(workdir or "") / "checkpoints"
  if not workdir or not directory.is_dir():
    return None
  checkpoints = checkpoint.Checkpoints(directory)
  try:
    latest = checkpoints.latest_step()
    return None if latest is None else (latest, checkpoints.record(latest))
  finally:
    checkpoints.close()


def _decided_so_far(plan, workdir: str | None):
  """With `--workdir` of an adaptive run: the plan of the phases its checkpoint has decided."""
  from bigbatch.plan import adaptive

  latest = _latest_record(workdir)
  if latest is None:
    return "", plan
  step, record = latest
  state = record.get("policy") or {}
  decisions = [adaptive.Decision.from_dict(d) for d in state.get("decisions", [])]
  note = f"\n  decided so far in {workdir}: {len(decisions)} decision(s), up to step {step:,}"
  return note, adaptive.plan_from_decisions(plan, decisions)


def _measured_step_time(workdir: str | None):
  """With `--workdir` of a run: the step-time model fitted to its phases' measured step
  times (`bigbatch.plan.elastic.measured_step_time`); None without one."""
  from bigbatch.plan import elastic

  latest = _latest_record(workdir)
  if latest is None:
    return None
  return elastic.measured_step_time(latest[1].get("elapsed", {}).get("phases", []))


# `bigbatch train` without --config: MNIST-1D, increasing batch size, on CPU.


def probe(argv: list[str]) -> int:
  from bigbatch import data, sharding
  from bigbatch.config import ConfigError, read
  from bigbatch.step import memory
  from bigbatch.train.experiment import Experiment

  values = args.parse("probe", argv, args.define_workdir)
  try:
    spec = read(values.config)
    sharding.initialize_distributed(spec.distributed)
    experiment = Experiment.for_probe(spec)
    result = memory.probe(experiment, workdir=args.workdir_of(values, argv))
  except (ConfigError, data.DataError, sharding.ShardingError, memory.ProbeError) as error:
    return args.fail("probe", str(error))
  print(memory.format_probe(result, experiment.spec.dataset.sequence_length))
  return 0
