"""`bigbatch noise`: a run's batch and measured noise scale against epochs (a language
model's in tokens), and its latest measured B_simple."""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from bigbatch.cli import args


def noise(argv: list[str]) -> int:
  """`bigbatch noise --workdir DIR [--out PNG]`: a run's batch and measured noise scale."""
  from bigbatch.plan import summary
  from bigbatch.workdir import WorkdirError, checkpoint, runlog

  def define(values):
    flags.DEFINE_string("out", None, "the PNG (default: WORKDIR/noise.png)", flag_values=values)

  values = args.parse_workdir_command("noise", argv, define)
  workdir = pathlib.Path(values.workdir)
  metrics = workdir / "metrics.jsonl"
  if not metrics.is_file():
    return args.fail("noise", f"--workdir: {metrics} does not exist: no run has logged there yet")
  try:
    rows = runlog.read_rows(metrics, say=lambda line: print(line, file=sys.stderr))
    plan = _plan(workdir / "checkpoints")
    phases = plan["phases"] if plan else None
    length = (plan or {}).get("tokens_per_example") or _tokens_per_example(rows)
    out = values.out or str(workdir / "noise.png")
    summary.plot_noise(rows, out, phases=phases, title=workdir.name, tokens_per_example=length)
  except (WorkdirError, checkpoint.CheckpointError, ValueError) as error:
    return args.fail("noise", str(error))
  except OSError as error:
    return args.fail("noise", f"--out: cannot write {out}: {error.strerror}")
  print(summary.latest_noise_line(rows, length))
  print(f"wrote {out}")
  return 0


def _tokens_per_example(rows: list[dict]) -> int | None:
  """T of a language model's run, from a row with B_simple in sequences and in tokens
  (None: not a language model, or nothing measured yet)."""
  for row in rows:
    low, tokens = row.get("grad_noise_scale_low"), row.get("grad_noise_scale_low_tokens")
    if low and tokens:
      return round(tokens / low)
  return None


def _plan(directory: pathlib.Path) -> dict | None:
  """The latest checkpoint's plan (None: no checkpoint yet)."""
  from bigbatch.workdir import checkpoint

  if not directory.is_dir():
    return None
  checkpoints = checkpoint.Checkpoints(directory)
  try:
    latest = checkpoints.latest_step()
    if latest is None:
      return None
    return checkpoints.record(latest)["plan"]
  finally:
    checkpoints.close()
