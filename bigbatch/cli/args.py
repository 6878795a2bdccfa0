"""Parsing a command's arguments: the config file, its overrides, one-line errors."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import sys
import traceback

from absl import flags
from ml_collections import config_flags


def fail(command: str, message: str) -> int:
  print(f"bigbatch {command}: error: {message}", file=sys.stderr)
  return 2


def one_line(error: BaseException) -> str:
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


def config_path(args: list[str]) -> str | None:
  for i, arg in enumerate(args):
    if arg == "--config" and i + 1 < len(args):
      return args[i + 1].split(":")[0]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
  return None


def config_variant(args: list[str]) -> str | None:
  for i, arg in enumerate(args):
    spec = args[i + 1] if arg == "--config" and i + 1 < len(args) else None
    spec = arg.split("=", 1)[1] if arg.startswith("--config=") else spec
    if spec is not None:
      return spec.split(":", 1)[1] if ":" in spec else None
  return None


def config_file_problem(path: str, variant: str | None) -> str | None:
  """What stops the config file at `path` from giving a config, on one line (None: nothing).

  The file is imported and its `get_config` called here, so that a syntax
  error, a failing import or an exception names the file and its line
  instead of ending in a traceback from inside the flag parser.
  """
  try:
    spec = importlib.util.spec_from_file_location("bigbatch_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
      return f"{path} defines no get_config() function"
    get_config(*([variant] if variant is not None else []))
  except SyntaxError as error:
    return f"{path} line {error.lineno}: SyntaxError: {error.msg}"
  except Exception as error:  # whatever the file raised, say where
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    where = f" line {lines[-1]}" if lines else ""
    text = " ".join(str(error).split())
    return f"{path}{where}: {type(error).__name__}: {text}"
  return None


def parse(command: str, args: list[str], define) -> flags.FlagValues:
  """Parses `--config ...` and the command's own flags into fresh FlagValues.

  Raises:
    SystemExit: with status 2 and a one-line message, for any bad argument.
  """
  path = config_path(args)
  if path is None:
    raise SystemExit(
      fail(command, "--config is required, e.g. --config configs/cifar10_5_2_increase_batch.py")
    )
  if not os.path.isfile(path):
    raise SystemExit(fail(command, f"--config: no such file: {path}"))
  problem = config_file_problem(path, config_variant(args))
  if problem:
    raise SystemExit(fail(command, f"--config: {problem}"))
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
        fail(
          command,
          f"--config.…: no such field '{name.strip(chr(39))}' "
          f"(a config accepts only its file's fields{hint})",
        )
      ) from None
    match = re.match(
      r"flag --config\.(\S+?)=(.*?): (could not convert .*|invalid literal.*)", str(error)
    )
    if match:
      field, value, _ = match.groups()
      wanted = field_type(values, field)
      raise SystemExit(
        fail(command, f"{field}: {value!r} is not a valid {wanted} (--config.{field})")
      ) from None
    raise SystemExit(fail(command, one_line(error))) from None
  return values


def field_type(values: flags.FlagValues, field: str) -> str:
  """The kind of value a config field holds, for an error message."""
  try:
    node = values["config"].value
    *parents, name = field.split(".")
    for part in parents:
      node = node[part]
    kind = node.get_type(name)  # a placeholder's type too
  except Exception:  # the message still names the field
    return "value"
  return {bool: "boolean", int: "whole number", float: "number"}.get(kind, "value")


def workdir_of(values, args: list[str]) -> str:
  return values.workdir or os.path.join("workdir", pathlib.Path(config_path(args)).stem)


def define_workdir(values) -> None:
  flags.DEFINE_string(
    "workdir",
    None,
    "checkpoints, metrics, probe cache (default: workdir/CONFIG)",
    flag_values=values,
  )


def parse_workdir_command(command: str, argv: list[str], define) -> flags.FlagValues:
  """Parses a command that reads a run's workdir: `--workdir` (required) and the flags
  `define(values)` adds.

  Raises:
    SystemExit: with status 2 and a one-line message, for any bad argument.
  """
  values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "the run's workdir", flag_values=values)
  define(values)
  try:
    values([f"bigbatch {command}", *argv])
  except flags.Error as error:
    raise SystemExit(fail(command, str(error))) from None
  if not values.workdir:
    raise SystemExit(fail(command, "--workdir is required: the workdir of a run"))
  return values
