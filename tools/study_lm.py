"""Adam's rules for a growing batch, against the decaying rate, on a language model.

usage: python tools/study_lm.py [--study rules|optimizers] [--seeds 3] [--tokens 983040]
                                [--eval-examples 2048] [--only SUBSTRING ...]
                                [--workdir workdir/lm] [--out docs/results/lm] [--keep]

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

`--study optimizers` trains instead the baseline's plan with each optimizer
that has an lm_tiny recipe: AdamW (the baseline), Lion (configs/lm_tiny_lion.py)
and Muon (configs/lm_tiny_muon.py), to docs/results/lm_optimizers by default.

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
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tools: runs, configs, training, bookkeeping
import study_adaptive
import study_lm_report as report
from study_lm_report import BASE_BATCH_TOKENS, BASELINE, SEQUENCE_LENGTH

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

# The same plan (the baseline's batch and decays) under the other optimizers with an
# lm_tiny recipe, at the rates their recipes give (starting points, not tuned there).
OPTIMIZER_RUNS = (
  reproduce.Run(BASELINE, "AdamW (lr 2e-3, wd 0.1), the baseline", "lm_tiny_base.py", None),
  reproduce.Run("lion", "Lion (lr 3e-4, wd 0.7)", "lm_tiny_lion.py", None),
  reproduce.Run("muon", "Muon (lr 2e-3, wd 0.1; AdamW off the matrices)", "lm_tiny_muon.py", None),
)

KEEP = "keep the other runs' results from --out's results.json (same tokens and seeds)"


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
  evals, batch = [], None
  for r in rows:  # the final evaluation can fall on a step that logged no batch: the last one
    batch = r.get("batch_size", batch)
    if "eval_loss" in r:
      evals.append({**r, "batch_size": batch} if batch is not None else r)
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


def cbs_runs(path: pathlib.Path) -> tuple[list[reproduce.Run], list[dict]]:
  """Warm-ups built from the critical batches `tools/study_cbs.py` measured on lm_tiny
  (`path`: its results.json), one for each definition: Merrill's with `bigbatch cbs`'s
  own tolerance (`auto`) and with the tolerance from more data orders. The batch from each
  branch point on is the largest critical batch measured so far
  (`bigbatch.measure.critical_batch.warmup_ramp`), the rate by the square-root rule. A
  ramp that never rises is the baseline's plan and is not trained again. Returns the runs
  and, for the report, every ramp built."""
  from bigbatch.measure.critical_batch import warmup_ramp

  if not path.exists():
    return [], []
  rows = json.loads(path.read_text())["models"]["lm_tiny"]["rows"]
  runs, built = [], []
  for key, said in (("merrill", "auto tolerance"), ("merrill_orders", "tolerance from 4 orders")):
    points = [(row["tokens"], row[key]) for row in rows]
    ramp = warmup_ramp(points, BASE_BATCH_TOKENS, multiple=SEQUENCE_LENGTH)
    name = f"cbs_ramp/{key}"
    built.append({"name": name, "tolerance": said, "measured": points, "ramp": ramp})
    if ramp:
      steps = ", ".join(f"{b:,} from {t:,}" for t, b in ramp)
      overrides = (
        ("plan.strategy", "ramp"),
        ("plan.ramp_tokens", ramp),
        ("plan.adam_rule", "sqrt"),
      )
      runs.append(
        reproduce.Run(
          name,
          f"critical-batch warm-up, {said} ({steps}; sqrt)",
          "lm_tiny_base.py",
          None,
          overrides,
        )
      )
  return runs, built


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--study",
    choices=("rules", "optimizers"),
    default="rules",
    help="Adam's rules for a growing batch (default), or AdamW, Lion and Muon on one plan",
  )
  parser.add_argument("--tokens", type=int, default=983_040, help="tokens per run")
  parser.add_argument(
    "--eval-examples", type=int, default=2048, help="held-out sequences per evaluation"
  )
  parser.add_argument(
    "--cbs-results",
    default="docs/results/cbs/results.json",
    help="tools/study_cbs.py's results, for the warm-ups built from measured critical batches",
  )
  reproduce.study_arguments(
    parser,
    workdir="workdir/lm",
    out=None,
    keep=KEEP,
  )
  args = parser.parse_args()
  if args.tokens < 10 * BASE_BATCH_TOKENS:
    parser.error(f"--tokens: must be >= {10 * BASE_BATCH_TOKENS:,}, got {args.tokens:,}")
  if args.eval_examples < 1:
    parser.error(f"--eval-examples: must be >= 1, got {args.eval_examples}")
  if args.study == "optimizers":
    args.runs, args.ramps = list(OPTIMIZER_RUNS), []
  else:
    args.runs, args.ramps = cbs_runs(pathlib.Path(args.cbs_results))
    args.runs = [*RUNS, *args.runs]
  args.out = args.out or f"docs/results/{'lm' if args.study == 'rules' else 'lm_optimizers'}"
  reproduce.check_study_arguments(parser, args, [r.name for r in args.runs])
  return args


def said(result: dict) -> str:
  return (
    f"held-out loss {result['loss']:.4f}, {result['updates']:,} updates, "
    f"{result['wall_seconds']:.0f} s"
  )


def main() -> int:
  started = time.monotonic()
  args = parse()
  import platform

  import jax

  selected = [r for r in args.runs if not args.only or any(p in r.name for p in args.only)]
  common = common_fields(args.tokens, args.eval_examples)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  devices = jax.devices()
  settings = {
    "study": args.study,
    "tokens": args.tokens,
    "seeds": list(range(args.seeds)),
    "eval_examples": args.eval_examples,
    "device": f"{devices[0].platform} x {len(devices)}",
    "jax": jax.__version__,
    "python": platform.python_version(),
    "common_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in common.items()},
    "cbs_ramps": args.ramps,
  }
  trained = reproduce.train_runs(
    selected, settings["seeds"], lambda run, seed: train_one(run, common, seed, args), said
  )
  results = {r.name: aggregate(r, trained[r.name], r.command(common)) for r in selected}
  if args.keep:
    results = study_adaptive.kept_results(
      out, settings, results, keys=("tokens", "seeds", "eval_examples"), order=tuple(args.runs)
    )
  target = report.with_targets(results)
  settings["target_loss"] = target
  settings["train_seconds"] = sum(
    seed["wall_seconds"] for result in results.values() for seed in result["per_seed"].values()
  )
  settings["invocation_seconds"] = time.monotonic() - started
  (out / "results.json").write_text(
    json.dumps({"settings": settings, "runs": results}, indent=1) + "\n"
  )
  text = report.tables(results, settings, target)
  (out / "results.md").write_text(text + "\n")
  print(text)
  report.loss_figure(results, target, out / "loss.png")
  report.noise_figure(results, out / "noise.png")
  print(f"wrote {out}/results.json, results.md, loss.png and noise.png", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
