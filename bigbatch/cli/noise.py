"""`bigbatch noise`: a run's batch and measured noise scale against epochs."""

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
    phases = _planned_phases(workdir / "checkpoints")
    out = values.out or str(workdir / "noise.png")
    summary.plot_noise(rows, out, phases=phases, title=workdir.name)
  except (WorkdirError, checkpoint.CheckpointError, ValueError) as error:
    return args.fail("noise", str(error))
  except OSError as error:
    return args.fail("noise", f"--out: cannot write {out}: {error.strerror}")
  print(f"wrote {out}")
  return 0


def _planned_phases(directory: pathlib.Path) -> list[dict] | None:
  """The phases of the latest checkpoint's plan (None: no checkpoint yet)."""
  from bigbatch.workdir import checkpoint

  if not directory.is_dir():
    return None
  checkpoints = checkpoint.Checkpoints(directory)
  try:
    latest = checkpoints.latest_step()
    if latest is None:
      return None
    return checkpoints.record(latest)["plan"]["phases"]
  finally:
    checkpoints.close()
