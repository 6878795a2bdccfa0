"""The run's time and steps per phase, summed over every process that ran it.

A checkpoint carries the totals up to its step (`elapsed` in its record), so
the summary of a run describes the whole run across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bigbatch import step as st
from bigbatch.plan.phases import Plan

# per-phase values a checkpoint carries besides the times
_NOTES = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")
# seconds of a phase spent outside its train steps (part of its `seconds`)
_SPENT = ("eval_seconds", "checkpoint_seconds", "compile_wait_seconds")


class Clock:
  """The run's time and steps per phase, summed over every process that ran it.

  The totals up to a checkpoint travel in its record (`elapsed`); a resumed
  run starts from them. Time spent after the last checkpoint by a process that
  died is not counted: that work is done again and counted then.
  """

  def __init__(
    self,
    plan: Plan,
    elapsed: Mapping[str, Any] | None,
    timer: Callable[[], float] | None = None,
    devices: int | None = None,
  ):
    elapsed = elapsed or {}
    self.devices = devices  # this session's data-parallel devices, recorded with each phase
    self.now = timer or time.perf_counter  # every time the loop measures is read from it
    self.started = self.now()
    self.sessions = int(elapsed.get("sessions", 0)) + 1
    self._wall = float(elapsed.get("wall_seconds", 0.0))
    # by phase index: the plan's phases, and any an adaptive run decided before
    self._base: dict[int, dict[str, Any]] = {}
    for phase in plan.phases:
      self._entry(phase.index, phase.batch_size)
    for saved in elapsed.get("phases", []):
      entry = self._entry(int(saved["phase"]), int(saved["batch_size"]))
      for key in ("steps", "seconds", "compile_seconds", "devices", *_SPENT, *_NOTES):
        if key in saved:
          entry[key] = saved[key]
    self._session: dict[int, dict[str, float]] = {}
    self._current: tuple[int, int, float] | None = None  # phase, first step, start time
    self._notes: dict[int, dict[str, float]] = {}
    self._spent: dict[int, dict[str, float]] = {}  # this session's, by phase

  def _entry(self, phase: int, batch_size: int) -> dict[str, Any]:
    empty = {"steps": 0, "seconds": 0.0, "compile_seconds": 0.0, **dict.fromkeys(_SPENT, 0.0)}
    return self._base.setdefault(phase, {"phase": phase, "batch_size": batch_size, **empty})

  def note(self, phase: int, key: str, value: float) -> None:
    """Records a value of a phase (the latest wins), kept in the totals across restarts."""
    self._notes.setdefault(phase, {})[key] = value

  def spend(self, phase: int, key: str, seconds: float) -> None:
    """Adds `seconds` of a phase spent on `key`, one of `_SPENT`: evaluation, checkpoints,
    and waiting for the phase's step to compile (in the foreground, or the rest of a
    background compile).

    A phase's `seconds` hold everything spent for it, and its training rate is
    its steps over `seconds` less these. Time spent while the phase's clock
    runs is in its `seconds` already; time spent for it after its clock has
    stopped (the final evaluation and checkpoint, the save after a stop) is
    added to them here, so that it is subtracted only where it was counted.
    """
    spent = self._spent.setdefault(phase, dict.fromkeys(_SPENT, 0.0))
    spent[key] += seconds
    if self._current is None or self._current[0] != phase:
      session = self._session.setdefault(phase, {"steps": 0, "seconds": 0.0})
      session["seconds"] += seconds

  def start_phase(self, phase: int, step: int, batch_size: int) -> None:
    entry = self._entry(phase, batch_size)
    if self.devices is not None:  # the devices its steps ran on (an elastic run moves)
      entry["devices"] = self.devices
    self._current = (phase, step, self.now())

  def end_phase(self, step: int) -> None:
    phase, first, started = self._current
    session = self._session.setdefault(phase, {"steps": 0, "seconds": 0.0})
    session["steps"] += step - first
    session["seconds"] += self.now() - started
    self._current = None

  def totals(self, step: int, compiles: Sequence[st.CompileRecord] = ()) -> dict[str, Any]:
    """Sessions, wall seconds and per-phase steps, seconds and compile seconds up to `step`."""
    first_phase_of: dict[int, int] = {}
    for index in sorted(self._base):
      first_phase_of.setdefault(self._base[index]["batch_size"], index)
    compile_seconds: dict[int, float] = {}
    for record in compiles:  # a batch size compiles once, for the first phase that has it
      if record.batch_size in first_phase_of:  # (a prefetched batch no phase has yet waits)
        index = first_phase_of[record.batch_size]
        compile_seconds[index] = compile_seconds.get(index, 0.0) + record.seconds
    session = {index: dict(entry) for index, entry in self._session.items()}
    if self._current is not None:  # the phase in progress, up to `step`
      phase, first, started = self._current
      now = session.setdefault(phase, {"steps": 0, "seconds": 0.0})
      now["steps"] += step - first
      now["seconds"] += self.now() - started
    phases = []
    for index in sorted(self._base):
      base, now = self._base[index], session.get(index, {"steps": 0, "seconds": 0.0})
      spent = self._spent.get(index, {})
      phases.append(
        {
          **base,
          "steps": base["steps"] + now["steps"],
          "seconds": base["seconds"] + now["seconds"],
          "compile_seconds": base["compile_seconds"] + compile_seconds.get(index, 0.0),
          **{key: base.get(key, 0.0) + spent.get(key, 0.0) for key in _SPENT},
          **self._notes.get(index, {}),
        }
      )
    wall = self._wall + self.now() - self.started
    return {"sessions": self.sessions, "wall_seconds": wall, "phases": phases}
