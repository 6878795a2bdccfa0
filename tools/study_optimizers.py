"""The optimizers built for large batches on MNIST-1D: SGD-momentum, LARS, AdamW and LAMB.

usage: python tools/study_optimizers.py [--quick] [--seeds 3] [--only SUBSTRING ...]
                                        [--workdir workdir/optimizers]
                                        [--out docs/results/optimizers] [--keep]

The setting of tools/reproduce.py (MNIST-1D at CIFAR-10 size, `cnn1d`, 20
epochs, the noise scale / 5 at epochs 6, 12 and 16, evaluation every epoch),
each optimizer from tools/mnist1d_optimizers.py. Three stages, each one
`bigbatch train` per run (its command line is in results.json):

1. `large/`: batch 8,192 from the start (6 updates an epoch) with a 2-epoch
   linear warm-up, the step schedule kept, a 3-rate sweep per optimizer on
   seed 0; the best rate (highest final test accuracy) is then moved to batch
   16,000 by the optimizer's family rule (SGD: lr x k; LARS, AdamW, LAMB:
   lr x sqrt(k), docs/OPTIMIZERS.md), one rate there.
2. `grow/`: LARS and LAMB at batch 128, their best large-batch rate moved to
   128 by the same square-root rule, as the decaying-lr plan and as the
   increasing-batch plan under `plan.adam_rule=sqrt` (128 -> 640 -> 3,200 ->
   16,000, the rate / sqrt(5) at each growth).
3. the other seeds of every run at its chosen rate.

Every run keeps its workdir; a finished run is read back and an interrupted
one resumes, so the tool can be stopped and started again, and results.json
and results.md are rewritten after every run (a stopped study still reports
what it has; `--report` rewrites them from the finished runs, training
nothing). `--keep` counts as finished every seed that --out's results.json
already holds under the same command line, so a study whose workdirs are gone
trains only what it lacks. `--only` picks among the chosen runs of stages 2 and 3 (the sweep
always runs: it chooses their rates). `--quick`: 2 epochs, one seed, the middle
rate only, written to workdir/optimizers/quick unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tool: training, read-back, flags, study arguments

TOOLS = pathlib.Path(__file__).resolve().parent
CONFIG = "tools/mnist1d_optimizers.py"
LABELS = {"momentum": "SGD-momentum", "lars": "LARS", "adamw": "AdamW", "lamb": "LAMB"}
# Rates 3x apart, around each optimizer's usual range at this batch: SGD's linear
# scaling from 0.1 at 128 gives 6.4 at 8,192; MLPerf's LARS runs 29 at 32,768;
# Adam's 1e-3 at 128 is 8e-3 at 8,192 by the square-root rule; LAMB's relative
# step is its rate (BERT: 6e-3 at 65,536, shorter runs than this one take more).
SWEEP = {
  "momentum": (1.0, 3.0, 10.0),
  "lars": (3.0, 10.0, 30.0),
  "adamw": (3e-3, 1e-2, 3e-2),
  "lamb": (1e-2, 3e-2, 1e-1),
}
# The family's rule: a batch x k takes the rate x k**power (docs/OPTIMIZERS.md).
POWER = {"momentum": 1.0, "lars": 0.5, "adamw": 0.5, "lamb": 0.5}
SWEEP_BATCH, LARGER_BATCH, SMALL_BATCH = 8192, 16_000, 128
GROWN = ("lars", "lamb")
# Large batches from the start take Goyal et al.'s linear warm-up: 2 of the 20 epochs.
WARMUP_FRACTION = 0.1
# The paper's baseline as measured in docs/RESULTS.md (tools/reproduce.py, 3 seeds):
# quoted, not retrained.
BASELINE = {"accuracy": (0.9908, 0.0008), "updates": 7813, "wall": 48.4}


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: an optimizer at a batch and rate, under a plan."""

  optimizer: str
  batch: int
  lr: float
  plan: str = "decay_lr"  # or increase_batch (under plan.adam_rule=sqrt)

  @property
  def name(self) -> str:
    stage = "grow" if self.batch == SMALL_BATCH else "large"
    return f"{stage}/b{self.batch}/{self.optimizer}/{self.plan}/lr{self.lr:g}"

  def overrides(self, epochs: int) -> dict[str, object]:
    fields: dict[str, object] = {"batch_size": self.batch, "optimizer.learning_rate": self.lr}
    if self.batch != SMALL_BATCH:
      fields["schedule.warmup_epochs"] = WARMUP_FRACTION * epochs
    if self.plan == "increase_batch":
      fields.update({"plan.strategy": "increase_batch", "plan.adam_rule": "sqrt"})
    return fields

  def command(self, common: dict[str, object], seed: int) -> str:
    fields = {**common, **self.overrides(common["num_epochs"]), "seed": seed}
    args = " ".join(f"--config.{key}={reproduce._flag(value)}" for key, value in fields.items())
    return f"bigbatch train --config {CONFIG}:{self.optimizer} --noprogress {args}"


def moved(lr: float, optimizer: str, batch: int) -> float:
  """`lr`, found best at the sweep's batch, moved to `batch` by the family's rule
  (3 significant digits, so that a command line carries it exactly)."""
  return float(f"{lr * (batch / SWEEP_BATCH) ** POWER[optimizer]:.3g}")


def make_config(run: Run, common: dict[str, object], seed: int, data_dir: str | None):
  from bigbatch.config import load_sibling

  module = load_sibling(str(TOOLS / "mnist1d_optimizers.py"), "mnist1d_optimizers")
  config = module.get_config(run.optimizer)
  fields = {**common, **run.overrides(common["num_epochs"]), "seed": seed}
  config.update_from_flattened_dict(fields)
  if data_dir:
    config.dataset.data_dir = data_dir
  return config


class Study:
  """Trains runs (or reads them back), keeping every finished seed for the report."""

  def __init__(self, args, common: dict[str, object], settings: dict):
    self.args, self.common, self.settings = args, common, settings
    self.done: dict[str, dict] = {}  # run name -> {"run": Run, "seeds": {seed: result}}

  def keep(self, out: pathlib.Path) -> None:
    """Every seed of `out/results.json` whose run has the command line this study would
    give it (same epochs, common fields and rate) is taken as finished."""
    earlier = json.loads((out / "results.json").read_text())["runs"]
    for optimizer, batch, lr, plan in (
      (r["optimizer"], r["batch"], r["lr"], r["plan"]) for r in earlier.values()
    ):
      run = Run(optimizer, batch, lr, plan)
      kept = earlier.get(run.name)
      if kept and kept["command"] == run.command(self.common, 0):
        seeds = {int(s): result for s, result in kept["per_seed"].items()}
        self.done[run.name] = {"run": run, "seeds": seeds}

  def train(self, run: Run, seed: int) -> dict:
    """`run`'s result for `seed`, trained unless finished; under --report a run that has
    not finished scores 0 (it is then never chosen) and is left out of the tables."""
    entry = self.done.setdefault(run.name, {"run": run, "seeds": {}})
    if seed not in entry["seeds"]:
      where = pathlib.Path(self.args.workdir) / f"e{self.args.epochs}" / run.name.replace("/", "_")
      if self.args.report and not (where / f"seed{seed}" / "summary.json").exists():
        return {"accuracy": 0.0}
      config = make_config(run, self.common, seed, self.args.data_dir)
      result = reproduce.train(None, config, where / f"seed{seed}")
      entry["seeds"][seed] = result
      print(f"{run.name} seed {seed}: {reproduce.said(result)}", flush=True)
      write(self, pathlib.Path(self.args.out))
    return entry["seeds"][seed]

  def best(self, optimizer: str, rates: tuple[float, ...]) -> float:
    """The rate with the highest seed-0 test accuracy (the first on a tie). A best rate at
    an end of the sweep is not yet a best rate: the sweep goes one step past that end
    (at most once), which is why a sweep in the tables may hold 4 rates."""
    rates = tuple(rates)
    scores = {lr: self.train(Run(optimizer, SWEEP_BATCH, lr), 0)["accuracy"] for lr in rates}
    top = max(rates, key=lambda lr: scores[lr])
    if len(rates) > 1 and top in (rates[0], rates[-1]):
      step = rates[1] / rates[0] if top == rates[0] else rates[-1] / rates[-2]
      extra = float(f"{top / step if top == rates[0] else top * step:.3g}")
      scores[extra] = self.train(Run(optimizer, SWEEP_BATCH, extra), 0)["accuracy"]
      top = max(scores, key=lambda lr: scores[lr])
    self.settings["swept"][optimizer] = sorted(scores)
    return top


def stages(study: Study, optimizers: list[str], seeds: list[int]) -> None:
  """Sweep, then each chosen rate's seed 0, then the other seeds (the order that leaves
  the most to report if the study is stopped early)."""
  quick = study.args.quick
  chosen: list[Run] = []
  for optimizer in optimizers:
    rates = SWEEP[optimizer][1:2] if quick else SWEEP[optimizer]
    lr = study.best(optimizer, rates)
    study.settings["best_rates"][optimizer] = lr
    chosen.append(Run(optimizer, SWEEP_BATCH, lr))
  for optimizer in optimizers:
    lr = study.settings["best_rates"][optimizer]
    if optimizer in GROWN:
      small = moved(lr, optimizer, SMALL_BATCH)
      chosen += [
        Run(optimizer, SMALL_BATCH, small, plan) for plan in ("decay_lr", "increase_batch")
      ]
    chosen.append(Run(optimizer, LARGER_BATCH, moved(lr, optimizer, LARGER_BATCH)))
  chosen = [r for r in chosen if not study.args.only or any(p in r.name for p in study.args.only)]
  study.settings["chosen"] = [r.name for r in chosen]
  # seed 0 of everything, then the other seeds, batch 16,000's last: it is one rate, not
  # swept, so its spread matters least
  order = [(r, 0) for r in chosen]
  for last in (False, True):
    order += [(r, s) for s in seeds[1:] for r in chosen if (r.batch == LARGER_BATCH) == last]
  for run, seed in order:
    study.train(run, seed)


def summarise(run: Run, per_seed: dict[int, dict], command: str) -> dict:
  seeds = sorted(per_seed)
  mean, std = reproduce._mean_std([per_seed[s]["accuracy"] for s in seeds])
  return {
    "name": run.name,
    "optimizer": run.optimizer,
    "batch": run.batch,
    "lr": run.lr,
    "plan": run.plan,
    "command": command,
    "seeds": seeds,
    "accuracy_mean": mean,
    "accuracy_std": std,
    "train_loss_mean": statistics.fmean(per_seed[s]["train_loss"] for s in seeds),
    "updates": per_seed[seeds[0]]["updates"],
    "wall_seconds_mean": statistics.fmean(per_seed[s]["wall_seconds"] for s in seeds),
    "per_seed": {str(s): per_seed[s] for s in seeds},
  }


def accuracy(result: dict) -> str:
  n = len(result["seeds"])
  spread = f" ± {result['accuracy_std']:.4f}" if n > 1 else ""
  return f"{result['accuracy_mean']:.4f}{spread} ({n} seed{'s' if n > 1 else ''})"


def sweep_table(results: dict[str, dict], best: dict[str, float], swept: dict) -> list[str]:
  """Seed 0 of every rate at the sweep's batch, the chosen one in bold."""
  lines = [
    f"**Learning-rate sweep at batch {SWEEP_BATCH:,}, seed 0**",
    "",
    "| optimizer | batch | lr | test accuracy (seed 0) | train loss | updates | wall s |",
    "|---|---|---|---|---|---|---|",
  ]
  for optimizer, rates in swept.items():
    for lr in rates:
      result = results.get(Run(optimizer, SWEEP_BATCH, lr).name)
      if result is None or "0" not in result["per_seed"]:
        continue
      seed0 = result["per_seed"]["0"]
      mark = "**" if best.get(optimizer) == lr else ""
      lines.append(
        f"| {LABELS[optimizer]} | {SWEEP_BATCH:,} | {mark}{lr:g}{mark} "
        f"| {seed0['accuracy']:.4f} | {seed0['train_loss']:.4f} | {seed0['updates']:,} "
        f"| {seed0['wall_seconds']:.1f} |"
      )
  edge = [LABELS[o] for o, lr in best.items() if lr in (swept[o][0], swept[o][-1])]
  if edge:
    lines += ["", f"The chosen rate is at the edge of the sweep for: {', '.join(edge)}."]
  return lines + [""]


def chosen_table(results: dict[str, dict], names: list[str], title: str) -> list[str]:
  """Each chosen run over its seeds, against the baseline's updates."""
  base = BASELINE["updates"]
  lines = [
    title,
    "",
    "| optimizer | batch | plan | lr | test accuracy (mean ± std) | train loss | updates "
    "| fewer | wall s |",
    "|---|---|---|---|---|---|---|---|---|",
    f"| SGD-momentum (baseline, docs/RESULTS.md) | 128 | decay_lr | 0.1 "
    f"| {BASELINE['accuracy'][0]:.4f} ± {BASELINE['accuracy'][1]:.4f} (3 seeds) | 0.0150 "
    f"| {base:,} | 1.00x | {BASELINE['wall']} |",
  ]
  for name in names:
    if name not in results:
      continue
    r = results[name]
    grows = r["plan"] == "increase_batch"
    plan = "increase_batch (sqrt)" if grows else r["plan"]
    batch = f"{r['batch']:,} -> {LARGER_BATCH:,}" if grows else f"{r['batch']:,}"
    lines.append(
      f"| {LABELS[r['optimizer']]} | {batch} | {plan} | {r['lr']:g} | {accuracy(r)} "
      f"| {r['train_loss_mean']:.4f} | {r['updates']:,} | {base / r['updates']:.1f}x "
      f"| {r['wall_seconds_mean']:.1f} |"
    )
  return lines + [""]


def tables(results: dict[str, dict], settings: dict) -> str:
  chosen = settings.get("chosen", [])
  header = (
    f"MNIST-1D, 50,000 training examples, `cnn1d`, {settings['epochs']} epochs, the "
    f"noise scale / 5 at 30%, 60% and 80% of them; {settings['device']}. Train loss: the "
    "first 5,000 training examples at the end. Fewer: the baseline's updates over the run's. "
    "Wall s: training and evaluation of one run, mean over its seeds."
  )
  lines = [header, ""] + sweep_table(results, settings["best_rates"], settings["swept"])
  large = [n for n in chosen if n.startswith("large/") and n in results]
  grow = [n for n in chosen if n.startswith("grow/")]
  title = "**Large batch from the start, at the chosen rate**"
  order = list(SWEEP)  # the batches in turn, each in the sweep's order of optimizers
  large.sort(key=lambda n: (results[n]["batch"], order.index(results[n]["optimizer"])))
  lines += chosen_table(results, large, title)
  lines += chosen_table(results, grow, "**Increasing batch with LARS and LAMB (batch 128 start)**")
  return "\n".join(lines)


def write(study: Study, out: pathlib.Path) -> None:
  """results.json (every seed) and results.md (the tables), from what has finished."""
  results = {
    name: summarise(e["run"], e["seeds"], e["run"].command(study.common, 0))
    for name, e in study.done.items()
    if e["seeds"]
  }
  settings = dict(study.settings)
  settings["train_seconds"] = sum(
    s["wall_seconds"] for r in results.values() for s in r["per_seed"].values()
  )
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(
    json.dumps({"settings": settings, "runs": results}, indent=1) + "\n"
  )
  (out / "results.md").write_text(tables(results, settings) + "\n")


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, 1 rate")
  parser.add_argument(
    "--report", action="store_true", help="train nothing: report the runs that have finished"
  )
  parser.add_argument(
    "--optimizers", nargs="*", default=list(SWEEP), choices=list(SWEEP), help="default: all"
  )
  reproduce.study_arguments(
    parser,
    workdir="workdir/optimizers",
    out="docs/results/optimizers",
    keep="count the seeds in --out's results.json as finished (same command lines)",
  )
  args = parser.parse_args()
  args.seeds = args.seeds or (1 if args.quick else None)
  args.epochs = 2 if args.quick else 20
  if args.quick and args.out == "docs/results/optimizers":
    args.out = "workdir/optimizers/quick"  # a smoke run never replaces the study's results
  names = [Run(o, b, 1.0).name for o in SWEEP for b in (SWEEP_BATCH, LARGER_BATCH, SMALL_BATCH)]
  reproduce.check_study_arguments(parser, args, names)
  return args


def main() -> int:
  args = parse()
  import jax

  devices = jax.devices()
  common = reproduce.common_fields(args.epochs)
  settings = {
    "epochs": args.epochs,
    "seeds": list(range(args.seeds)),
    "device": f"{devices[0].platform} x {len(devices)}",
    "jax": jax.__version__,
    "sweep": {k: list(v) for k, v in SWEEP.items()},
    "best_rates": {},
    "swept": {},
    "common_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in common.items()},
  }
  study = Study(args, common, settings)
  if args.keep:
    study.keep(pathlib.Path(args.out))
  start = time.monotonic()
  stages(study, args.optimizers, settings["seeds"])
  if not args.report:  # a report's seconds are reading, not the study's
    settings["study_seconds"] = time.monotonic() - start
  write(study, pathlib.Path(args.out))
  print((pathlib.Path(args.out) / "results.md").read_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
