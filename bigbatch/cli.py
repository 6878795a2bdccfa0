"""The `bigbatch` command line.

bigbatch plan --config configs/<recipe>.py[:variant] [--config.FIELD=VALUE ...]
              [--json] [--plot out.png]
bigbatch train [--config configs/<recipe>.py[:variant]] [--workdir DIR] [--config.FIELD=VALUE ...]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

USAGE = """usage: bigbatch COMMAND --config FILE[:VARIANT] [--config.FIELD=VALUE ...] [options]

commands:
  plan    print the phase plan of a config beside its baseline
          options: --json (machine-readable), --plot PATH (lr, batch, noise vs epochs)
          --config.plan.max_batch_size=auto: cap the batch at what the probe measures
  probe   measure the largest batch whose compiled train step fits in device memory
          (per-device batch -> bytes needed vs available, and the global cap)
  train   train a config's plan, resuming from the workdir's latest checkpoint
          (no --config: MNIST-1D with increasing batch size, on CPU)
          options: --workdir DIR (default workdir/CONFIG), --noprogress

examples:
  bigbatch plan --config configs/cifar10_5_2_increase_batch.py
  bigbatch plan --config configs/cifar10_5_1_increase_batch.py:adam --plot plan.png
  bigbatch plan --config configs/imagenet_resnet50_8192.py --config.plan.strategy=hybrid \\
      --config.plan.max_batch_size=16384 --json
  bigbatch train
  bigbatch train --config configs/cifar10_5_1_increase_batch.py --workdir runs/cifar \\
      --config.dataset.data_dir=/data/tfds
"""


def _fail(command: str, message: str) -> int:
  print(f"bigbatch {command}: error: {message}", file=sys.stderr)
  return 2


def _one_line(error: BaseException) -> str:
  """An exception (and what caused it) as one line."""
  parts = []
  while error is not None:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):  # keep what was raised, not where
      lines = [lines[0], lines[-1]]
    text = " ".join(lines)
    if text and text not in parts:
      parts.append(text)
    error = error.__cause__
  return ": ".join(parts) or "invalid input"


def _config_path(args: list[str]) -> str | None:
  for i, arg in enumerate(args):
    if arg == "--config" and i + 1 < len(args):
      return args[i + 1].split(":")[0]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
  return None


def _parse(command: str, args: list[str], define) -> flags.FlagValues:
  """Parses `--config ...` and the command's own flags into fresh FlagValues.

  Raises:
    SystemExit: with status 2 and a one-line message, for any bad argument.
  """
  path = _config_path(args)
  if path is None:
    raise SystemExit(
      _fail(command, "--config is required, e.g. --config configs/cifar10_5_2_increase_batch.py")
    )
  if not os.path.isfile(path):
    raise SystemExit(_fail(command, f"--config: no such file: {path}"))
  values = flags.FlagValues()
  # `auto` (measure the cap) travels as memory.AUTO through the int-typed field
  args = [
    "--config.plan.max_batch_size=-1" if a == "--config.plan.max_batch_size=auto" else a
    for a in args
  ]
  argv = [f"bigbatch {command}", *args]
  config_flags.DEFINE_config_file(
    "config",
    None,
    "config file (configs/*.py), optionally FILE:VARIANT",
    flag_values=values,
    lock_config=True,
    sys_argv=argv,
  )
  define(values)
  try:
    values(argv)
    values.config.keys()  # the config file loads lazily: fail here, not later
  except (flags.Error, KeyError, ValueError, TypeError, AttributeError, OSError) as error:
    cause = error
    while cause is not None and not isinstance(cause, KeyError):
      cause = cause.__cause__ or cause.__context__
    if cause is not None:  # ConfigDict's KeyError: an override of a field it lacks
      name, *hint = str(cause.args[0]).splitlines()
      hint = f"; {' '.join(hint)}" if hint else ""
      raise SystemExit(
        _fail(
          command,
          f"--config.…: no such field '{name.strip(chr(39))}' "
          f"(a config accepts only its file's fields{hint})",
        )
      ) from None
    raise SystemExit(_fail(command, _one_line(error))) from None
  return values


def _workdir(values, args: list[str]) -> str:
  return values.workdir or os.path.join("workdir", pathlib.Path(_config_path(args)).stem)


def _define_workdir(values) -> None:
  flags.DEFINE_string(
    "workdir",
    None,
    "checkpoints, metrics, probe cache (default: workdir/CONFIG)",
    flag_values=values,
  )


def _plan(args: list[str]) -> int:
  from bigbatch import memory, report
  from bigbatch.config import ConfigError, plan_from_config

  def define(values):
    _define_workdir(values)
    flags.DEFINE_bool("json", False, "print the plan as JSON", flag_values=values)
    flags.DEFINE_string(
      "plot", None, "write a PNG of lr, batch, noise vs epochs", flag_values=values
    )

  values = _parse("plan", args, define)
  try:
    log = (lambda line: print(line, file=sys.stderr)) if values.json else print
    memory.resolve_max_batch_size(values.config, workdir=_workdir(values, args), log=log)
    plan = plan_from_config(values.config)
  except (ConfigError, memory.ProbeError, ValueError) as error:
    return _fail("plan", str(error))
  if values.json:
    print(json.dumps(plan.to_dict(), indent=1))
  else:
    print(report.format_plan(plan))
  if values.plot:
    try:
      report.plot_plan(plan, values.plot)
    except OSError as error:
      return _fail("plan", f"--plot: cannot write {values.plot}: {error.strerror}")
    print(f"wrote {values.plot}", file=sys.stderr if values.json else sys.stdout)
  return 0


# `bigbatch train` without --config: MNIST-1D, increasing batch size, on CPU.
DEFAULT_TRAIN_CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "mnist1d_increase_batch.py"


def _train(args: list[str]) -> int:
  from bigbatch import checkpoint, data, sharding
  from bigbatch.config import ConfigError

  if _config_path(args) is None:
    if not DEFAULT_TRAIN_CONFIG.is_file():
      return _fail("train", f"--config: the default {DEFAULT_TRAIN_CONFIG} is missing; pass one")
    args = ["--config", str(DEFAULT_TRAIN_CONFIG), *args]

  def define(values):
    flags.DEFINE_string(
      "workdir",
      None,
      "checkpoints, metrics and summary (default: workdir/CONFIG)",
      flag_values=values,
    )
    flags.DEFINE_bool("progress", True, "show a progress bar", flag_values=values)

  values = _parse("train", args, define)
  workdir = values.workdir or os.path.join("workdir", pathlib.Path(_config_path(args)).stem)
  known = (ConfigError, data.DataError, sharding.ShardingError, checkpoint.CheckpointError)
  try:
    sharding.initialize_distributed(values.config)  # before anything touches a device
    from bigbatch.train import NonFiniteLossError, train_and_evaluate

    try:
      train_and_evaluate(values.config, workdir, progress=values.progress)
    except NonFiniteLossError as error:
      print(f"bigbatch train: stopped: {error}", file=sys.stderr)
      return 1
  except known as error:
    return _fail("train", str(error))
  return 0


def _probe(args: list[str]) -> int:
  from bigbatch import data, memory, sharding
  from bigbatch.config import ConfigError

  values = _parse("probe", args, _define_workdir)
  try:
    sharding.initialize_distributed(values.config)
    result = memory.probe_config(values.config, workdir=_workdir(values, args))
  except (ConfigError, data.DataError, sharding.ShardingError, memory.ProbeError) as error:
    return _fail("probe", str(error))
  print(memory.format_probe(result))
  return 0


COMMANDS = {"plan": _plan, "train": _train, "probe": _probe}


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `bigbatch` console script; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE, end="")
    return 0 if argv else 2
  command, args = argv[0], argv[1:]
  if command not in COMMANDS:
    return _fail(command, f"unknown command; commands: {', '.join(COMMANDS)}")
  if "-h" in args or "--help" in args:
    print(USAGE, end="")
    return 0
  try:
    return COMMANDS[command](args)
  except SystemExit as exit_:
    return int(exit_.code or 0)


if __name__ == "__main__":
  sys.exit(main())
