"""The language-model study where a batch ramp can pay: lm_mini on BPE tokens.

usage: python tools/study_lm_ramp.py [--seeds 2] [--tokens 10240000] [--only SUBSTRING ...]
                                     [--workdir workdir/lm_ramp] [--out docs/results/lm_ramp]
                                     [--keep] [--quick]

configs/lm_mini_base.py: a 231k-parameter transformer on a 2,048-token BPE of the
running Python's standard library, AdamW, a baseline batch of 2,048 tokens, the
rate / 4 at 30%, 60% and 80% of the tokens. Two stages, each run an ordinary
`bigbatch train` or `bigbatch cbs` in this process on the default devices:

1. The critical batch along the run: the baseline's seed 0, checkpointed every
   100 updates, and from the checkpoints nearest 2%, 10%, 25% and 70% of its
   updates (none on a decay) the branches of `bigbatch cbs` (tools/study_cbs.py's,
   the smallest batch in 3 data orders): batches of 2,048 to 32,768 tokens,
   262,144 tokens each, a branch at k x the batch at the rate x sqrt(k). The
   critical batch: Merrill's, with the tolerance from the 3 orders.
2. The plans, on the same budget, `--seeds` each (the baseline's seed 0 is
   stage 1's run):
   - `baseline`: the constant batch of 2,048 tokens;
   - `large`: a constant 16,384 tokens (8x), the rate x sqrt(8);
   - `increase_batch/sqrt`: each decay of the rate by 4 becomes batch x 4 with
     the rate / 2 (2,048 -> 8,192 -> 32,768 -> 131,072 tokens);
   - `noise`: the batch x 4, rate / 2, when the measured B_simple's lower bound
     passes 8 x the batch (decided at evaluations);
   - `cbs_ramp`: from each branch point on, the largest critical batch measured so
     far (`bigbatch.measure.critical_batch.warmup_ramp`), the rate by the square-
     root rule;
   - `law_ramp`: B_opt(D) ~ D^0.571 (Step Law's exponent; docs/RESULTS_LM.md) through
     the first measured critical batch, the batch doubled from 2,048 where the law
     passes each power of two, up to 32,768, the rate by the square-root rule.
   A ramp that never rises is the baseline's plan and is not trained.

`--tokens` scales the schedule (warm-up 1%, decays at 30/60/80%), the evaluations
(every twentieth, the first 256 held-out sequences) and B_simple's horizon (a
tenth). Every run keeps its workdir: a finished one is read back, an interrupted
one resumes, and `--keep` keeps the other runs of --out's results.json. `--quick`:
409,600 tokens, one seed, branches of 32,768 tokens, to workdir/lm_ramp/quick.
Writes results.json, results.md, loss.png, noise.png and cbs.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tools: runs, configs, training, bookkeeping
import study_adaptive
import study_cbs
import study_lm
import study_lm_report as report
from study_lm_report import BASELINE, SEQUENCE_LENGTH

CONFIG = "lm_mini_base.py"
BASE_BATCH = 2_048  # tokens: the recipe's 16 sequences of 128
LARGE = 8  # the constant large batch: 8 x the baseline's
CAP = 32_768  # the largest batch branched, and the ramps' largest
FRACTIONS = (0.02, 0.1, 0.25, 0.7)  # of the baseline's updates: none on a decay (30/60/80%)
LAW_EXPONENT = 0.571  # Step Law's B_opt ~ D^0.571 (Li et al. 2025)
SQRT = (("plan.adam_rule", "sqrt"),)


def common_fields(tokens: int) -> dict[str, object]:
  """Overrides every run shares: the budget with the schedule, evaluations and B_simple's
  horizon scaled to it; checkpoints every 100 updates, all kept (the baseline branches
  from them); the square-root rule (a branch at k x the batch takes the rate x sqrt(k))."""
  return {
    "num_tokens": tokens,
    "schedule.warmup_tokens": round(0.01 * tokens),
    "schedule.boundaries_tokens": tuple(round(f * tokens) for f in (0.3, 0.6, 0.8)),
    "eval_every_tokens": round(tokens / 20),
    "eval_examples": 256,
    "noise.horizon_tokens": round(0.1 * tokens),
    "checkpoint_every_steps": 100,
    "keep_checkpoints": 1_000,
    "plan.adam_rule": "sqrt",
  }


def fixed_runs(tokens: int) -> list[reproduce.Run]:
  """The plans that need no measurement."""
  rate = 2e-3 * math.sqrt(LARGE)  # the recipe's 2e-3 by the square-root rule
  return [
    reproduce.Run(BASELINE, f"baseline: batch {BASE_BATCH:,} tokens", CONFIG, None),
    reproduce.Run(
      "large",
      f"constant batch {LARGE * BASE_BATCH:,} tokens, lr x sqrt({LARGE})",
      CONFIG,
      None,
      (("batch_tokens", LARGE * BASE_BATCH), ("optimizer.learning_rate", float(f"{rate:.4g}"))),
    ),
    reproduce.Run(
      "increase_batch/sqrt",
      "increasing batch x 4 at each decay (sqrt: lr / 2)",
      CONFIG,
      None,
      (("plan.strategy", "increase_batch"),),
    ),
    reproduce.Run(
      "noise",
      "measured noise scale (noise, sqrt)",
      CONFIG,
      None,
      (
        ("plan.strategy", "noise"),
        ("plan.adapt.factor", 4.0),
        ("plan.adapt.noise_ratio", 8.0),
        ("plan.min_phase_tokens", round(tokens / 20)),
      ),
    ),
  ]


def law_ramp(first: tuple[int, int], tokens: int) -> tuple[tuple[int, int], ...]:
  """B_opt(D) ~ D^LAW_EXPONENT through `first` (tokens, critical batch): the batch is
  BASE_BATCH x 2^k from where the law reaches it (rounded down to a whole baseline update,
  after the first), up to CAP and within the budget of `tokens`."""
  position, batch = first
  ramp, size = [], 2 * BASE_BATCH
  while size <= CAP:
    where = position * (size / batch) ** (1 / LAW_EXPONENT)
    where = int(where // BASE_BATCH * BASE_BATCH)
    if where >= tokens:
      break
    ramp.append((max(where, BASE_BATCH), size))
    size *= 2
  return tuple(ramp)


def ramp_run(name: str, label: str, ramp) -> reproduce.Run:
  steps = ", ".join(f"{b:,} from {t:,}" for t, b in ramp)
  overrides = (("plan.strategy", "ramp"), ("plan.ramp_tokens", tuple(ramp)))
  return reproduce.Run(name, f"{label} ({steps}; sqrt)", CONFIG, None, overrides)


def cbs_study(tokens: int, quick: bool) -> study_cbs.Study:
  """The branches from the baseline's checkpoints, as tools/study_cbs.py takes them."""
  return study_cbs.Study(
    reproduce.Run("lm_mini", "lm_mini, AdamW, sqrt rule", CONFIG, None),
    common_fields(tokens),
    batches=(2_048, 4_096, 8_192, 16_384, 32_768),
    budget=32_768 if quick else 262_144,
    checkpoint_every=100,
    length=SEQUENCE_LENGTH,
    orders=3,
  )


def measure(args, study: study_cbs.Study, where: pathlib.Path, updates: int) -> dict:
  """Stage 1: `bigbatch cbs` at each branch point of the baseline's seed 0 (in `where`),
  read back where its branches finished; the model's entry as tools/study_cbs.py writes
  it (rows, the run's B_simple trace)."""
  rows = study_adaptive.read_rows(where)
  table_rows = []
  for step in study_cbs.branch_steps(updates, study.checkpoint_every, FRACTIONS):
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet if args.quiet else contextlib.nullcontext():
      result = study_cbs.branch_at(where, step, study)
    row = study_cbs.summarize(result, rows, study)
    row["seconds"] = study_cbs._branch_seconds(where / "cbs" / f"step_{step}")
    row["command"] = study.command(where, step)
    table_rows.append(row)
    print(f"branches from step {step}: critical batch {row['merrill_orders']:,} tokens "
          f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip
  return {"rows": table_rows, "trace": study_cbs.noise_trace(rows)}


def measured_runs(rows: list[dict], tokens: int) -> tuple[list[reproduce.Run], list[dict]]:
  """The two ramps from the measured critical batches (Merrill's, tolerance from the
  orders): the warm-up that follows them and the law through the first; each built ramp
  for the report (a ramp that never rises is not trained)."""
  from bigbatch.measure.critical_batch import warmup_ramp

  points = [(row["tokens"], row["merrill_orders"]) for row in rows]
  follow = warmup_ramp(points, BASE_BATCH, multiple=BASE_BATCH)
  first = next(((t, b) for t, b in points if b), None)
  law = law_ramp(first, tokens) if first else ()
  built = [
    {"name": "cbs_ramp", "tolerance": "the measured critical batches", "measured": points,
     "ramp": follow},
    {"name": "law_ramp", "tolerance": f"B_opt ~ D^{LAW_EXPONENT} through the first",
     "measured": points[:1], "ramp": law},
  ]  # fmt: skip
  labels = {"cbs_ramp": "critical-batch warm-up", "law_ramp": f"B_opt(D) ~ D^{LAW_EXPONENT}"}
  runs = [ramp_run(b["name"], labels[b["name"]], b["ramp"]) for b in built if b["ramp"]]
  return runs, built


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tokens", type=int, default=None, help="tokens per run (10,240,000)")
  parser.add_argument("--quick", action="store_true", help="409,600 tokens, 1 seed")
  parser.add_argument("--quiet", action="store_true", help="leave out each step's cbs table")
  reproduce.study_arguments(parser, workdir="workdir/lm_ramp", out=None, keep=study_lm.KEEP)
  args = parser.parse_args()
  args.tokens = args.tokens or (409_600 if args.quick else 10_240_000)
  args.seeds = args.seeds or (1 if args.quick else 2)
  args.eval_examples = 256  # study_lm.train_one's workdir names it
  if args.quick:
    args.workdir = str(pathlib.Path(args.workdir) / "quick")
  args.out = args.out or ("workdir/lm_ramp/quick/out" if args.quick else "docs/results/lm_ramp")
  if args.tokens < 100 * BASE_BATCH:
    parser.error(f"--tokens: must be >= {100 * BASE_BATCH:,}, got {args.tokens:,}")
  names = [r.name for r in fixed_runs(args.tokens)] + ["cbs_ramp", "law_ramp"]
  reproduce.check_study_arguments(parser, args, names)
  return args


def earlier(out: pathlib.Path, tokens: int) -> tuple[dict, dict | None]:
  """What --out's results.json holds at this budget: {run name: (command, {seed: result})}
  and the branches (None if none); an error where it was made at another budget."""
  path = out / "results.json"
  if not path.exists():
    return {}, None
  saved = json.loads(path.read_text())
  if saved["settings"]["tokens"] != tokens:
    sys.exit(f"--keep: {path} has tokens {saved['settings']['tokens']:,}, this run {tokens:,}")
  runs = {
    name: (run["command"], {int(seed): r for seed, r in run["per_seed"].items()})
    for name, run in saved["runs"].items()
  }
  return runs, saved["settings"].get("cbs")


def main() -> int:
  started = time.monotonic()
  args = parse()

  common, out = common_fields(args.tokens), pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  kept, cbs = earlier(out, args.tokens) if args.keep else ({}, None)
  study, trained = cbs_study(args.tokens, args.quick), {}

  def result(run: reproduce.Run, seed: int) -> dict:
    """A kept seed (same command line), or trained now; the results written after each."""
    command, seeds = kept.get(run.name, (None, {}))
    if command == run.command(common) and seed in seeds:
      value = seeds[seed]
    else:
      value = study_lm.train_one(run, common, seed, args)
      print(f"{run.name} seed {seed}: {study_lm.said(value)}", flush=True)
    trained.setdefault(run, {})[seed] = value
    if cbs is not None:
      write(out, trained, settings(args, common, study, cbs, built), study, started)
    return value

  built: list[dict] = []
  if cbs is None:  # stage 1: the baseline's seed 0 and the branches from its checkpoints
    first = result(fixed_runs(args.tokens)[0], 0)
    where = pathlib.Path(args.workdir) / f"t{args.tokens}_e256" / BASELINE / "seed0"
    cbs = {**measure(args, study, where, first["updates"]), "budget": study.budget}
  extra, built = measured_runs(cbs["rows"], args.tokens)
  runs = [*fixed_runs(args.tokens), *extra]
  for run in runs:  # every kept seed stays in the results, whatever --only picks
    command, seeds = kept.get(run.name, (None, {}))
    if command == run.command(common):
      trained.setdefault(run, {}).update(seeds)
  # the baseline always: it sets the target the others are measured against
  only = args.only
  selected = [r for r in runs if r.name == BASELINE or not only or any(p in r.name for p in only)]
  for seed in range(args.seeds):  # every plan's seed 0 first: a stopped study has them all
    for run in selected:
      result(run, seed)
  write(out, trained, settings(args, common, study, cbs, built), study, started)
  print((out / "results.md").read_text())
  return 0


def settings(args, common: dict, study, cbs: dict, built: list[dict]) -> dict:
  import jax

  devices = jax.devices()
  return {
    "study": "ramp", "model": "lm_mini", "base_batch_tokens": BASE_BATCH,
    "data": "BPE tokens (bpe:2048) of the running Python's standard library",
    "tokens": args.tokens, "seeds": list(range(args.seeds)), "eval_examples": 256,
    "eval_every_tokens": common["eval_every_tokens"],
    "device": f"{devices[0].platform} x {len(devices)}", "jax": jax.__version__,
    "common_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in common.items()},
    "cbs": cbs, "cbs_ramps": built,
  }  # fmt: skip


def write(out: pathlib.Path, trained: dict, settings: dict, study, started: float) -> None:
  """results.json, results.md (the plans' tables, then the branches'), and the figures,
  from the seeds `trained` ({run: {seed: result}}) holds so far."""
  order = [r.name for r in fixed_runs(settings["tokens"])] + ["cbs_ramp", "law_ramp"]
  results = {
    run.name: study_lm.aggregate(run, per_seed, run.command(common_fields(settings["tokens"])))
    for run, per_seed in sorted(trained.items(), key=lambda item: order.index(item[0].name))
  }
  target = report.with_targets(results)
  settings["target_loss"] = target
  settings["train_seconds"] = sum(
    seed["wall_seconds"] for result in results.values() for seed in result["per_seed"].values()
  ) + sum(row["seconds"] for row in settings["cbs"]["rows"])
  settings["invocation_seconds"] = time.monotonic() - started
  (out / "results.json").write_text(
    json.dumps(study_cbs._finite({"settings": settings, "runs": results}), indent=1) + "\n"
  )
  cbs = settings["cbs"]
  text = "\n".join(
    [report.tables(results, settings, target), "", "**The critical batch along the baseline's "
     f"seed 0** (tokens; branches of {cbs['budget']:,} tokens)", "",
     *study_cbs.table(cbs["rows"], study), "", *(f"- `{r['command']}`" for r in cbs["rows"])]
  )  # fmt: skip
  (out / "results.md").write_text(text + "\n")
  report.loss_figure(results, target, out / "loss.png", title="lm_mini, AdamW, BPE tokens")
  report.noise_figure(results, out / "noise.png")
  model = {"rows": cbs["rows"], "trace": cbs["trace"]}
  study_cbs.figure(model, study, out / "cbs.png")
  print(f"wrote {out}/results.json, results.md, loss.png, noise.png, cbs.png", flush=True)


if __name__ == "__main__":
  sys.exit(main())
