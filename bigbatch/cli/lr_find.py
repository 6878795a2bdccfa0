"""`bigbatch lr-find`: the learning-rate range test of a config, and the batch size it points to."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys

from absl import flags

from bigbatch.cli import args

COMMAND = "lr-find"


def lr_find(argv: list[str]) -> int:
  """`bigbatch lr-find --config FILE [--start --end --steps --batch-sizes --out --json]`."""
  from bigbatch import data, sharding
  from bigbatch.config import ConfigError, read
  from bigbatch.measure import lr_find as maths
  from bigbatch.measure import lr_range
  from bigbatch.step import memory

  values = args.parse(COMMAND, argv, _define)
  try:
    rates = maths.exponential_rates(values.start, values.end, values.steps)
  except ValueError as error:  # its messages start with the argument's name
    return args.fail(COMMAND, f"--{error}")
  try:
    batch_sizes = _batch_sizes(values["batch-sizes"].value)
  except ValueError as error:
    return args.fail(COMMAND, str(error))
  workdir = args.workdir_of(values, argv)
  out = pathlib.Path(values.out or pathlib.Path(workdir) / "lr_find.png")
  problem = _unwritable(out)
  if problem:
    return args.fail(COMMAND, problem)
  log = (lambda line: print(line, file=sys.stderr)) if values.json else print
  try:
    spec = read(values.config)
    sharding.initialize_distributed(spec.distributed)  # before anything touches a device
    main = _is_main_process()
    # with --json, stdout is the JSON alone: what the libraries print (tfds preparing a
    # dataset) goes to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if values.json else contextlib.nullcontext()
    with quiet:
      test = lr_range.run(
        spec,
        rates=rates,
        batch_sizes=batch_sizes,
        batch_sizes_field="--batch-sizes" if batch_sizes else "batch_size",
        workdir=workdir,
        say=log if main else (lambda line: None),
      )
  except (ConfigError, data.DataError, sharding.ShardingError, memory.ProbeError) as error:
    return args.fail(COMMAND, str(error))
  if not main:  # process 0 reports for all: every process saw the same losses
    return 0
  name = pathlib.Path(args.config_path(argv)).stem
  return _report(test, spec, rates, out, name=name, as_json=values.json, log=log)


def _define(values: flags.FlagValues) -> None:
  args.define_workdir(values)
  flags.DEFINE_string(
    "out", None, "the PNG of the loss against lr (default: WORKDIR/lr_find.png)", flag_values=values
  )
  flags.DEFINE_float("start", 1e-7, "the first learning rate", flag_values=values)
  flags.DEFINE_float("end", 10.0, "the last learning rate", flag_values=values)
  flags.DEFINE_integer("steps", 100, "steps from --start to --end", flag_values=values)
  flags.DEFINE_string(
    "batch-sizes",
    None,
    "test at each of these global batches (two or more, e.g. 128,1024) and fit the noise "
    "scale (default: the config's batch_size alone)",
    flag_values=values,
  )
  flags.DEFINE_bool("json", False, "print the curves and the fit as JSON", flag_values=values)


def _batch_sizes(text: str | None) -> list[int] | None:
  """`--batch-sizes B1,B2,...` as integers (None: the flag was not given).

  Raises:
    ValueError: naming the flag and what it accepts.
  """
  if text is None:
    return None
  parts = [part.strip() for part in text.split(",")]
  sizes = [int(part) for part in parts if part.isdigit() and int(part) > 0]
  if len(sizes) != len(parts) or len(sizes) < 2 or len(set(sizes)) != len(sizes):
    raise ValueError(
      f"--batch-sizes: must be two or more distinct positive whole numbers separated by "
      f"commas, e.g. 128,1024 (one batch: leave the flag out); got {text!r}"
    )
  return sizes


def _unwritable(out: pathlib.Path) -> str | None:
  """Why the PNG cannot be written at `out` (None: it can), checked before the tests run
  and without creating anything: a refused start leaves the workdir as it was."""
  if out.is_dir():
    return f"--out: {out} is a directory; name a .png file"
  existing = next(p for p in (out.parent.absolute(), *out.parent.absolute().parents) if p.exists())
  if not existing.is_dir() or not os.access(existing, os.W_OK):
    return f"--out: cannot write {out}: {existing} is not a writable directory"
  return None


def _is_main_process() -> bool:
  import jax

  return jax.process_index() == 0


def _report(test, spec, rates, out: pathlib.Path, *, name: str, as_json: bool, log) -> int:
  """Prints the tests (and the fit), draws the PNG; 1 if a suggestion or the fit failed."""
  from bigbatch.measure import lr_find as maths
  from bigbatch.measure import lr_range

  log(lr_range.format_table(test.curves, rates))
  problems = []
  for curve in test.curves:
    try:
      curve.suggestion()
    except ValueError as error:
      problems.append(f"batch {curve.batch_size}: no suggestion: {error}")
  noise = start = None
  if not problems and len(test.curves) > 1:
    try:
      noise = lr_range.fit(test.curves)
      start = lr_range.propose(noise, spec)
    except ValueError as error:
      problems.append(f"cannot fit lr_opt(B) or propose a start: {error}")
    if noise is not None:
      log("\n".join(maths.explain(noise, start)))
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    lr_range.plot(test.curves, str(out), title=f"learning-rate range test: {name}")
  except OSError as error:
    return args.fail(COMMAND, f"--out: cannot write {out}: {error.strerror}")
  log(f"wrote {out}")
  if as_json:
    result = {
      "compiles": test.compiles,
      "curves": [lr_range.curve_dict(curve) for curve in test.curves],
      "fit": None if noise is None else {"lr_max": noise.lr_max, "b_noise": noise.b_noise},
      "proposal": None if start is None else dataclasses.asdict(start),
      "problems": problems,
      "plot": str(out),
    }
    print(json.dumps(result, indent=1))
  for problem in problems:
    print(f"bigbatch {COMMAND}: {problem}", file=sys.stderr)
  return 1 if problems else 0
