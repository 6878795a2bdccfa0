"""A run for people: the summary at its end, and its measured noise scale drawn.

`bigbatch train` prints `format_summary` when a run ends; `bigbatch noise`
draws `plot_noise`. The plan itself is `bigbatch.plan.report`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bigbatch.plan.report import batch_text


def significant(value: float, digits: int = 3) -> str:
  """`value` to `digits` significant digits, with thousands separators: 0.417, 51.2, 1,190."""
  if value == 0 or not math.isfinite(value):
    return f"{value:,.0f}"
  decimals = digits - 1 - math.floor(math.log10(abs(value)))
  if abs(round(value, decimals)) >= 10.0 ** (digits - decimals):  # 99.96 rounds up to 100
    decimals -= 1
  return f"{round(value, decimals):,.{max(decimals, 0)}f}"


def format_noise_scale(
  value: float | None,
  low: float | None,
  high: float | None,
  tokens_per_example: int | None = None,
) -> str:
  """B_simple as a reader should see it: the estimate with its interval, a lower bound
  (`> L`: |G|^2 not resolved), or `—` (nothing known).

  With `tokens_per_example` (T, a language model's), in tokens to 3 significant
  digits, with the sequences of T beside it: `51.2 [6.40, 154] (0.400 seq)`. A
  language model's B_simple is often under one sequence, which whole sequences
  would show as 0.
  """
  if low is None:
    return "—"
  if tokens_per_example:
    return _in_tokens(value, low, high, tokens_per_example)
  if high is None:
    return f"> {low:,.0f}"
  if value is None:  # |G|^2 resolved but tr(S) not: only the upper bound says something
    return f"< {high:,.0f}"
  return f"{value:,.0f} [{low:,.0f}, {high:,.0f}]"


def _in_tokens(value: float | None, low: float, high: float | None, length: int) -> str:
  def tokens(x: float) -> str:
    return significant(x * length)

  if high is None:
    return f"> {tokens(low)} ({significant(low)} seq)"
  if value is None:
    return f"< {tokens(high)} ({significant(high)} seq)"
  return f"{tokens(value)} [{tokens(low)}, {tokens(high)}] ({significant(value)} seq)"


def train_seconds(phase: Mapping[str, Any]) -> float:
  """A phase's seconds in its train steps: its seconds (as the clock records them) less
  evaluations, checkpoints and the wait for its step to compile."""
  spent = ("eval_seconds", "checkpoint_seconds", "compile_wait_seconds")
  return phase.get("seconds", 0.0) - sum(phase.get(k, 0.0) for k in spent)


def _phase_examples_per_second(phase: Mapping[str, Any]) -> float | None:
  """Training examples per second over `train_seconds` (None where nothing is left to
  time)."""
  seconds = train_seconds(phase)
  if phase["steps"] < 2 or seconds <= 1e-3:
    return None
  return phase["steps"] * phase["batch_size"] / seconds


def _rate_cells(phase: Mapping[str, Any], throughput: Mapping[str, Any] | None) -> tuple:
  """The phase's rate: examples/s, or for a language model tokens/s and MFU (`—`:
  not timed, or MFU not known: no peak for the device, or no FLOPs for the model)."""
  rate = _phase_examples_per_second(phase)
  if not throughput:
    return ("—" if rate is None else f"{rate:,.0f}",)
  length, per_token, peak = (
    throughput.get(k) for k in ("tokens_per_example", "flops_per_token", "peak_flops")
  )
  if rate is None:
    return ("—", "—")
  mfu = f"{rate * length * per_token / peak:.1%}" if per_token and peak else "—"
  return (f"{rate * length:,.0f}", mfu)


def _final_line(summary: Mapping[str, Any]) -> list[str]:
  if summary.get("throughput") and summary.get("final_test_loss") is not None:
    extras = [
      f"{name} {summary[key]:{form}}"
      for name, key, form in (
        ("perplexity", "final_test_perplexity", ".3f"),
        ("bits per byte", "final_test_bits_per_byte", ".4f"),
      )
      if summary.get(key) is not None
    ]
    return [", ".join([f"final held-out loss {summary['final_test_loss']:.4f}", *extras])]
  if summary.get("final_test_accuracy") is not None:
    return [
      f"final test accuracy {summary['final_test_accuracy']:.4f}, "
      f"test loss {summary['final_test_loss']:.4f}"
    ]
  return []


def format_summary(summary: Mapping[str, Any]) -> str:
  """The end-of-run summary as a few lines of text."""
  sessions = summary.get("sessions", 1)
  lines = [
    f"{summary['status']} at step {summary['step']:,} of {summary['updates']:,} "
    f"(baseline {summary['baseline_updates']:,}); wall time {summary['wall_seconds']:.1f} s"
    + (f" over {sessions} starts" if sessions > 1 else ""),
    *_final_line(summary),
  ]
  throughput = summary.get("throughput")
  length = throughput.get("tokens_per_example") if throughput else None
  measured = any("grad_noise_scale_low" in phase for phase in summary["phases"])
  rates = ("train tok/s", "MFU") if throughput else ("train ex/s",)
  header = ("phase", "batch", "steps", "seconds", *rates, "eval s", "ckpt s", "compile s")
  rows = [header + ((f"B_simple{' (tokens)' if length else ''}",) if measured else ())]
  for phase in summary["phases"]:
    noise = (
      format_noise_scale(*(phase.get(k) for k in _NOISE_KEYS), length)
      if "grad_noise_scale_low" in phase
      else "—"
    )
    rows.append(
      (
        str(phase["phase"]),
        batch_text(phase["batch_size"], length),
        f"{phase['steps']:,}",
        f"{phase['seconds']:.1f}",
        *_rate_cells(phase, throughput),
        f"{phase.get('eval_seconds', 0.0):.1f}",
        f"{phase.get('checkpoint_seconds', 0.0):.1f}",
        f"{phase['compile_seconds']:.2f}",
        *((noise,) if measured else ()),
      )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  lines += _summary_notes(summary, throughput, measured, length)
  return "\n".join(lines)


def _summary_notes(summary, throughput, measured: bool, length: int | None) -> list[str]:
  unit = "tokens" if throughput else "examples"
  lines = [
    f"train {'tok' if throughput else 'ex'}/s: {unit} over the phase's seconds less its evaluations (eval s), "
    "checkpoints (ckpt s) and the wait for its step to compile"
  ]
  if throughput:
    lines.append(
      "MFU: the model's training FLOPs (6N + 12 L d T per token) over the devices' dense "
      "peak; —: not known (no peak for the device, or no FLOP count for the model)"
    )
  if not measured and summary.get("noise_unmeasured"):
    lines.append(f"B_simple: not measured: {summary['noise_unmeasured']}")
  if measured:
    level = f"{summary.get('noise_confidence', 0.95):.0%}"
    lines.append(
      f"B_simple: the measured gradient noise scale tr(S) / |G|^2 at the phase's end, with "
      f"its {level} interval; > L: |G|^2 not resolved, so B_simple is at least L; —: not "
      "known (tr(S) not resolved, or under 2 steps' estimates in the smoothing horizon)"
      + (f"; in tokens, and in sequences of {length:,} (seq)" if length else "")
    )
    every = summary.get("noise_every", 1)
    if every > 1:
      lines.append(
        f"B_simple: measured on one step in {every} where measuring cuts the batch in "
        "halves (one device, no accumulation; noise.every)"
      )
  return lines


_NOISE_KEYS = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")


def latest_noise_line(rows: list[Mapping[str, Any]], tokens_per_example: int | None) -> str:
  """The last measured B_simple of a run's rows, as one line (in tokens for a language
  model, with the sequences beside it)."""
  if not any("grad_noise_scale_low" in r for r in rows):
    return "B_simple: not measured by this run"
  measured = [r for r in rows if r.get("grad_noise_scale_low") is not None]
  if not measured:
    return "B_simple: not known yet (|G|² not resolved at any logged step)"
  row = measured[-1]
  cell = format_noise_scale(*(row.get(k) for k in _NOISE_KEYS), tokens_per_example)
  if tokens_per_example:
    return f"B_simple at step {row['step']:,}: {cell} tokens ({tokens_per_example:,} a sequence)"
  return f"B_simple at step {row['step']:,}: {cell} examples"


def plot_noise(
  rows: list[Mapping[str, Any]],
  path: str,
  *,
  phases: list[Mapping[str, Any]] | None = None,
  title: str = "",
  tokens_per_example: int | None = None,
) -> None:
  """Draws a run's batch, measured B_simple and planned noise scale against epochs to a PNG.

  Args:
    rows: the rows of the run's metrics.jsonl.
    path: where the PNG goes.
    phases: the plan's phases (`start_epoch`, `end_epoch`, `batch_size`), as a
      checkpoint records them; without them the batch comes from the rows.
    title: the figure's title.
    tokens_per_example: T of a language model, whose batch and B_simple are
      drawn in tokens; None: in examples.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = [r for r in rows if "batch_size" in r and "epoch" in r]
  if not train:
    raise ValueError("the metrics hold no training rows yet")
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
  if phases:
    edges = [p["start_epoch"] for p in phases] + [phases[-1]["end_epoch"]]
    batches = [p["batch_size"] for p in phases] + [phases[-1]["batch_size"]]
  else:
    edges, batches = [r["epoch"] for r in train], [r["batch_size"] for r in train]
  per = tokens_per_example or 1
  top.plot(edges, np.asarray(batches) * per, drawstyle="steps-post", label="batch used")
  _draw_measured(top, train, per)
  top.set_yscale("log")
  top.set_ylabel("tokens" if tokens_per_example else "examples")
  top.legend(loc="best")
  planned = [(r["epoch"], r["noise_scale"]) for r in train if r.get("noise_scale")]
  if planned:
    bottom.plot(*zip(*planned), drawstyle="steps-pre", color="C2")
    bottom.set_yscale("log")
  bottom.set_ylabel("planned noise scale\nlr (N/B - 1) / (1 - m)")
  bottom.set_xlabel("epoch")
  for boundary in [p["start_epoch"] for p in (phases or [])[1:]]:
    for axis in (top, bottom):
      axis.axvline(boundary, color="0.8", linewidth=0.8, zorder=0)
  for axis in (top, bottom):
    axis.grid(True, which="both", alpha=0.3)
  fig.suptitle(title or "batch size and gradient noise scale")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _draw_measured(axis, train: list[Mapping[str, Any]], per: int = 1) -> None:
  """The measured B_simple (times `per`: T for tokens): its estimate, its confidence interval
  as a band, and its lower bound alone where |G|^2 was not resolved."""

  def column(key):
    values = [r.get(key) for r in train]
    return np.array([v if v is not None and np.isfinite(v) and v > 0 else np.nan for v in values])

  epochs = np.array([r["epoch"] for r in train])
  value, low, high = (column(k) * per for k in _NOISE_KEYS)
  if not any("grad_noise_scale_low" in r for r in train):  # a run logged before the bounds
    low = high = np.full(epochs.shape, np.nan)
  both = ~np.isnan(low) & ~np.isnan(high)
  if both.any():
    axis.fill_between(
      epochs, np.where(both, low, np.nan), np.where(both, high, np.nan), color="C1", alpha=0.25,
      linewidth=0, label="its confidence interval",
    )  # fmt: skip
  if not np.isnan(value).all():
    axis.plot(
      epochs, value, ".-", color="C1", markersize=3, label="measured B_simple = tr(S) / |G|²"
    )
  only_low = ~np.isnan(low) & np.isnan(high)
  if only_low.any():
    axis.plot(
      epochs[only_low], low[only_low], "^", color="C3", markersize=4,
      label="lower bound only (|G|² not resolved)",
    )  # fmt: skip
