"""The language-model study's results against its baseline: the comparisons, tables and
figures that tools/study_lm.py writes (results.md, loss.png, noise.png).

A result is one run's seeds aggregated (study_lm.aggregate): mean and standard deviation
of the final held-out loss and bits per byte, updates, the evaluations' curve averaged
over seeds, and each seed's own values; the baseline is the run named `baseline`.
"""

from __future__ import annotations

import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tools: bookkeeping
import study_adaptive

BASELINE = "baseline"
SEQUENCE_LENGTH = 128  # the recipes' dataset.sequence_length
BASE_BATCH_TOKENS = 32 * SEQUENCE_LENGTH  # the baseline's batch


def tokens_to_target(curve: dict[str, list], target: float) -> dict | None:
  """The first evaluation at or below `target`: its tokens and updates; None if none is."""
  for tokens, step, loss in zip(curve["tokens"], curve["step"], curve["eval_loss"]):
    if loss <= target:
      return {"tokens": tokens, "updates": step}
  return None


def with_targets(results: dict[str, dict]) -> float | None:
  """Sets each run's `to_target` (per seed: tokens and updates of the first evaluation at
  or below the baseline's mean final held-out loss, or None); that loss (None without a
  baseline)."""
  if BASELINE not in results:
    return None
  target = results[BASELINE]["loss_mean"]
  for result in results.values():
    result["to_target"] = {
      seed: tokens_to_target(values["curve"], target) for seed, values in result["per_seed"].items()
    }
  return target


def compare(result: dict, base: dict) -> dict:
  """A run against the baseline: the difference of mean held-out losses with its standard
  error from the two spreads (`se`), the same paired by seed (`paired_difference`,
  `paired_se`: the seeds both ran), and whether the run is within 2 standard errors of
  the baseline or better (paired where two or more seeds pair, else unpaired) with at most
  half its updates (in every seed).

  A seed sets the initialisation and the data order, and every plan trains the first 30%
  of the tokens exactly as the baseline does, so seed to seed differences in where that
  stretch leaves the model cancel in the paired difference; the unpaired one keeps them.
  """
  difference = result["loss_mean"] - base["loss_mean"]
  se = math.sqrt(
    result["loss_std"] ** 2 / len(result["seeds"]) + base["loss_std"] ** 2 / len(base["seeds"])
  )
  seeds = [s for s in result["per_seed"] if s in base["per_seed"]]
  paired = [result["per_seed"][s]["loss"] - base["per_seed"][s]["loss"] for s in seeds]
  paired_mean, paired_std = reproduce._mean_std(paired) if paired else (math.nan, math.nan)
  paired_se = paired_std / math.sqrt(len(paired)) if len(paired) > 1 else math.nan
  if paired_se == paired_se:
    within = paired_mean <= 2 * paired_se
  else:
    within = difference <= 2 * se
  half = 2 * result["updates_max"] <= base["updates"]
  return {
    "difference": difference,
    "se": se,
    "paired_difference": paired_mean,
    "paired_se": paired_se,
    "within_noise": within,
    "half_updates": half,
  }


def _reached(result: dict) -> str:
  """Tokens to the target over seeds: mean ± std where every seed reached it."""
  reached = [v["tokens"] for v in result.get("to_target", {}).values() if v is not None]
  seeds = len(result["seeds"])
  if not reached:
    return "not reached"
  mean, std = reproduce._mean_std(reached)
  if len(reached) == seeds:
    return f"{mean:,.0f} ± {std:,.0f}"
  return f"{mean:,.0f} ({len(reached)} of {seeds} seeds; the others not reached)"


def _in_se(difference: float, se: float) -> str:
  if se != se:
    return f"{difference:+.4f}"
  return (
    f"{difference:+.4f} ± {se:.4f} ({difference / se:+.1f} SE)"
    if se > 0
    else (f"{difference:+.4f} ± 0")
  )


def _difference(result: dict, base: dict | None, *, paired: bool) -> str:
  if base is None or result is base:
    return "—"
  c = compare(result, base)
  if paired:
    return _in_se(c["paired_difference"], c["paired_se"])
  return _in_se(c["difference"], c["se"])


def tables(results: dict[str, dict], settings: dict, target: float | None) -> str:
  """The markdown of results.md: the table over seeds, every seed, the verdicts, the
  measured B_simple against the batch, and the adaptive run's decisions."""
  base = results.get(BASELINE)
  base_updates = (base or next(iter(results.values())))["updates"]
  tokens, base_batch = settings["tokens"], settings.get("base_batch_tokens", BASE_BATCH_TOKENS)
  rules = settings.get("study", "rules") != "optimizers"
  optimizer = "AdamW" if rules else "the baseline's plan under each optimizer"
  data = settings.get("data") or f"the Python {settings['python']} standard library"
  every = settings.get("eval_every_tokens", tokens // 10)
  lines = [
    f"`{settings.get('model', 'lm_tiny')}` on {data}, {optimizer}, {tokens:,} "
    f"tokens per run ({tokens // base_batch:,} updates at the baseline's batch of "
    f"{base_batch:,}), seeds {settings['seeds']}, {settings['device']}. Held-out: "
    f"the first {settings['eval_examples']:,} validation sequences "
    f"({settings['eval_examples'] * SEQUENCE_LENGTH:,} tokens), every {every:,} "
    "tokens and at the end. Loss in nats per token; Δ: the run's mean minus the "
    "baseline's ± its standard error, paired (the mean of each seed's difference) and "
    "unpaired (from the two spreads); fewer: the baseline's updates over the run's; "
    "target: the baseline's mean final held-out loss"
    + (f", {target:.4f}" if target is not None else "")
    + ".",
    "",
    "| run | held-out loss (mean ± std) | bits per byte | Δ loss, paired by seed "
    "| Δ loss, unpaired | updates | fewer | tokens to the target | wall s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for result in results.values():
    updates = f"{result['updates']:,}" + (
      f" ± {result['updates_std']:,.0f}" if result["updates_std"] else ""
    )
    lines.append(
      f"| {result['label']} | {result['loss_mean']:.4f} ± {result['loss_std']:.4f} "
      f"| {result['bits_per_byte_mean']:.4f} ± {result['bits_per_byte_std']:.4f} "
      f"| {_difference(result, base, paired=True)} | {_difference(result, base, paired=False)} "
      f"| {updates} | {base_updates / result['updates']:.2f}x "
      f"| {_reached(result)} | {result['wall_seconds_mean']:.0f} |"
    )
  lines += seed_lines(results)
  if base is not None:
    question = (
      "**Does a rule match the baseline in at most half its updates?** (matches: Δ paired "
      "by seed at most 2 standard errors, and at most half the baseline's updates in every "
      "seed)"
      if rules
      else "**Does an optimizer match AdamW at the same budget?** (matches: Δ paired by "
      "seed at most 2 standard errors; lower or higher: beyond that)"
    )
    lines += ["", question, ""]
    lines += verdicts(results, same_updates=not rules)
  lines += [
    "",
    f"**Measured B_simple against the batch** (tokens: the step measures both in sequences "
    f"of {SEQUENCE_LENGTH}; at each evaluation, the medians over seeds of the value and its "
    "95% bounds; > L: in most seeds |G|² was not resolved and B_simple had only a lower "
    "bound, whose median is L; —: nothing known)",
    "",
  ]
  lines += noise_table(results)
  said = decision_lines(results)
  if said:
    lines += ["", "**Decisions**", "", *said]
  lines += ramp_lines(settings.get("cbs_ramps", []), settings.get("model", "lm_tiny"), base_batch)
  return "\n".join(lines)


def seed_lines(results: dict[str, dict]) -> list[str]:
  """The table of every seed: its loss, bits per byte, updates, tokens and the target."""
  lines = [
    "",
    "**Every seed** (tokens trained: the last update can end past the budget when the "
    "last phase's batch does not divide it)",
    "",
    "| run | seed | held-out loss | bits per byte | updates | tokens trained "
    "| target reached at tokens (update) | wall s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for result in results.values():
    for seed, values in result["per_seed"].items():
      hit = result.get("to_target", {}).get(seed)
      reached = f"{hit['tokens']:,} ({hit['updates']:,})" if hit else "not reached"
      lines.append(
        f"| {result['label']} | {seed} | {values['loss']:.4f} | {values['bits_per_byte']:.4f} "
        f"| {values['updates']:,} | {values['tokens']:,} | {reached} "
        f"| {values['wall_seconds']:.0f} |"
      )
  return lines


def ramp_lines(
  ramps: list[dict], model: str = "lm_tiny", base_batch: int = BASE_BATCH_TOKENS
) -> list[str]:
  """The warm-ups built from the measured critical batches, and which of them is the
  baseline's plan (a ramp that never rises)."""
  if not ramps:
    return []
  lines = [
    "",
    "**Warm-ups from the measured critical batches** (`bigbatch cbs`'s branches on "
    f"{model}; from each branch point on, the largest critical batch measured so far)",
    "",
  ]
  for built in ramps:
    measured = ", ".join(
      f"{batch:,} at {tokens:,}" if batch else f"— at {tokens:,}"
      for tokens, batch in built["measured"]
    )
    plan = (
      "; ".join(f"batch {batch:,} from {tokens:,} tokens" for tokens, batch in built["ramp"])
      + f": trained as `{built['name']}`"
      if built["ramp"]
      else f"never above the baseline's {base_batch:,}: the baseline's plan (its row)"
    )
    lines.append(f"- {built['tolerance']}: critical batches {measured} tokens; {plan}.")
  return lines


def verdicts(results: dict[str, dict], same_updates: bool = False) -> list[str]:
  """One line per run against the baseline: matched or not, and by how much (with
  `same_updates`, every run has the baseline's updates: only the loss is judged)."""
  base = results[BASELINE]
  out = []
  for name, result in results.items():
    if name == BASELINE:
      continue
    c = compare(result, base)
    said = (
      _against_adamw(c)
      if same_updates
      else "matches"
      if c["within_noise"] and c["half_updates"]
      else "does not match"
      + (" (loss)" if not c["within_noise"] else "")
      + (" (updates)" if not c["half_updates"] else "")
    )
    out.append(
      f"- {result['label']}: {said}: {result['loss_mean']:.4f} against "
      f"{base['loss_mean']:.4f} (Δ paired by seed "
      f"{_in_se(c['paired_difference'], c['paired_se'])}, unpaired "
      f"{_in_se(c['difference'], c['se'])}) in {result['updates']:,} updates against "
      f"{base['updates']:,}."
    )
  return out


def _against_adamw(c: dict) -> str:
  """matches, lower or higher: the paired difference against 2 of its standard errors
  (the unpaired one where under two seeds pair)."""
  paired = c["paired_se"] == c["paired_se"]
  difference = c["paired_difference"] if paired else c["difference"]
  se = c["paired_se"] if paired else c["se"]
  if abs(difference) <= 2 * se:
    return "matches"
  return f"{'lower' if difference < 0 else 'higher'} loss than AdamW"


def _number(value: float) -> str:
  """A B_simple in tokens: whole above 100, else 3 significant digits."""
  return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(seeds: list[dict], i: int) -> str:
  """Evaluation i over seeds: the batches and B_simple (as study_adaptive takes it), in
  tokens."""
  present = [s["curve"] for s in seeds if i < len(s["curve"]["tokens"])]
  if not present:  # a run with fewer evaluations (a batch past several evaluation points)
    return "—"
  batches = sorted({c["batch"][i] * SEQUENCE_LENGTH for c in present if c["batch"][i] is not None})
  value, low, high = (
    study_adaptive._typical([c[key][i] for c in present]) * SEQUENCE_LENGTH
    for key in ("measured", "low", "high")
  )
  if value == value and high == high:
    measured = f"{_number(value)} [{_number(low)}, {_number(high)}]"
  else:
    measured = f"> {_number(low)}" if low == low else "—"
  return f"{'/'.join(f'{b:,}' for b in batches)} / {measured}"


def noise_table(results: dict[str, dict]) -> list[str]:
  """Batch / measured B_simple at each evaluation, one column per run."""
  names = list(results)
  lines = [
    "| evaluation (baseline's tokens) | "
    + " | ".join(f"{results[n]['label']}: batch / B_simple" for n in names)
    + " |",
    "|---|" + "---|" * len(names),
  ]
  count = max(len(s["curve"]["tokens"]) for r in results.values() for s in r["per_seed"].values())
  reference = next(iter(results[names[0]]["per_seed"].values()))["curve"]["tokens"]
  for i in range(count):
    where = f"{reference[i]:,}" if i < len(reference) else "—"
    cells = [_cell(list(results[n]["per_seed"].values()), i) for n in names]
    lines.append(f"| {i + 1} ({where}) | " + " | ".join(cells) + " |")
  return lines


def decision_lines(results: dict[str, dict]) -> list[str]:
  lines = []
  for result in results.values():
    for seed, values in result["per_seed"].items():
      if not values["decisions"] and not result["name"].startswith("noise"):
        continue
      said = "; ".join(
        f"at {d['tokens']:,} tokens: batch {d['batch_size']:,} lr {d['learning_rate']:.3g} "
        f"({d['reason']})"
        for d in values["decisions"]
      )
      lines.append(f"- {result['label']}, seed {seed}: {said or 'no decision'}")
  return lines


def loss_figure(
  results: dict[str, dict],
  target: float | None,
  path: pathlib.Path,
  title: str = "lm_tiny, AdamW",
) -> None:
  """Held-out loss against tokens and against updates (mean over seeds, band min to max)."""
  import matplotlib
  import matplotlib.ticker

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
  finals = []
  for name, result in results.items():
    curves = [s["curve"] for s in result["per_seed"].values()]
    count = len(result["curve"]["tokens"])
    low = [min(c["eval_loss"][i] for c in curves) for i in range(count)]
    high = [max(c["eval_loss"][i] for c in curves) for i in range(count)]
    style = "k-" if name == BASELINE else "-"
    for ax, key in zip(axes, ("tokens", "step")):
      x = result["curve"][key]
      ax.plot(x, result["curve"]["eval_loss"], style, marker=".", label=result["label"])
      ax.fill_between(x, low, high, alpha=0.15, color=ax.lines[-1].get_color())
    finals += result["curve"]["eval_loss"][len(result["curve"]["eval_loss"]) // 2 :]
  for ax, label in zip(axes, ("tokens", "parameter updates")):
    if target is not None:
      ax.axhline(target, color="grey", linestyle=":", label="target: the baseline's final loss")
    ax.set_xlabel(label)
    ax.set_ylabel("held-out loss (nats per token)")
    ax.grid(True, alpha=0.3)
    # the second half of the runs, where the schedules differ, fills the axis
    ax.set_ylim(min(finals) - 0.02, max(finals) + 0.05)
  axes[0].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
  axes[1].set_xscale("log")
  axes[1].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
  handles, labels = axes[0].get_legend_handles_labels()
  long = max(len(label) for label in labels) > 50  # the ramps' labels list their steps
  fig.legend(handles, labels, loc="outside lower center", ncol=2 if long else 3)
  fig.suptitle(f"{title}: held-out loss (mean over seeds, band min to max)")
  fig.savefig(path, dpi=90)
  plt.close(fig)


def noise_figure(results: dict[str, dict], path: pathlib.Path) -> None:
  """One panel per run: each seed's measured B_simple (with its 95% band where |G|² is
  resolved, the lower bound alone as triangles where not) and its batch, against tokens."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = 3
  rows = math.ceil(len(results) / columns)
  fig, axes = plt.subplots(
    rows, columns, figsize=(15, 4.5 * rows), sharex=True, sharey=True, squeeze=False,
    constrained_layout=True,
  )  # fmt: skip
  for ax, result in zip(axes.flat, results.values()):
    for k, (seed, values) in enumerate(result["per_seed"].items()):
      trace, color = values["noise"], f"C{k}"
      x = trace["tokens"]
      value = [v if v is not None else math.nan for v in trace["measured"]]
      low = [v if v is not None else math.nan for v in trace["low"]]
      high = [v if v is not None else math.nan for v in trace["high"]]
      resolved = [v == v and h == h for v, h in zip(value, high)]
      ax.fill_between(x, low, high, where=resolved, color=color, alpha=0.15, linewidth=0)
      ax.plot(x, value, "-", color=color, label=f"seed {seed}: B_simple")
      only_low = [(t, lo) for t, r, lo in zip(x, resolved, low) if not r and lo == lo]
      if only_low:
        ax.plot(*zip(*only_low), "^", color=color, markersize=4)
      ax.plot(x, trace["batch"], "--", color=color, drawstyle="steps-post", alpha=0.8)
    ax.set_title(result["label"], fontsize=10)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("tokens")
    ax.set_ylabel("sequences of 128 tokens")
  for ax in list(axes.flat)[len(results) :]:
    ax.set_visible(False)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  handles += [plt.Line2D([], [], color="k", linestyle="--"), plt.Line2D([], [], color="k",
              marker="^", linestyle="")]  # fmt: skip
  labels += ["the batch (dashed)", "lower bound only (|G|² not resolved)"]
  fig.legend(handles, labels, loc="outside lower center", ncol=5)
  fig.suptitle("Measured gradient noise scale B_simple (95% band) against each plan's batch")
  fig.savefig(path, dpi=80)
  plt.close(fig)
