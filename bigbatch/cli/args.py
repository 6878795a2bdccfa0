"""Parsing a command's arguments: the config file, its overrides, one-line errors."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import sys
import traceback
from typing import Any

import ml_collections
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


def with_recipe_path(args: list[str]) -> list[str]:
  """`args` with a `--config NAME[:VARIANT]` that names a shipped recipe (not a file)
  replaced by the recipe's path, so that `--config cifar10_base` works from any
  directory; any other `--config` is left for `parse` to check."""
  from bigbatch.recipe import find_recipe

  path = config_path(args)
  if path is None or os.path.isfile(path) or find_recipe(path) is None:
    return list(args)
  variant = config_variant(args)
  resolved = str(find_recipe(path)) + (f":{variant}" if variant is not None else "")
  out = list(args)
  for i, arg in enumerate(out):
    if arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolved
      break
    if arg.startswith("--config="):
      out[i] = f"--config={resolved}"
      break
  return out


def config_variant(args: list[str]) -> str | None:
  for i, arg in enumerate(args):
    spec = args[i + 1] if arg == "--config" and i + 1 < len(args) else None
    spec = arg.split("=", 1)[1] if arg.startswith("--config=") else spec
    if spec is not None:
      return spec.split(":", 1)[1] if ":" in spec else None
  return None


def _import_beside(path: str) -> None:
  """Makes the modules beside a config file of the user's importable, so that its
  `model.name`, `dataset.source` and `loss` can name them (`task:Net`) from any working
  directory, as `python config.py` would find them. A shipped recipe's folder is not
  added: its files are configs, not modules."""
  from bigbatch.recipe import RECIPES

  here = os.path.dirname(os.path.abspath(path))
  if pathlib.Path(here) != RECIPES and here not in sys.path:
    sys.path.insert(0, here)


def load_config_file(path: str, variant: str | None) -> tuple[Any, str | None]:
  """The config the file at `path` gives, or what stops it, on one line.

  The file is imported and its `get_config` called here, so that a syntax
  error, a failing import, an exception or a result that is not a config
  names the file (and its line) instead of ending in a traceback from inside
  the flag parser.

  Returns:
    `(config, None)`, or `(None, problem)`.
  """
  try:
    spec = importlib.util.spec_from_file_location("bigbatch_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
      return None, f"{path} defines no get_config() function"
    config = get_config(*([variant] if variant is not None else []))
  except SyntaxError as error:
    return None, f"{path} line {error.lineno}: SyntaxError: {error.msg}"
  except Exception as error:  # whatever the file raised, say where
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    where = f" line {lines[-1]}" if lines else ""
    text = " ".join(str(error).split())
    return None, f"{path}{where}: {type(error).__name__}: {text}"
  if not isinstance(config, ml_collections.ConfigDict):
    what = "None" if config is None else f"a {type(config).__name__}"
    return None, f"{path}: get_config() returned {what}, not a ConfigDict"
  return config, None


def overrides(args: list[str]) -> list[tuple[str, str]]:
  """The `--config.FIELD=VALUE` (or `--config.FIELD VALUE`) arguments, as (field, value)."""
  found = []
  for i, arg in enumerate(args):
    if not arg.startswith("--config."):
      continue
    field, sep, value = arg[len("--config.") :].partition("=")
    if not sep:
      value = args[i + 1] if i + 1 < len(args) else ""
    found.append((field, value))
  return found


def _last_of_each(args: list[str]) -> list[str]:
  """`args` with only the last `--config.FIELD` of each field.

  A field given twice takes its last value, as every other flag does; the
  flag parser would join two tuples given for one field into one.
  """
  last = {field: i for i, (field, _) in enumerate(overrides(args))}
  kept, seen, skip = [], 0, False
  for arg in args:
    if skip:
      skip = False
      continue
    if arg.startswith("--config."):
      field = arg[len("--config.") :].partition("=")[0]
      spaced = "=" not in arg
      if last[field] != seen:
        seen += 1
        skip = spaced  # the value is the next argument
        continue
      seen += 1
    kept.append(arg)
  return kept


def _wrong_clock(config: ml_collections.ConfigDict, field: str) -> str | None:
  """Why `field` is missing, where it is a field of the other clock (tokens or examples)."""
  from bigbatch.spec.clock import TOKEN_FIELDS, is_token_clock

  twins = {twin: name for name, (twin, _) in TOKEN_FIELDS.items()}
  if is_token_clock(config) and field in twins:
    return (
      f"{field}: a language model counts in tokens (dataset.sequence_length is set); "
      f"set {twins[field]} instead"
    )
  if not is_token_clock(config) and field in TOKEN_FIELDS:
    return (
      f"{field}: only for a language model (a text dataset with dataset.sequence_length); "
      f"set {TOKEN_FIELDS[field][0]} instead"
    )
  return None


def override_problem(config: ml_collections.ConfigDict, field: str) -> str | None:
  """What is wrong with setting `field` of `config`, naming it (None: nothing).

  Every part of the path but the last must be a block of fields, and the last
  a field (not a block).
  """
  node, parts = config, field.split(".")
  for depth, part in enumerate(parts):
    where = ".".join(parts[:depth])
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{field}: no such field ({where} is a value, not a block of fields)"
    if part not in node:
      clock = _wrong_clock(config, field)
      if clock:
        return clock
      known = ", ".join(sorted(node.keys()))
      return f"{field}: no such field; {where or 'the config'} has: {known}"
    child = node[part]
    if depth == len(parts) - 1 and isinstance(child, ml_collections.ConfigDict):
      first = next(iter(child.keys()), "FIELD")
      return (
        f"{field}: is a block of fields, not a value; set one of them, "
        f"e.g. --config.{field}.{first}=…"
      )
    node = child
  return None


def parse(command: str, args: list[str], define) -> flags.FlagValues:
  """Parses `--config ...` and the command's own flags into fresh FlagValues.

  Raises:
    SystemExit: with status 2 and a one-line message, for any bad argument.
  """
  args = with_recipe_path(args)
  path = config_path(args)
  if path is None:
    raise SystemExit(
      fail(
        command, "--config is required: a recipe's name (e.g. cifar10_5_2_increase_batch) or a file"
      )
    )
  if not os.path.isfile(path):
    from bigbatch.recipe import recipe_names

    raise SystemExit(
      fail(
        command, f"--config: no such file or recipe: {path}; recipes: {', '.join(recipe_names())}"
      )
    )
  _import_beside(path)
  config, problem = load_config_file(path, config_variant(args))
  if problem:
    raise SystemExit(fail(command, f"--config: {problem}"))
  for field, _ in overrides(args):
    problem = override_problem(config, field)
    if problem:
      raise SystemExit(fail(command, problem))
  values = flags.FlagValues()
  # `auto` (measure the cap) travels as memory.AUTO through the int-typed field
  caps = ("--config.plan.max_batch_size=", "--config.plan.max_batch_tokens=")
  args = [
    a.removesuffix("auto") + "-1" if a.startswith(caps) and a.endswith("=auto") else a
    for a in _last_of_each(args)
  ]
  args, unset = _take_unset(command, config, args)
  argv = [f"bigbatch {command}", *args]
  config_flags.DEFINE_config_file(
    "config",
    None,
    "a recipe's name or a config file, optionally NAME:VARIANT",
    flag_values=values,
    lock_config=True,
    sys_argv=argv,
  )
  define(values)
  try:
    values(argv)
    values.config.keys()  # the config file loads lazily: fail here, not later
  except (flags.Error, KeyError, ValueError, TypeError, AttributeError, OSError) as error:
    raise SystemExit(fail(command, _value_problem(config, args, error))) from None
  for field in unset:
    parent, name = _parent(values.config, field)
    parent[name] = None
  return values


def _parent(config: ml_collections.ConfigDict, field: str) -> tuple[Any, str]:
  """The block that holds `field` (dotted), and the field's name in it."""
  *parents, name = field.split(".")
  for part in parents:
    config = config[part]
  return config, name


def _take_unset(
  command: str, config: ml_collections.ConfigDict, args: list[str]
) -> tuple[list[str], list[str]]:
  """`args` without the `--config.FIELD=None` (or `--config.FIELD None`) overrides, and
  their fields, each checked to be one that may be unset.

  The flag parser reads a value in the field's type, so `None` would be refused in an
  int field such as `ghost_batch_size` (`'None' is not a valid whole number`) although a
  config file may set it; these fields are set to None once the rest is parsed.

  Raises:
    SystemExit: with status 2, naming a field that cannot be None and what it takes.
  """
  from bigbatch.spec.run import nullable

  kept, unset, skip = [], [], False
  for i, arg in enumerate(args):
    if skip:
      skip = False
      continue
    field, sep, value = arg.removeprefix("--config.").partition("=")
    if not sep and i + 1 < len(args):  # `--config.FIELD VALUE`
      value = args[i + 1]
    if not arg.startswith("--config.") or value != "None":
      kept.append(arg)
      continue
    skip = not sep
    parent, name = _parent(config, field)
    may = nullable(field)
    if not (parent[name] is None if may is None else may):
      raise SystemExit(
        fail(
          command,
          f"{field}: cannot be None (only a field whose default is None can be unset); "
          f"it takes {_kind(config, field)} (--config.{field})",
        )
      )
    unset.append(field)
  return kept, unset


def _value_problem(config: ml_collections.ConfigDict, args: list[str], error: Exception) -> str:
  """The one line for an override whose value does not parse, naming its field."""
  text = str(error)
  match = re.match(r"flag --config\.(\S+?)=(.*?): ", text)
  if match:
    field, value = match.groups()
  else:  # a tuple's element that did not convert: the message shows the value, not the field
    named = [(f, v) for f, v in overrides(args) if f"'{v}'" in text or f'"{v}"' in text]
    if not named:
      return one_line(error)
    field, value = named[0]
  return f"{field}: {value!r} is not {_kind(config, field)} (--config.{field})"


def _kind(config: ml_collections.ConfigDict, field: str) -> str:
  """What a config field holds, for an error message ("a valid number", ...)."""
  try:
    node = config
    *parents, name = field.split(".")
    for part in parents:
      node = node[part]
    kind, default = node.get_type(name), node[name]
  except Exception:  # the message still names the field
    return "a valid value"
  if kind in (tuple, list):
    if default and all(isinstance(v, tuple | list) and len(v) == 2 for v in default):
      # `mesh.rules`: a Python literal, each string quoted
      first = tuple(default[0])
      return f'a tuple of pairs in Python\'s syntax, e.g. "({first!r},)"'
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in default or ())
    return "a list of numbers" if numbers else f"a valid {kind.__name__}"
  names = {bool: "true or false", int: "a valid whole number", float: "a valid number"}
  return names.get(kind, "a valid value")


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
