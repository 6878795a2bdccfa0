"""`bigbatch sharpness`: the Hessian's top eigenvalue and Keskar's ε-sharpness at a checkpoint."""

from __future__ import annotations

import json

from absl import flags

from bigbatch.cli import args


def sharpness(argv: list[str]) -> int:
  """`bigbatch sharpness --workdir DIR [--step N] [--examples 2048] [--epsilon 1e-3]
  [--iterations 50] [--json]`."""
  from bigbatch import data, sharding
  from bigbatch.config import ConfigError
  from bigbatch.measure import sharpness as measure
  from bigbatch.workdir import checkpoint

  def define(values):
    flags.DEFINE_integer(
      "step", None, "the checkpoint's step (default: latest)", flag_values=values
    )
    flags.DEFINE_integer(
      "examples", 2048, "first training examples the loss covers", flag_values=values
    )
    flags.DEFINE_float("epsilon", 1e-3, "Keskar's relative box size", flag_values=values)
    flags.DEFINE_integer(
      "iterations", 50, "power-iteration products and box-ascent steps", flag_values=values
    )
    flags.DEFINE_bool("json", False, "print the results as JSON", flag_values=values)

  values = args.parse_workdir_command("sharpness", argv, define)
  known = (
    measure.SharpnessInputError,
    ConfigError,
    data.DataError,
    sharding.ShardingError,
    checkpoint.CheckpointError,
  )
  try:
    result = measure.at_checkpoint(
      values.workdir,
      step=values.step,
      examples=values.examples,
      epsilon=values.epsilon,
      iterations=values.iterations,
    )
  except known as error:
    return args.fail("sharpness", str(error))
  if values.json:
    print(json.dumps({"workdir": values.workdir, **result}))
  else:
    print(format_sharpness(values.workdir, result))
  return 0


def format_sharpness(workdir: str, result: dict) -> str:
  converged = "converged" if result["converged"] else "not converged: raise --iterations"
  return "\n".join(
    [
      f"sharpness at step {result['step']:,} of {workdir}, over the first "
      f"{result['examples']:,} training examples (loss {result['loss']:.6g})",
      f"  Hessian top eigenvalue  {result['eigenvalue']:.6g}  "
      f"({result['eigen_iterations']} Hessian-vector products, {converged})",
      f"  ε-sharpness (ε={result['epsilon']:g})  {result['sharpness']:.6g} %  "
      f"(largest loss in the box {result['max_loss']:.6g})",
    ]
  )
