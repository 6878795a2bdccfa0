"""Snapshot ensembles (Huang et al. 2017): the model at the end of every cycle.

Huang et al., "Snapshot Ensembles: Train 1, get M for free" (2017), train with
a learning rate that restarts and keep the model at the end of each cycle,
where the rate is lowest and the model sits in a minimum; the models of
successive cycles disagree enough for the mean of their softmax outputs to
beat each of them, at the cost of one training run.

The cycles come from the schedule, in epochs: SGDR (`sgdr`) ends one at each
restart; Smith's cyclical rates (`triangular`, `triangular2`, `exp_range`)
are lowest at every second corner of their triangle wave (epochs 2s, 4s, ...).
The end of training ends the last cycle, whole or not. A cycle that ends at
epoch E is kept at the first step whose data position reaches `round(E N)`
examples: the state after the cycle's last update (with SGDR, a phase
boundary, since the planner cuts phases at restarts). Positions, not steps,
so that a plan whose batch changes, or an adaptive one, keeps the same cycles.

Snapshots live in WORKDIR/snapshots, apart from the rolling checkpoints and
never deleted: each holds the parameters and batch-norm statistics, checked
by the same checksums as a checkpoint, and a record (step, epoch, cycle, the
config). A snapshot is written synchronously, before the checkpoint of its
step, so a checkpoint at step S implies that every snapshot up to S is on
disk; a run killed anywhere and resumed recomputes the same steps bit for bit
and skips a snapshot that already exists, so it keeps the same snapshots.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from bigbatch.schedules import CYCLICAL_MODES, Cyclical, Schedule, WarmRestarts, Warmup
from bigbatch.spec.fields import ConfigError
from bigbatch.workdir import checkpoint as ckpt

# `snapshots` config field: auto keeps them when the schedule restarts.
MODES = ("auto", "on", "off")
RESTARTING = ("sgdr", *CYCLICAL_MODES)


def cycle_end_epochs(schedule: Schedule, epochs: float) -> tuple[float, ...]:
  """The epochs where the cycles of a restarting schedule end (empty: it does not restart).

  The last is the end of training, which ends the last cycle.
  """
  inner = schedule.inner if isinstance(schedule, Warmup) else schedule
  if isinstance(inner, WarmRestarts):
    ends = inner.breakpoints()
  elif isinstance(inner, Cyclical):
    ends = inner.knots()[2::2]  # troughs: the knots alternate trough (even) and peak
  else:
    return ()
  return (*(end for end in ends if 0.0 < end < epochs), float(epochs))


def snapshot_epochs(spec: Any, schedule: Schedule) -> tuple[float, ...]:
  """The epochs where a run of `spec` (a `RunSpec`) keeps a snapshot (empty: none);
  `schedule` is its baseline schedule (`train.build.schedule_of(spec)`).

  Raises:
    ConfigError: naming `snapshots` (`on` with a schedule that does not restart), or
      the schedule's field.
  """
  if spec.snapshots == "off":
    return ()
  ends = cycle_end_epochs(schedule, spec.num_epochs)
  if not ends and spec.snapshots == "on":
    raise ConfigError(
      f"snapshots: 'on' needs a restarting schedule.name ({', '.join(RESTARTING)}), "
      f"got {spec.schedule.name!r}"
    )
  return ends


def open_store(directory: str | pathlib.Path) -> ckpt.Checkpoints:
  """The snapshots of a workdir (`WORKDIR/snapshots`): every one kept, saved synchronously."""
  return ckpt.Checkpoints(directory, keep=None, async_save=False)


class Keeper:
  """Keeps a run's snapshots as it trains.

  Args:
    directory: `WORKDIR/snapshots` (created at the first snapshot).
    end_epochs: `snapshot_epochs` of the config.
    dataset_size: training examples `N`.
    config: the run's resolved spec (`RunSpec.to_dict()`), written into every snapshot's record.
  """

  def __init__(
    self, directory: pathlib.Path, end_epochs: Sequence[float], dataset_size: int, config
  ):
    self.directory = directory
    self.end_epochs = tuple(end_epochs)
    self.ends = tuple(round(epoch * dataset_size) for epoch in self.end_epochs)
    self.dataset_size = dataset_size
    self._config = dict(config)  # the run's resolved spec (`RunSpec.to_dict`)
    self._store: ckpt.Checkpoints | None = None

  def due(self, before: int, after: int) -> int | None:
    """The cycle (from 1) whose end lies in data positions (before, after], if any."""
    crossed = [i for i, end in enumerate(self.ends) if before < end <= after]
    return crossed[-1] + 1 if crossed else None

  def save(self, state, step: int, position: int, cycle: int) -> None:
    """Writes the snapshot of `cycle` at `step` (no-op if it exists); returns once on disk."""
    if self._store is None:
      self._store = open_store(self.directory)
    record = {
      "step": step,
      "position": position,
      "epoch": position / self.dataset_size,
      "cycle": cycle,
      "cycle_end_epoch": self.end_epochs[cycle - 1],
      "config": self._config,
    }
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    self._store.save(step, variables, record, fault="snapshot")
    self._store.wait()

  def close(self) -> None:
    if self._store is not None:
      self._store.close()
