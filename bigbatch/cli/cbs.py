"""`bigbatch cbs`: the critical batch measured by branching, beside the measured B_simple."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import flags

from bigbatch.cli import args

COMMAND = "cbs"


def _define(values: flags.FlagValues) -> None:
  flags.DEFINE_integer("step", None, "the checkpoint's step to branch from", flag_values=values)
  flags.DEFINE_list(
    "batch-sizes", None, "the branches' batches (tokens for a language model)", flag_values=values
  )
  flags.DEFINE_integer(
    "tokens", None, "each branch's budget (a language model)", flag_values=values
  )
  flags.DEFINE_integer("examples", None, "each branch's budget (other models)", flag_values=values)
  flags.DEFINE_string(
    "tolerance",
    "auto",
    "how much worse than the smallest batch's loss still counts as not losing (auto: 2 sigma "
    "of the final loss, from a repeat of the smallest batch with another data order)",
    flag_values=values,
  )
  flags.DEFINE_bool("json", False, "print the results as JSON", flag_values=values)
  flags.DEFINE_string(
    "out", None, "the figure (default WORKDIR/cbs/step_S/cbs.png)", flag_values=values
  )


def _number(text: str, flag: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise SystemExit(args.fail(COMMAND, f"{flag}: {text!r} is not a whole number")) from None
  if value < 1:
    raise SystemExit(args.fail(COMMAND, f"{flag}: must be positive, got {value}"))
  return value


def _budget(values: Any, length: int | None) -> int:
  """Each branch's budget in examples (sequences for a language model), from the flag of
  the run's clock."""
  if length and values.examples is not None:
    raise SystemExit(args.fail(COMMAND, "--examples: the run is a language model; give --tokens"))
  if not length and values.tokens is not None:
    raise SystemExit(args.fail(COMMAND, "--tokens: only for a language model; give --examples"))
  budget = values.tokens if length else values.examples
  flag = "--tokens" if length else "--examples"
  if budget is None:
    raise SystemExit(args.fail(COMMAND, f"{flag} is required: each branch's budget"))
  if length and budget % length:
    raise SystemExit(args.fail(COMMAND, f"--tokens: {budget:,} is not whole sequences of {length}"))
  return _number(str(budget), flag) // (length or 1)


def _batches(values: Any, length: int | None) -> list[int]:
  given = values["batch-sizes"].value
  if not given:
    raise SystemExit(args.fail(COMMAND, "--batch-sizes is required: B1,B2,..."))
  batches = sorted({_number(b, "--batch-sizes") for b in given})
  if length:
    for batch in batches:
      if batch % length:
        raise SystemExit(
          args.fail(COMMAND, f"--batch-sizes: {batch:,} tokens is not whole sequences of {length}")
        )
    batches = [b // length for b in batches]
  return batches


def _tolerance(text: str) -> float | None:
  if text == "auto":
    return None
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not value >= 0:
    raise SystemExit(args.fail(COMMAND, f"--tolerance: {text!r} is not auto or a number >= 0"))
  return value


def cbs(argv: list[str]) -> int:
  """`bigbatch cbs --workdir DIR --step S --batch-sizes B1,B2,... [--tokens T | --examples E]
  [--tolerance auto|X] [--json] [--out PNG]`."""
  from bigbatch import data, sharding
  from bigbatch import workdir as wd
  from bigbatch.config import ConfigError
  from bigbatch.measure import branches
  from bigbatch.workdir import checkpoint

  values = args.parse_workdir_command(COMMAND, argv, _define)
  if values.step is None:
    return args.fail(COMMAND, "--step is required: the checkpoint's step to branch from")
  known = (branches.BranchError, ConfigError, data.DataError, sharding.ShardingError,
           checkpoint.CheckpointError, wd.WorkdirError)  # fmt: skip
  lock = None
  try:
    parent = branches.open_parent(values.workdir, values.step)
    length = parent.tokens_per_example
    budget, batches = _budget(values, length), _batches(values, length)
    tolerance = _tolerance(values.tolerance)
    _check_budget(budget, batches, length)
    branches.check_batch_sizes(parent, batches, None)
    lock = wd.Lock(parent.workdir)  # no run may train in the workdir meanwhile
    result = _run(parent, batches, budget, tolerance)
  except known as error:
    return args.fail(COMMAND, str(error))
  finally:
    if lock is not None:
      lock.release()
  out = pathlib.Path(values.out) if values.out else parent.root / "cbs.png"
  plot(result, parent, out)
  (parent.root / "cbs.json").write_text(json.dumps(result, indent=1) + "\n")
  if values.json:
    print(json.dumps(result))
  else:
    print(format_cbs(result, parent))
    print(warmup_line(parent))
  return 0


def warmup_line(parent) -> str:
  """The batch warm-up (`plan.strategy=ramp`) built from every step measured so far in
  `WORKDIR/cbs`, as config flags: from each step on, the largest critical batch measured
  up to there (`bigbatch.measure.critical_batch.warmup_ramp`)."""
  from bigbatch.measure.critical_batch import warmup_ramp

  spec, length = parent.spec, parent.tokens_per_example
  measured = []
  for path in sorted((parent.workdir / "cbs").glob("step_*/cbs.json")):
    saved = json.loads(path.read_text())
    if "position_examples" in saved:  # written before positions were recorded: skipped
      measured.append((saved["step"], saved["position_examples"], saved["critical_batch"]))
  measured.sort()
  steps = ", ".join(f"{step:,}" for step, _, _ in measured)
  unit = length or 1
  ramp = warmup_ramp(
    [(position * unit, batch * unit) for _, position, batch in measured],
    spec.batch_size * unit,
    spec.plan.batch_multiple * unit,
  )
  if not ramp:
    first = f"{spec.batch_size * unit:,} {'tokens' if length else 'examples'}"
    return (
      f"warm-up from the critical batches measured at steps {steps}: none, no critical batch "
      f"is above the run's first batch ({first})"
    )
  if length:
    pairs = ",".join(f"({at},{batch})" for at, batch in ramp)
    field = "ramp_tokens"
  else:
    n = spec.dataset.num_train_examples
    pairs = ",".join(f"({at / n:.6g},{batch})" for at, batch in ramp)
    field = "ramp"
  pairs += "," if len(ramp) == 1 else ""
  return (
    f"warm-up from the critical batches measured at steps {steps}: "
    f"--config.plan.strategy=ramp --config.plan.{field}='({pairs})'"
  )


def _check_budget(budget: int, batches: list[int], length: int | None) -> None:
  if budget < max(batches):
    unit = length or 1
    word = "tokens" if length else "examples"
    raise SystemExit(
      args.fail(
        COMMAND,
        f"--{word}: {budget * unit:,} is less than one step of the largest batch "
        f"({max(batches) * unit:,} {word})",
      )
    )


def _run(parent, batches: list[int], budget: int, tolerance: float | None) -> dict[str, Any]:
  from bigbatch.measure import branches
  from bigbatch.measure import critical_batch as cb

  per = parent.tokens_per_example or 1  # a branch's folder is its batch as given: tokens for an LM
  results = []
  for batch in batches:
    spec = branches.branch_spec(parent, batch, budget)
    where = parent.root / str(batch * per)
    print(f"branch {batch * per:,}: {-(-budget // batch):,} steps in {where}")
    results.append(branches.run_branch(parent, spec, where))
  repeat = None
  if tolerance is None:  # a second data order at the smallest batch sizes the noise
    spec = branches.branch_spec(parent, batches[0], budget, repeat=1)
    print(f"branch {batches[0] * per:,} again, another data order: the tolerance")
    repeat = branches.run_branch(parent, spec, parent.root / f"{batches[0] * per}_repeat")
    tolerance = cb.tolerance_from_repeat(results[0].final_loss, repeat.final_loss)
  target = results[0].final_loss
  zhang, steps = cb.zhang_critical_batch(results, target)
  return {
    "workdir": str(parent.workdir),
    "step": parent.step,
    "position_examples": parent.position,
    "run_batch_size": parent.batch_size,
    "budget_examples": budget,
    "tokens_per_example": parent.tokens_per_example,
    "tolerance": tolerance,
    "tolerance_from_repeat": None if repeat is None else repeat.final_loss,
    "branches": [_branch_row(r, *steps[r.batch_size]) for r in results],
    "critical_batch": cb.critical_batch(results, tolerance),
    "zhang_critical_batch": zhang,
    "b_simple": parent.noise_scale(),
  }


def _branch_row(result, steps_to_target, ideal_steps) -> dict[str, Any]:
  return {
    "batch_size": result.batch_size,
    "steps": result.steps,
    "final_loss": result.final_loss,
    "curve": [list(point) for point in result.curve],
    "steps_to_target": steps_to_target,
    "ideal_steps": ideal_steps,
  }


def format_cbs(result: dict[str, Any], parent) -> str:
  from bigbatch.plan.report import batch_text
  from bigbatch.plan.summary import format_noise_scale

  length = result["tokens_per_example"]
  first = result["branches"][0]
  noise = result["b_simple"]
  unit = "tokens" if length else "examples"
  repeat = result["tolerance_from_repeat"]
  how = (
    ""
    if repeat is None
    else f" (auto: 2 sigma, from a repeat of batch {first['batch_size']:,} with another data "
    f"order ending at {repeat:.4f})"
  )
  lines = [
    f"critical batch by branching from step {result['step']:,} of {result['workdir']} (the run's "
    f"batch there: {batch_text(result['run_batch_size'], length)}; measured B_simple "
    f"{format_noise_scale(*noise.values())} {'sequences' if length else 'examples'})",
    f"budget: {result['budget_examples'] * (length or 1):,} {unit} a branch; tolerance "
    f"{result['tolerance']:.4g}{how}",
    "",
  ]
  rows = [("batch", "steps", "held-out loss", f"vs {first['batch_size']:,}", "within",
           "steps to its loss", "ideal")]  # fmt: skip
  for branch in result["branches"]:
    delta = branch["final_loss"] - first["final_loss"]
    reached, ideal = branch["steps_to_target"], branch["ideal_steps"]
    rows.append(
      (
        batch_text(branch["batch_size"], length),
        f"{branch['steps']:,}",
        f"{branch['final_loss']:.4f}",
        f"{delta:+.4f}",
        "yes" if delta <= result["tolerance"] else "no",
        "not reached" if reached is None else f"{reached:,.0f}",
        "—" if ideal is None else f"{ideal:,.0f}",
      )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
  zhang = result["zhang_critical_batch"]
  lines += [
    "",
    f"critical batch (largest within the tolerance of the smallest batch's loss, Merrill et "
    f"al.): {batch_text(result['critical_batch'], length)}",
    "critical batch (steps to the smallest batch's loss within 20% of ideal linear scaling, "
    f"Zhang et al.): {'—' if zhang is None else batch_text(zhang, length)}",
    f"figure: {parent.root / 'cbs.png'}",
  ]
  return "\n".join(lines)


def plot(result: dict[str, Any], parent, path: pathlib.Path) -> None:
  """Each branch's held-out loss against the tokens (examples) it trained."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  per = result["tokens_per_example"] or 1
  figure, axis = plt.subplots(figsize=(6.5, 4))
  for branch in result["branches"]:
    points = [(s * branch["batch_size"] * per, loss) for s, loss in branch["curve"]]
    if points:
      axis.plot(*zip(*points), marker="o", label=f"batch {branch['batch_size'] * per:,}")
  axis.set_xlabel("tokens" if result["tokens_per_example"] else "examples")
  axis.set_ylabel("held-out loss")
  axis.set_title(f"branches from step {result['step']:,}")
  axis.legend(fontsize=8)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
