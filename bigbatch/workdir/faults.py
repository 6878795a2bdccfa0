"""Named fault points, so that tests can kill a run at an exact moment.

A run's promises (exact resume, every metric logged once, the previous
checkpoints kept) must hold wherever a process dies. Killing it after a
random delay finds most moments, but never reliably "inside the save at step
40" or "between the final evaluation and the final checkpoint". The trainer
therefore calls `point(name, step)` at the moments that matter, and the
environment variable `BIGBATCH_FAULT=NAME@STEP` (or `NAME` for any step)
makes the process SIGKILL itself there, as a preempted or crashed host would
die: no handler, no cleanup, no flush. Unset (always, outside tests), a point
costs one comparison.

Points: `startup` (workdir locked, nothing restored), `step` (after an
update is dispatched), `save` (a checkpoint save issued and still being
written in the background), `decision` (an adaptive strategy decided and
switched, the checkpoint of the decision not saved), `snapshot` (a cycle's
snapshot saved, the checkpoint of its step not yet), `final_eval` (the final
evaluation logged, the final checkpoint not saved), `summary` (the final
checkpoint saved, `summary.json` not written).
"""

from __future__ import annotations

import os
import signal

POINTS = ("startup", "step", "save", "decision", "snapshot", "final_eval", "summary")
ENV = "BIGBATCH_FAULT"


def _parse(spec: str | None) -> tuple[str, int | None] | None:
  if not spec:
    return None
  name, _, step = spec.partition("@")
  if name not in POINTS:
    raise ValueError(f"{ENV}: {name!r} is not one of {', '.join(POINTS)}")
  return name, int(step) if step else None


_ARMED = _parse(os.environ.get(ENV))


def point(name: str, step: int | None = None) -> None:
  """Dies here (SIGKILL) if `BIGBATCH_FAULT` names this point (and step)."""
  if _ARMED is None or _ARMED[0] != name:
    return
  if _ARMED[1] is None or _ARMED[1] == step:
    os.kill(os.getpid(), signal.SIGKILL)
