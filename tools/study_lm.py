"""Adam's rules for a growing batch, against the decaying rate, on a language model.

usage: python tools/study_lm.py [--seeds 3] [--tokens 983040] [--eval-examples 2048]
                                [--only SUBSTRING ...] [--workdir workdir/lm]
                                [--out docs/results/lm] [--keep]

`lm_tiny` (a 3.2M-parameter byte-level transformer on the running Python's
standard library, sequences of 128 bytes), AdamW, the same token budget for
every run, each an ordinary `bigbatch train` (its command line is in the
results) run in this process on the default devices:

- `baseline` (configs/lm_tiny_base.py): a constant batch of 4,096 tokens, the
  rate divided by 4 at 30%, 60% and 80% of the tokens;
- `increase_batch/<rule>` (configs/lm_tiny_increase_batch.py): each of those
  decays becomes batch x 4, under each `plan.adam_rule` (paper, sqrt, sde,
  beta2_halflife: docs/PLANNER.md#adam-when-the-batch-changes);
- `noise` (configs/lm_tiny_noise.py): the batch grows x4 when the measured
  B_simple's lower bound clears 8 x the batch.

The recipes train 2,048,000 tokens; `--tokens` sets the budget, and the
schedule's boundaries (30/60/80%) and warm-up (5%) scale with it;
evaluations come every tenth of the budget, on the first `--eval-examples`
held-out sequences, and B_simple is smoothed over a fifth of it. The
default, 983,040 tokens (240 updates of 4,096), puts every boundary of
every plan on a whole update; only the plans' last update, of 262,144
tokens, ends 65,536 tokens past the budget. The target loss is the baseline's mean final held-out
loss; each run reports the tokens and updates of its first evaluation at or
below it. As tools/reproduce.py, every run keeps its workdir (a finished one
is read back, an interrupted one resumes), and `--keep` keeps the other runs
of --out's results.json. Writes results.json, results.md and two figures to
--out: `loss.png` (held-out loss against tokens and updates) and `noise.png`
(the measured B_simple against each plan's batch).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tools: runs, configs, training, bookkeeping
import study_adaptive

BASELINE = "baseline"
RULES = ("paper", "sqrt", "sde", "beta2_halflife")
RULE_LABELS = {
  "paper": "lr held",
  "sqrt": "lr / 2",
  "sde": "lr / 2, betas and eps moved",
  "beta2_halflife": "lr held, b2 -> b2^4",
}
RUNS = (
  reproduce.Run(BASELINE, "baseline: batch 4,096 tokens, lr / 4", "lm_tiny_base.py", None),
  *(
    reproduce.Run(
      f"increase_batch/{rule}",
      f"increasing batch, {rule} ({RULE_LABELS[rule]})",
      "lm_tiny_increase_batch.py",
      None,
      (("plan.adam_rule", rule),),
    )
    for rule in RULES
  ),
  reproduce.Run("noise", "measured noise scale (noise, sqrt)", "lm_tiny_noise.py", None),
)
SEQUENCE_LENGTH = 128  # the recipes' dataset.sequence_length
BASE_BATCH_TOKENS = 32 * SEQUENCE_LENGTH


def common_fields(tokens: int, eval_examples: int) -> dict[str, object]:
  """Overrides every run shares: the token budget with the schedule scaled to it, the
  evaluations, B_simple's horizon, and checkpoints at phase boundaries and the end only."""
  return {
    "num_tokens": tokens,
    "schedule.warmup_tokens": round(0.05 * tokens),
    "schedule.boundaries_tokens": tuple(round(f * tokens) for f in (0.3, 0.6, 0.8)),
    "eval_every_tokens": round(tokens / 10),
    "eval_examples": eval_examples,
    # The default horizon, a tenth of an epoch (2.97M tokens), is longer than the run, so
    # the smoothing averages from the first step, whose large |G|^2 swamps the rest: in a
    # timed baseline run neither |G|^2 nor tr(S) was resolved after step 10, so B_simple
    # was unknown at every evaluation (and the noise rule could never decide). A fifth of
    # the run is the length of the plans' shortest phases.
    "noise.horizon_tokens": round(0.2 * tokens),
    "checkpoint_every_steps": 100_000,
  }


def eval_curve(rows: list[dict]) -> dict[str, list]:
  """Each evaluation of a run's metrics.jsonl rows: its position (tokens, updates), the
  held-out loss and bits per byte, the batch (sequences) and the measured B_simple with
  its bounds (None where not known) at that step."""
  evals = [r for r in rows if "eval_loss" in r]
  return {
    "tokens": [int(r["tokens"]) for r in evals],
    "step": [int(r["step"]) for r in evals],
    "eval_loss": [r["eval_loss"] for r in evals],
    "eval_bits_per_byte": [r["eval_bits_per_byte"] for r in evals],
    "batch": [int(r["batch_size"]) if "batch_size" in r else None for r in evals],
    "measured": [r.get("grad_noise_scale") for r in evals],
    "low": [r.get("grad_noise_scale_low") for r in evals],
    "high": [r.get("grad_noise_scale_high") for r in evals],
  }


def noise_trace(rows: list[dict]) -> dict[str, list]:
  """Every logged step with a noise measurement: tokens, batch and B_simple (sequences)."""
  measured = [r for r in rows if "grad_noise_scale_low" in r]
  return {
    "tokens": [int(r["tokens"]) for r in measured],
    "batch": [int(r["batch_size"]) for r in measured],
    "measured": [r["grad_noise_scale"] for r in measured],
    "low": [r["grad_noise_scale_low"] for r in measured],
    "high": [r.get("grad_noise_scale_high") for r in measured],
  }


def decisions(rows: list[dict], sequence_length: int = SEQUENCE_LENGTH) -> list[dict]:
  """The decisions an adaptive run logged: step, tokens, batch (sequences), lr, reason."""
  return [
    {
      "step": r["step"],
      "tokens": r["decision_position"] * sequence_length,
      "batch_size": r["decision_batch_size"],
      "learning_rate": r["decision_learning_rate"],
      "reason": r["decision_reason"],
    }
    for r in rows
    if "decision_batch_size" in r
  ]


def tokens_to_target(curve: dict[str, list], target: float) -> dict | None:
  """The first evaluation at or below `target`: its tokens and updates; None if none is."""
  for tokens, step, loss in zip(curve["tokens"], curve["step"], curve["eval_loss"]):
    if loss <= target:
      return {"tokens": tokens, "updates": step}
  return None


def train_one(run: reproduce.Run, common: dict, seed: int, args) -> dict:
  where = (
    pathlib.Path(args.workdir)
    / f"t{args.tokens}_e{args.eval_examples}"
    / run.name.replace("/", "_")
    / f"seed{seed}"
  )
  config = reproduce.make_config(run, common, seed, args.data_dir)
  summary = reproduce.train_once(config, where)
  rows = study_adaptive.read_rows(where)
  curve = eval_curve(rows)
  return {
    "loss": summary["final_test_loss"],
    "bits_per_byte": summary["final_test_bits_per_byte"],
    "perplexity": summary["final_test_perplexity"],
    "updates": summary["updates"],
    "tokens": curve["tokens"][-1],
    "wall_seconds": summary["wall_seconds"],
    "phases": [
      {"batch_size": p["batch_size"], "steps": p["steps"], "seconds": p["seconds"]}
      for p in summary["phases"]
    ],
    "curve": curve,
    "noise": noise_trace(rows),
    "decisions": decisions(rows),
  }


def aggregate(run: reproduce.Run, per_seed: dict[int, dict], command: str) -> dict:
  """Means and standard deviations over seeds; the curves averaged evaluation by
  evaluation (over the evaluations every seed has)."""
  seeds = sorted(per_seed)
  loss = reproduce._mean_std([per_seed[s]["loss"] for s in seeds])
  bpb = reproduce._mean_std([per_seed[s]["bits_per_byte"] for s in seeds])
  updates = [per_seed[s]["updates"] for s in seeds]
  curves = [per_seed[s]["curve"] for s in seeds]
  count = min(len(c["tokens"]) for c in curves)
  mean_curve = {
    key: [statistics.fmean(c[key][i] for c in curves) for i in range(count)]
    for key in ("tokens", "step", "eval_loss", "eval_bits_per_byte")
  }
  return {
    "name": run.name,
    "label": run.label,
    "command": command,
    "seeds": seeds,
    "loss_mean": loss[0],
    "loss_std": loss[1],
    "bits_per_byte_mean": bpb[0],
    "bits_per_byte_std": bpb[1],
    "updates": round(statistics.fmean(updates)),
    "updates_std": reproduce._mean_std(updates)[1],
    "updates_max": max(updates),
    "wall_seconds_mean": statistics.fmean(per_seed[s]["wall_seconds"] for s in seeds),
    "curve": mean_curve,
    "per_seed": {str(s): per_seed[s] for s in seeds},
  }


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
  """A run against the baseline: the difference of mean held-out losses, its standard
  error (from the seeds' spreads), and whether the run is within 2 standard errors of the
  baseline (or better) with at most half its updates (in every seed)."""
  difference = result["loss_mean"] - base["loss_mean"]
  se = math.sqrt(
    result["loss_std"] ** 2 / len(result["seeds"]) + base["loss_std"] ** 2 / len(base["seeds"])
  )
  within = difference <= 2 * se
  half = 2 * result["updates_max"] <= base["updates"]
  return {"difference": difference, "se": se, "within_noise": within, "half_updates": half}


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


def _difference(result: dict, base: dict | None) -> str:
  if base is None or result is base:
    return "—"
  c = compare(result, base)
  ratio = f"{c['difference'] / c['se']:+.1f} SE" if c["se"] > 0 else "SE 0"
  return f"{c['difference']:+.4f} ({ratio})"


def tables(results: dict[str, dict], settings: dict, target: float | None) -> str:
  """The markdown of results.md: the table over seeds, every seed, the verdicts, the
  measured B_simple against the batch, and the adaptive run's decisions."""
  base = results.get(BASELINE)
  base_updates = (base or next(iter(results.values())))["updates"]
  tokens = settings["tokens"]
  lines = [
    f"`lm_tiny` on the Python {settings['python']} standard library, AdamW, {tokens:,} "
    f"tokens per run ({tokens // BASE_BATCH_TOKENS:,} updates at the baseline's batch of "
    f"{BASE_BATCH_TOKENS:,}), seeds {settings['seeds']}, {settings['device']}. Held-out: "
    f"the first {settings['eval_examples']:,} validation sequences "
    f"({settings['eval_examples'] * SEQUENCE_LENGTH:,} tokens), every {tokens // 10:,} "
    "tokens and at the end. Loss in nats per token; Δ: the run's mean minus the "
    "baseline's, in standard errors of the difference; fewer: the baseline's updates over "
    "the run's; target: the baseline's mean final held-out loss"
    + (f", {target:.4f}" if target is not None else "")
    + ".",
    "",
    "| run | held-out loss (mean ± std) | bits per byte | Δ loss vs baseline | updates "
    "| fewer | tokens to the target | wall s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for result in results.values():
    updates = f"{result['updates']:,}" + (
      f" ± {result['updates_std']:,.0f}" if result["updates_std"] else ""
    )
    lines.append(
      f"| {result['label']} | {result['loss_mean']:.4f} ± {result['loss_std']:.4f} "
      f"| {result['bits_per_byte_mean']:.4f} ± {result['bits_per_byte_std']:.4f} "
      f"| {_difference(result, base)} | {updates} | {base_updates / result['updates']:.2f}x "
      f"| {_reached(result)} | {result['wall_seconds_mean']:.0f} |"
    )
  lines += [
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
  if base is not None:
    lines += ["", "**Does a rule match the baseline in at most half its updates?**", ""]
    lines += verdicts(results)
  lines += [
    "",
    "**Measured B_simple against the batch** (sequences of 128 tokens; at each evaluation, "
    "the medians over seeds of the value and its 95% bounds; > L: in most seeds |G|² was "
    "not resolved and B_simple had only a lower bound, whose median is L; —: nothing known)",
    "",
  ]
  lines += noise_table(results)
  said = decision_lines(results)
  if said:
    lines += ["", "**Decisions**", "", *said]
  return "\n".join(lines)


def verdicts(results: dict[str, dict]) -> list[str]:
  """One line per run against the baseline: matched or not, and by how much."""
  base = results[BASELINE]
  out = []
  for name, result in results.items():
    if name == BASELINE:
      continue
    c = compare(result, base)
    said = (
      "matches"
      if c["within_noise"] and c["half_updates"]
      else "does not match"
      + (" (loss)" if not c["within_noise"] else "")
      + (" (updates)" if not c["half_updates"] else "")
    )
    out.append(
      f"- {result['label']}: {said}: {result['loss_mean']:.4f} against "
      f"{base['loss_mean']:.4f} (Δ {c['difference']:+.4f}, standard error {c['se']:.4f}) "
      f"in {result['updates']:,} updates against {base['updates']:,}."
    )
  return out


def _number(value: float) -> str:
  """A B_simple in sequences: whole above 100, else 3 significant digits."""
  return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(seeds: list[dict], i: int) -> str:
  """Evaluation i over seeds: the batches, and B_simple as study_adaptive prints it."""
  present = [s["curve"] for s in seeds if i < len(s["curve"]["tokens"])]
  batches = sorted({c["batch"][i] for c in present if c["batch"][i] is not None})
  value = study_adaptive._typical([c["measured"][i] for c in present])
  low = study_adaptive._typical([c["low"][i] for c in present])
  high = study_adaptive._typical([c["high"][i] for c in present])
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


def loss_figure(results: dict[str, dict], target: float | None, path: pathlib.Path) -> None:
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
  fig.legend(handles, labels, loc="outside lower center", ncol=3)
  fig.suptitle("lm_tiny, AdamW: held-out loss (mean over seeds, band min to max)")
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


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--tokens", type=int, default=983_040, help="tokens per run")
  parser.add_argument(
    "--eval-examples", type=int, default=2048, help="held-out sequences per evaluation"
  )
  parser.add_argument("--only", nargs="*", default=(), help="runs whose name contains these")
  parser.add_argument("--workdir", default="workdir/lm", help="one subdirectory per run")
  parser.add_argument("--data-dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR)")
  parser.add_argument("--out", default="docs/results/lm")
  parser.add_argument(
    "--keep",
    action="store_true",
    help="keep the other runs' results from --out's results.json (same tokens and seeds)",
  )
  args = parser.parse_args()
  if args.seeds < 1:
    parser.error(f"--seeds: must be >= 1, got {args.seeds}")
  if args.tokens < 10 * BASE_BATCH_TOKENS:
    parser.error(f"--tokens: must be >= {10 * BASE_BATCH_TOKENS:,}, got {args.tokens:,}")
  if args.eval_examples < 1:
    parser.error(f"--eval-examples: must be >= 1, got {args.eval_examples}")
  for pattern in args.only:
    if not any(pattern in r.name for r in RUNS):
      parser.error(f"--only: {pattern!r} matches no run; runs: {', '.join(r.name for r in RUNS)}")
  return args


def main() -> int:
  started = time.monotonic()
  args = parse()
  import platform

  import jax

  selected = [r for r in RUNS if not args.only or any(p in r.name for p in args.only)]
  common = common_fields(args.tokens, args.eval_examples)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  devices = jax.devices()
  settings = {
    "tokens": args.tokens,
    "seeds": list(range(args.seeds)),
    "eval_examples": args.eval_examples,
    "device": f"{devices[0].platform} x {len(devices)}",
    "jax": jax.__version__,
    "python": platform.python_version(),
    "common_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in common.items()},
  }
  results: dict[str, dict] = {}
  total, done = len(selected) * args.seeds, 0
  for run in selected:
    per_seed = {}
    for seed in settings["seeds"]:
      per_seed[seed] = train_one(run, common, seed, args)
      done += 1
      print(
        f"[{done}/{total}] {run.name} seed {seed}: held-out loss {per_seed[seed]['loss']:.4f}, "
        f"{per_seed[seed]['updates']:,} updates, {per_seed[seed]['wall_seconds']:.0f} s",
        flush=True,
      )
    results[run.name] = aggregate(run, per_seed, run.command(common))
  if args.keep:
    results = study_adaptive.kept_results(
      out, settings, results, keys=("tokens", "seeds", "eval_examples"), order=RUNS
    )
  target = with_targets(results)
  settings["target_loss"] = target
  settings["train_seconds"] = sum(
    seed["wall_seconds"] for result in results.values() for seed in result["per_seed"].values()
  )
  settings["invocation_seconds"] = time.monotonic() - started
  (out / "results.json").write_text(
    json.dumps({"settings": settings, "runs": results}, indent=1) + "\n"
  )
  text = tables(results, settings, target)
  (out / "results.md").write_text(text + "\n")
  print(text)
  loss_figure(results, target, out / "loss.png")
  noise_figure(results, out / "noise.png")
  print(f"wrote {out}/results.json, results.md, loss.png and noise.png", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
