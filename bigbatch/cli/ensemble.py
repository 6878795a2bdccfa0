"""`bigbatch ensemble`: the snapshot ensemble of a run, beside each of its snapshots."""

from __future__ import annotations

import json
import pathlib

from absl import flags

from bigbatch.cli import args


def ensemble(argv: list[str]) -> int:
  """`bigbatch ensemble --workdir DIR [--last M] [--json]`."""
  from bigbatch import data, sharding
  from bigbatch.config import ConfigError
  from bigbatch.measure import ensemble
  from bigbatch.train.experiment import Experiment
  from bigbatch.workdir import checkpoint
  from bigbatch.workdir import snapshots as snaps

  def define(values):
    flags.DEFINE_integer(
      "last", None, "ensemble of the last M snapshots (default: all)", flag_values=values
    )
    flags.DEFINE_bool("json", False, "print the results as JSON", flag_values=values)

  values = args.parse_workdir_command("ensemble", argv, define)
  directory = pathlib.Path(values.workdir) / "snapshots"
  if not directory.is_dir():
    return args.fail(
      "ensemble",
      f"--workdir: {directory} does not exist: train with a restarting schedule "
      f"(schedule.name: {', '.join(snaps.RESTARTING)}) and snapshots auto or on",
    )
  store = snaps.open_store(directory)
  try:
    steps = store.all_steps()
    if not steps:
      return args.fail("ensemble", f"--workdir: {directory} holds no snapshot")
    last = len(steps) if values.last is None else values.last
    if not 1 <= last <= len(steps):
      return args.fail(
        "ensemble",
        f"--last: must be between 1 and {len(steps)} (the snapshots in {directory}), got {last}",
      )
    records = [store.record(step) for step in steps[-last:]]
    experiment = Experiment.from_record(records[-1])
    target = experiment.variables_target()
    members = [store.restore(record["step"], target) for record in records]
    results = ensemble.evaluate_ensemble(experiment, members)
  except (ConfigError, data.DataError, sharding.ShardingError, checkpoint.CheckpointError) as error:
    return args.fail("ensemble", str(error))
  finally:
    store.close()
  rows = [
    {key: record[key] for key in ("step", "epoch", "cycle")} | member
    for record, member in zip(records, results["members"])
  ]
  ensemble_row = {"members": last} | results["ensemble"]
  if values.json:
    print(json.dumps({"workdir": values.workdir, "snapshots": rows, "ensemble": ensemble_row}))
  else:
    print(format_ensemble(rows, ensemble_row))
  return 0


def format_ensemble(rows: list[dict], ensemble_row: dict) -> str:
  """One line per snapshot, then the ensemble's, with test accuracy and loss."""
  lines = [f"{'snapshot':<10}{'step':>8}{'epoch':>8}{'test accuracy':>15}{'test loss':>11}"]
  for row in rows:
    lines.append(
      f"{'cycle ' + str(row['cycle']):<10}{row['step']:>8,}{row['epoch']:>8.2f}"
      f"{row['eval_accuracy']:>15.4f}{row['eval_loss']:>11.4f}"
    )
  members = ensemble_row["members"]
  lines.append(
    f"{'ensemble':<10}{'last ' + str(members):>8}{'':>8}"
    f"{ensemble_row['eval_accuracy']:>15.4f}{ensemble_row['eval_loss']:>11.4f}"
  )
  lines.append(f"ensemble: the mean of the last {members} snapshots' softmax outputs")
  return "\n".join(lines)
