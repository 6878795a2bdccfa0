"""Each phase on the devices it needs: the slice a phase's batch wants, and its device-hours.

A plan that grows its batch 125-fold needs few devices for its first phases and many for
its last. A phase takes its batch / `per_device_batch` devices, rounded up to a slice
size the config allows (`elastic.slice_sizes`); past the largest slice it takes the
largest, each device computing its share as micro-batches of at most `per_device_batch`.
Device-hours come from a step-time model per device, `step_seconds + b x
example_seconds` for a per-device batch b: the fixed part is what a step costs however
few examples it holds (launch, synchronisation), the other grows with the examples.
Against the same plan on the largest slice throughout, a phase on d of D devices saves
`steps x (D - d) x step_seconds` device-seconds and computes the same examples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bigbatch.plan.phases import Plan
from bigbatch.plan.summary import train_seconds

__all__ = [
  "ElasticError",
  "PhaseSlice",
  "StepTime",
  "device_hours_line",
  "format_slices",
  "measured_step_time",
  "per_device_batch",
  "slices",
]


class ElasticError(ValueError):
  """An elastic setting the plan cannot run on; the message names the field."""


@dataclasses.dataclass(frozen=True)
class PhaseSlice:
  """One phase's slice: its devices, each one's share of the batch (as micro-batches of
  at most the per-device batch), and its device-seconds there and on the largest slice
  (None without a step-time model)."""

  phase: int
  batch_size: int
  steps: int
  devices: int
  per_device: int
  micro_batches: int
  device_seconds: float | None
  largest_seconds: float | None


def per_device_batch(given: int | None, max_batch_size: int | None, devices: int) -> int:
  """`elastic.per_device_batch`, or the plan's cap shared by this run's `devices`."""
  if given is not None:
    return given
  if max_batch_size is None or max_batch_size < devices:
    raise ElasticError(
      "elastic.per_device_batch: needed where plan.max_batch_size does not give it "
      "(the examples one device computes at once set each phase's devices)"
    )
  return max_batch_size // devices


def slices(
  plan: Plan,
  sizes: tuple[int, ...],
  per_device_batch: int,
  *,
  example_seconds: float | None = None,
  step_seconds: float = 0.0,
) -> tuple[PhaseSlice, ...]:
  """The slice of each phase of `plan` (phases of no steps left out).

  Args:
    plan: the plan; batches in its unit (examples, or sequences for a language model).
    sizes: the device counts allowed, ascending, each dividing the largest.
    per_device_batch: the examples one device computes at once.
    example_seconds, step_seconds: the step-time model (None: no device-seconds).

  Raises:
    ElasticError: where `per_device_batch` does not divide a phase's batch, or a batch
      does not split evenly over its slice.
  """
  largest, out = sizes[-1], []
  for phase in plan.phases:
    if phase.steps == 0:
      continue
    batch = phase.batch_size
    if batch % per_device_batch:
      raise ElasticError(
        f"elastic.per_device_batch: {per_device_batch:,} does not divide phase "
        f"{phase.index}'s batch of {batch:,}"
      )
    wanted = batch // per_device_batch
    devices = next((size for size in sizes if size >= wanted), largest)
    if batch % devices:
      raise ElasticError(
        f"elastic.slice_sizes: phase {phase.index}'s batch of {batch:,} does not split "
        f"evenly over its slice of {devices} devices"
      )
    share = batch // devices
    out.append(
      PhaseSlice(
        phase=phase.index,
        batch_size=batch,
        steps=phase.steps,
        devices=devices,
        per_device=share,
        micro_batches=math.ceil(share / per_device_batch),
        device_seconds=_seconds(phase.steps, batch, devices, example_seconds, step_seconds),
        largest_seconds=_seconds(phase.steps, batch, largest, example_seconds, step_seconds),
      )
    )
  return tuple(out)


def _seconds(
  steps: int, batch: int, devices: int, example_seconds: float | None, step_seconds: float
) -> float | None:
  """Device-seconds of `steps` steps of `batch` over `devices` by the step-time model."""
  if example_seconds is None:
    return None
  return steps * (step_seconds + batch / devices * example_seconds) * devices


@dataclasses.dataclass(frozen=True)
class StepTime:
  """A step's time on a device, `step_seconds + b x example_seconds` for a per-device
  batch b, and what it rests on (`source`, as the device-hours line says it)."""

  example_seconds: float
  step_seconds: float
  source: str


def measured_step_time(phases: Sequence[Mapping[str, Any]]) -> StepTime | None:
  """The step-time model fitted to a run's phases as its checkpoint records them (batch,
  devices, steps, and seconds less evaluation, checkpoints and waits for compiles).

  Each phase gives a per-device batch b and its mean step time; the line through them is
  fitted by least squares, each phase weighed by its steps. One per-device batch alone
  cannot separate the fixed part, which is then taken as 0 (and said so); a fit whose
  fixed part comes out negative is refitted through 0. None where no phase was timed
  on known devices (a run from before phases recorded them).
  """
  points = []
  for phase in phases:
    devices, steps = phase.get("devices"), phase.get("steps", 0)
    seconds = train_seconds(phase)
    if devices and steps > 0 and seconds > 0:
      points.append((phase["batch_size"] / devices, seconds / steps, steps))
  if not points:
    return None
  weight = sum(w for _, _, w in points)
  mean_b = sum(b * w for b, _, w in points) / weight
  mean_t = sum(t * w for _, t, w in points) / weight
  spread = sum(w * (b - mean_b) ** 2 for b, _, w in points)
  batches = ", ".join(sorted({f"{b:,g}" for b, _, _ in points}, key=float))
  if spread > 0:
    slope = sum(w * (b - mean_b) * (t - mean_t) for b, t, w in points) / spread
    fixed = mean_t - slope * mean_b
    if fixed >= 0 and slope > 0:
      return StepTime(slope, fixed, f"the step times measured at per-device batches {batches}")
  through_zero = sum(w * b * t for b, t, w in points) / sum(w * b * b for b, _, w in points)
  why = "one per-device batch" if spread == 0 else "per-device batches"
  return StepTime(
    through_zero, 0.0, f"the step times measured at {why} {batches} (fixed part taken as 0)"
  )


def device_hours_line(
  parts: tuple[PhaseSlice, ...], largest: int, source: str = "the step-time model"
) -> str:
  """The plan's device-hours against the largest slice throughout, or why not known."""
  if not parts or parts[0].device_seconds is None:
    return (
      "device-hours: not known (set elastic.example_seconds, and elastic.step_seconds, "
      "a step's time on one device)"
    )
  used = sum(p.device_seconds for p in parts) / 3600
  whole = sum(p.largest_seconds for p in parts) / 3600
  saved = 1 - used / whole if whole else 0.0
  return (
    f"device-hours: {used:,.4g} against {whole:,.4g} on {largest} devices throughout "
    f"({saved:.1%} fewer), by {source}"
  )


def format_slices(
  parts: tuple[PhaseSlice, ...],
  sizes: tuple[int, ...],
  per_device: int,
  source: str = "the step-time model",
) -> str:
  """The table `bigbatch plan` prints: each phase's devices, and the device-hours (`source`:
  where the step times come from)."""

  def hours(value: float | None) -> str:
    return "—" if value is None else f"{value / 3600:,.4g}"

  lines = [
    f"elastic: slices of {', '.join(str(s) for s in sizes)} devices, "
    f"{per_device:,} examples a device at once",
    f"{'phase':>5}  {'batch':>9}  {'devices':>7}  {'per device':>10}  {'steps':>7}  "
    f"{'device-h':>9}  {f'on {sizes[-1]}':>9}",
  ]
  for p in parts:
    share = f"{p.per_device:,}" + (f" ({p.micro_batches}x)" if p.micro_batches > 1 else "")
    lines.append(
      f"{p.phase:>5}  {p.batch_size:>9,}  {p.devices:>7}  {share:>10}  {p.steps:>7,}  "
      f"{hours(p.device_seconds):>9}  {hours(p.largest_seconds):>9}"
    )
  lines.append(device_hours_line(parts, sizes[-1], source))
  if any(p.micro_batches > 1 for p in parts):
    lines.append("(Nx): the device's share in N micro-batches (past the largest slice)")
  return "\n".join(lines)
