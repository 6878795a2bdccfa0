"""A plan for people: the phase table beside the baseline's, a picture, the batch arithmetic."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bigbatch.plan import adam_rules, noise
from bigbatch.plan.phases import Phase, Plan


def _number(value: float) -> str:
  return f"{value:.4g}"


def _changing(start: float, end: float) -> str:
  if np.isclose(start, end, rtol=1e-6, atol=0.0):
    return _number(start)
  return f"{_number(start)}→{_number(end)}"


def _phase_values(fn, steps: int, points: int) -> np.ndarray:
  """`fn` (of the step within a phase) at `points` steps spread over the phase."""
  at = np.unique(np.linspace(0, max(steps - 1, 0), min(points, max(steps, 1))).round())
  return np.broadcast_to(np.asarray(fn(at.astype(int)), np.float64), at.shape)


def _learning_rate_cell(plan: Plan, phase: Phase) -> str:
  """The phase's learning rate: first→last, or for a cycle inside the phase its range and
  the cycle's length (first→last would hide it)."""
  cycle = plan.baseline_schedule.period_epochs
  if cycle is not None and phase.end_epoch - phase.start_epoch > cycle / 2:
    values = _phase_values(phase.learning_rate_fn, phase.steps, 1_000_000)  # every step
    low, high = float(values.min()), float(values.max())
    if not np.isclose(low, high, rtol=1e-6, atol=0.0):
      return f"{_number(low)}–{_number(high)}, cycle {cycle:g} ep"
  return _changing(phase.learning_rate, phase.final_learning_rate)


def saving_words(plan: Plan) -> str:
  """The plan's updates against the baseline's, in words that fit the case."""
  if plan.total_steps == plan.baseline_total_steps:
    return "as many as the baseline"
  if plan.total_steps < plan.baseline_total_steps:
    return f"{plan.saving:.2f}x fewer than the baseline"
  return f"{1 / plan.saving:.2f}x more than the baseline"


def _epochs(plan: Plan, phase: Phase) -> str:
  """The phase's span: epochs, or tokens for a language model (its clock)."""
  if plan.tokens_per_example:
    per_epoch = plan.dataset_size * plan.tokens_per_example
    return (
      f"{tokens_text(phase.start_epoch * per_epoch)}–{tokens_text(phase.end_epoch * per_epoch)}"
    )
  return f"{phase.start_epoch:g}–{phase.end_epoch:g}"


def tokens_text(tokens: float) -> str:
  """A count of tokens, short: 1.5M, 262k, 900."""
  tokens = round(tokens)  # a count of tokens, whatever the epochs' float arithmetic left
  for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if abs(tokens) >= size:
      return f"{tokens / size:.4g}{unit}"
  return f"{tokens:.4g}"


def batch_text(batch: int, tokens_per_example: int | None) -> str:
  """A batch: examples, or for a language model sequences x length = tokens."""
  if tokens_per_example:
    return f"{batch:,}×{tokens_per_example:,}={batch * tokens_per_example:,}"
  return f"{batch:,}"


PLAN_HEADER = (
  "phase",
  "epochs",
  "batch",
  "lr",
  "momentum",
  "noise",
  "Δnoise",
  "steps",
  "│",
  "base batch",
  "base lr",
  "base noise",
  "base steps",
)


def _betas(plan: Plan) -> bool:
  """Whether the table shows b2 and eps: an Adam rule, for an optimizer that holds them
  (LARS, Lion and Muon have an adaptive family's rule, and neither)."""
  return plan.adam_rule is not None and plan.phases[0].b2 is not None


def _header(plan: Plan, accumulating: bool) -> tuple[str, ...]:
  header = list(PLAN_HEADER)
  if plan.tokens_per_example:
    header[1:3] = ["tokens", "batch (seq×len=tokens)"]
  if _betas(plan):  # Adam's b1, b2 and eps, as the rule moves them
    header[4:5] = ["β1", "β2", "ε"]
  if accumulating:
    header.insert(3, "micro")
  return tuple(header)


def _plan_rows(plan: Plan, accumulating: bool) -> list[tuple[str, ...]]:
  """The phase table's header and one row a phase, as text cells."""
  rows = [_header(plan, accumulating)]
  tokens = plan.tokens_per_example
  for p in plan.phases:
    micro = (f"{p.micro_batches}",) if accumulating else ()
    adam = (f"{p.b2:.6g}", f"{p.eps:.3g}") if _betas(plan) else ()
    rows.append(
      (
        str(p.index),
        _epochs(plan, p),
        batch_text(p.batch_size, tokens),
        *micro,
        _learning_rate_cell(plan, p),
        _changing(p.momentum, p.final_momentum),
        *adam,
        _number(p.noise_scale),
        f"{p.noise_deviation:+.1%}",
        f"{p.steps:,}",
        "│",
        batch_text(plan.baseline_batch_size, tokens),
        _number(p.baseline_learning_rate),
        _number(p.baseline_noise_scale),
        f"{p.baseline_steps:,}",
      )
    )
  return rows


def _plan_footer(plan: Plan, accumulating: bool) -> list[str]:
  """The lines under the phase table: the updates saved, and what accumulation costs."""
  if plan.total_steps == plan.baseline_total_steps:
    updates = f"updates: {plan.total_steps:,}, as many as the baseline (none saved)"
  else:
    words = saving_words(plan).removesuffix(" than the baseline")
    updates = (
      f"updates: {plan.total_steps:,} vs {plan.baseline_total_steps:,} for the baseline ({words})"
    )
  lines = [f"{updates}; batch sizes: " + ", ".join(f"{b:,}" for b in plan.batch_sizes)]
  if accumulating:
    passes = sum(p.steps * p.micro_batches for p in plan.phases)
    lines.append(
      f"accumulation: micro = micro-batches of at most "
      f"{batch_text(plan.max_batch_size, plan.tokens_per_example)} per update; "
      f"{plan.total_steps:,} updates take {passes:,} micro-batch passes "
      f"(the same examples; {plan.baseline_total_steps / plan.total_steps:.2f}x fewer updates, "
      f"up to {max(p.micro_batches for p in plan.phases)}x the compute per update)"
    )
  return lines + _end_note(plan)


def _end_note(plan: Plan) -> list[str]:
  """Where the plan ends, where that is not its budget: by how much, and what one step
  more or fewer would give (the last phase ends at the whole step nearest the baseline's
  end: `phases.steps_to_end`)."""
  n, length = plan.dataset_size, plan.tokens_per_example
  budget, end = round(plan.epochs * n), plan.examples_before(plan.total_steps)
  if end == budget:
    return []

  def amount(examples: int) -> str:
    return f"{examples * (length or 1):,}"

  unit = "tokens" if length else "examples"
  where = f"{tokens_text(end * length)} tokens" if length else f"epoch {end / n:.6g}"
  over, batch, b0 = end - budget, plan.phases[-1].batch_size, plan.baseline_batch_size
  side = "past" if over > 0 else "short of"
  line = (
    f"end: {where}, {amount(abs(over))} {unit} {side} the budget "
    f"({amount(end)} of {amount(budget)})"
  )
  if end == -(-budget // b0) * b0:
    return [f"{line}, as the baseline's last step"]
  if over > 0:
    return [
      f"{line}: the last step of {amount(batch)} holds {amount(over)} more than remained; "
      f"one fewer would end {amount(batch - over)} short"
    ]
  return [f"{line}: one more step of {amount(batch)} would pass it by {amount(batch + over)}"]


def format_plan(plan: Plan) -> str:
  """The phase table with the baseline's batch, lr, noise and steps beside it."""
  accumulating = plan.strategy == "accumulate"
  rows = _plan_rows(plan, accumulating)
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  left = {i for i, name in enumerate(rows[0]) if name in _LEFT}
  lines = [
    "  ".join(
      cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
    ).rstrip()
    for row in rows
  ]
  lines.insert(1, "─" * len(lines[0]))
  cap = (
    f", cap {batch_text(plan.max_batch_size, plan.tokens_per_example)}"
    if plan.max_batch_size is not None
    else ""
  )
  return "\n".join([_title(plan, cap), "", *lines, "", *_plan_footer(plan, accumulating),
                    *_notes(plan)])  # fmt: skip


_LEFT = ("epochs", "tokens", "lr", "momentum", "β1", "│")  # left-aligned columns


def _title(plan: Plan, cap: str) -> str:
  if plan.tokens_per_example:
    per_epoch = plan.dataset_size * plan.tokens_per_example
    size = (
      f"N = {plan.dataset_size:,} sequences × {plan.tokens_per_example:,} = "
      f"{tokens_text(per_epoch)} tokens, {tokens_text(plan.epochs * per_epoch)} tokens "
      f"({plan.epochs:.3g} epochs)"
    )
  else:
    size = f"N = {plan.dataset_size:,}, {plan.epochs:g} epochs"
  return f"plan: {plan.strategy} (noise rule {plan.noise_rule}{cap}), {size}"


def _notes(plan: Plan) -> list[str]:
  """What the noise columns hold, and the Adam rule the phases follow."""
  rule = adam_rules.rule(plan.adam_rule)
  if rule.lr_power == 1.0:
    notes = ["noise = lr (N/B - 1) / (1 - m) at each phase's first step; Δnoise vs the baseline"]
  else:
    notes = [
      "noise = lr sqrt(N/B - 1) / (1 - m) at each phase's first step (lr^2/B, the quantity "
      "the square-root rules hold); Δnoise vs the baseline"
    ]
  if plan.adam_rule is not None:
    notes.append(rule.describe())
    clipped = [p.index for p in plan.phases if p.momentum == 0.0 or p.b2 == 0.0]
    if rule.name == "sde" and clipped:
      notes.append(
        f"sde: k (1 - b) passed 1 in phase(s) {', '.join(map(str, clipped))}: the beta is "
        "clipped at 0 (the SDE holds only for k (1 - b) small)"
      )
  return notes


def _plan_curves(plan: Plan, points: int = 64):
  """Epochs, learning rate, batch size and noise scale along the plan's steps.

  A cyclical schedule gets 64 points a cycle, so that the drawing shows each.
  """
  epochs, lrs, batches, noises = [], [], [], []
  n = plan.dataset_size
  cycle = plan.baseline_schedule.period_epochs
  for p in plan.phases:
    count = points
    if cycle is not None:
      count = max(points, round(64 * (p.end_epoch - p.start_epoch) / cycle))
    steps = np.unique(np.linspace(0, p.steps - 1, min(count, p.steps)).round().astype(int))
    lr = np.broadcast_to(np.asarray(p.learning_rate_fn(steps), np.float64), steps.shape)
    mom = np.broadcast_to(np.asarray(p.momentum_fn(steps), np.float64), steps.shape)
    epochs.append((p.first_example + steps * p.batch_size) / n)
    lrs.append(lr)
    batches.append(np.full(steps.shape, p.batch_size))
    noises.append(lr * noise.batch_noise_factor(n, p.batch_size) / (1.0 - mom))
  return [np.concatenate(c) for c in (epochs, lrs, batches, noises)]


def _baseline_curves(plan: Plan, points: int = 2000):
  epochs = np.linspace(0.0, plan.epochs, points, endpoint=False)
  lr, mom = plan.baseline_at(epochs)
  batch = plan.baseline_batch_size
  g = lr * noise.batch_noise_factor(plan.dataset_size, batch) / (1.0 - mom)
  return epochs, lr, np.full(epochs.shape, batch), g


def plot_plan(plan: Plan, path: str) -> None:
  """Draws learning rate, batch size and noise scale against epochs to a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
  plan_curves, base_curves = _plan_curves(plan), _baseline_curves(plan)
  titles = ("learning rate", "batch size", "noise scale  lr (N/B - 1) / (1 - m)")
  for axis, title, ours, theirs in zip(axes, titles, plan_curves[1:], base_curves[1:]):
    axis.plot(base_curves[0], theirs, "--", color="0.5", label="baseline (decay_lr)")
    axis.plot(plan_curves[0], ours, drawstyle="steps-post", color="C0", label=plan.strategy)
    if np.all(ours > 0) and np.all(theirs > 0):
      axis.set_yscale("log")
    axis.set_ylabel(title)
    axis.grid(True, which="both", alpha=0.3)
  batches = sorted({plan.baseline_batch_size, *plan.batch_sizes})
  axes[1].set_yticks(batches, [f"{b:,}" for b in batches])
  axes[1].minorticks_off()
  for phase in plan.phases[1:]:
    for axis in axes:
      axis.axvline(phase.start_epoch, color="0.85", linewidth=0.8, zorder=0)
  axes[0].legend(loc="best")
  axes[-1].set_xlabel("epoch")
  fig.suptitle(f"{plan.strategy}: {plan.total_steps:,} updates, {saving_words(plan)}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_batch_arithmetic(
  plan: Plan, *, devices: int, processes: int, platform: str, mesh_shape: Any, ghost: Any
) -> str:
  """The batch arithmetic a user checks first: global / per-host / per-device, steps/epoch
  (for a language model each in sequences x length = tokens)."""
  length = plan.tokens_per_example
  rows = [("phase", "global batch", "per host", "per device", "steps/epoch", "steps")]
  for phase in plan.phases:
    rows.append(
      (
        f"{phase.index}",
        batch_text(phase.batch_size, length),
        batch_text(phase.batch_size // processes, length),
        batch_text(phase.batch_size // devices, length),
        f"{plan.dataset_size / phase.batch_size:,.1f}",
        f"{phase.steps:,}",
      )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  first = (
    # `devices` is the data-parallel ones; a tensor axis's devices share their examples
    f"devices: {math.prod(dict(mesh_shape).values())} ({platform}) in {processes} "
    f"process(es); mesh {dict(mesh_shape)}; "
    + (
      ghost  # the words of `train.build.batch_norm_use`
      if isinstance(ghost, str)
      else f"ghost batch {ghost}"
      if ghost
      else "no ghost batch: batch norm, if any, over the whole batch"
    )
  )
  return "\n".join([first, *("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)])
