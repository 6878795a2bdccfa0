"""Phases decided while training, against fixed plans, on MNIST-1D.

usage: python tools/study_adaptive.py [--seeds 3] [--epochs 20] [--only SUBSTRING ...]
                                      [--workdir workdir/adaptive] [--out docs/results/adaptive]
                                      [--keep]

The same setting as tools/reproduce.py (MNIST-1D at CIFAR-10 size, `cnn1d`,
momentum SGD, 20 epochs, evaluation every epoch) and the same step structure.
Seven schedules, each measuring B_simple over half an epoch of examples:

- the fixed `decay_lr` and `increase_batch` plans (noise scale / 5 at epochs
  6, 12 and 16), with the gradient noise scale B_simple measured in the step;
- `plateau` (the batch grows x5 at a plateau of the smoothed training loss),
  `plateau_lr` (the learning rate falls / 5 there: ReduceLROnPlateau),
  `plateau` with patience 0 (a decision after one evaluation without a 10%
  improvement instead of two), and
  `noise` (the batch grows x5 when the lower bound of the measured B_simple
  passes 8x the batch, the recipe's ratio, and again with 16x),
  from configs/mnist1d_plateau.py, mnist1d_plateau_lr.py and
  mnist1d_noise.py: none of them is told where the schedule's steps are.

Writes results.json, results.md (the table and the measured-vs-planned
table) and two figures to --out: `noise.png` (the measured B_simple of the
fixed plans against their batch) and `adaptive.png` (accuracy and loss
against epochs and updates).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tool: runs, configs, training, figures

FIXED = ("fixed/decay_lr", "fixed/increase_batch")
RUNS = (
  reproduce.Run("fixed/decay_lr", "decaying lr (fixed)", "mnist1d_decay_lr.py", None),
  reproduce.Run(
    "fixed/increase_batch", "increasing batch (fixed)", "mnist1d_increase_batch.py", None
  ),
  reproduce.Run("adaptive/plateau", "plateau: batch grows", "mnist1d_plateau.py", None),
  reproduce.Run(
    "adaptive/plateau_eager",
    "plateau, patience 0: batch grows",
    "mnist1d_plateau.py",
    None,
    (("plan.adapt.patience", 0),),
  ),
  reproduce.Run("adaptive/plateau_lr", "plateau: lr decays", "mnist1d_plateau_lr.py", None),
  reproduce.Run("adaptive/noise", "measured noise scale", "mnist1d_noise.py", None),
  reproduce.Run(
    "adaptive/noise_ratio16",
    "measured noise scale, noise_ratio 16",
    "mnist1d_noise.py",
    None,
    (("plan.adapt.noise_ratio", 16.0),),
  ),
)
# Every run measures B_simple over half an epoch of examples: at a tenth (the
# default) the estimate of |G|² at batch 128 is mostly noise once the loss is
# small, and a decision needs a number it can trust.
STUDY_FIELDS = {"noise.horizon_epochs": 0.5}


def read_rows(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def per_epoch_noise(rows: list[dict]) -> dict[str, list[float]]:
  """The batch and the measured B_simple at each evaluation (every epoch): the rows where
  an evaluation joined its step's training metrics."""
  evals = [r for r in rows if "eval_accuracy" in r and "grad_noise_scale" in r]
  return {
    "epoch": [round(r["epoch"]) for r in evals],
    "batch": [int(r["batch_size"]) for r in evals],
    "measured": [r["grad_noise_scale"] for r in evals],  # None: |G|^2 not resolved
    "low": [r.get("grad_noise_scale_low") for r in evals],  # None: nothing known
    "high": [r.get("grad_noise_scale_high") for r in evals],  # None: no upper bound
  }


def decisions(rows: list[dict]) -> list[dict]:
  """The decisions an adaptive run logged: step, epoch, batch, lr, reason."""
  out = []
  for row in rows:
    if "decision_batch_size" in row:
      out.append(
        {
          "step": row["step"],
          "epoch": row["decision_position"] / 50_000,
          "batch_size": row["decision_batch_size"],
          "learning_rate": row["decision_learning_rate"],
          "reason": row["decision_reason"],
          "measurement": row["decision_measurement"],
        }
      )
  return out


def train_one(run: reproduce.Run, common: dict, seed: int, args) -> dict:
  where = (
    pathlib.Path(args.workdir) / f"e{args.epochs}" / run.name.replace("/", "_") / f"seed{seed}"
  )
  result = reproduce.train(run, reproduce.make_config(run, common, seed, args.data_dir), where)
  rows = read_rows(where)
  result["noise"] = per_epoch_noise(rows)
  result["decisions"] = decisions(rows)
  return result


def _typical(values: list[float | None]) -> float:
  """The median over seeds of a measured value; NaN unless most seeds have one (B_simple
  has none while |G|^2 is not resolved: the gradient is too small against the noise to
  measure at this batch)."""
  known = [v for v in values if v is not None and v == v]
  return statistics.median(known) if len(known) * 2 > len(values) else float("nan")


def _cell(seeds: list[dict], i: int) -> str:
  """An epoch's B_simple over seeds: the medians of the value and its bounds; `> L` where
  most seeds have only a lower bound (|G|^2 not resolved); `—` where nothing is known."""
  value = _typical([s["noise"]["measured"][i] for s in seeds])
  low = _typical([s["noise"].get("low", [None] * (i + 1))[i] for s in seeds])
  high = _typical([s["noise"].get("high", [None] * (i + 1))[i] for s in seeds])
  if value == value and high == high:
    return f"{value:,.0f} [{low:,.0f}, {high:,.0f}]"
  return f"> {low:,.0f}" if low == low else "—"


def noise_table(results: dict[str, dict]) -> list[str]:
  """Measured B_simple (median over seeds) beside the planned batch, per epoch."""
  lines = [
    "| epoch | "
    + " | ".join(f"{results[n]['label']}: batch / measured B_simple" for n in FIXED)
    + " |",
    "|---|" + "---|" * len(FIXED),
  ]
  first = results[FIXED[0]]["per_seed"]
  epochs = next(iter(first.values()))["noise"]["epoch"]
  for i, epoch in enumerate(epochs):
    cells = []
    for name in FIXED:
      seeds = list(results[name]["per_seed"].values())
      cells.append(f"{int(seeds[0]['noise']['batch'][i]):,} / {_cell(seeds, i)}")
    lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
  return lines


def decision_lines(results: dict[str, dict]) -> list[str]:
  lines = []
  for name, result in results.items():
    if not name.startswith("adaptive/"):
      continue
    for seed, values in result["per_seed"].items():
      said = ", ".join(
        f"epoch {d['epoch']:.1f}: batch {d['batch_size']:,} lr {d['learning_rate']:.3g}"
        for d in values["decisions"]
      )
      lines.append(f"- {result['label']}, seed {seed}: {said or 'no decision'}")
  return lines


def tables(results: dict[str, dict], settings: dict) -> str:
  head = "| schedule | test accuracy (mean ± std) | train loss | updates | fewer | wall s |"
  base = results.get("fixed/decay_lr", next(iter(results.values())))["updates"]
  lines = [
    f"MNIST-1D, 50,000 training examples, `cnn1d`, momentum SGD, {settings['epochs']} "
    f"epochs, seeds {settings['seeds']}, {settings['device']}. Updates: the mean over "
    "seeds (adaptive runs decide their own); fewer: decaying lr's updates over the run's.",
    "",
    head,
    "|---|---|---|---|---|---|",
  ]
  for result in results.values():
    lines.append(reproduce._row(result, base))
  if all(n in results for n in FIXED):
    lines += [
      "",
      "**Measured B_simple against the planned batch** (end of each epoch: medians over "
      "seeds of the value and its 95% bounds; > L: in most seeds |G|² was not resolved and "
      "B_simple had only a lower bound, whose median is L; —: nothing known)",
      "",
    ]
    lines += noise_table(results)
  said = decision_lines(results)
  if said:
    lines += ["", "**Decisions**", "", *said]
  return "\n".join(lines)


def noise_figure(results: dict[str, dict], path: pathlib.Path) -> None:
  """The fixed plans' batch and measured B_simple against epochs (log scale): the value
  with its band where |G|^2 is resolved, the lower bound alone where it is not."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
  for color, name in zip(("C0", "C1"), FIXED):
    if name not in results:
      continue
    seeds = list(results[name]["per_seed"].values())
    epochs = seeds[0]["noise"]["epoch"]
    measured = [_typical([s["noise"]["measured"][i] for s in seeds]) for i in range(len(epochs))]
    bounds = [
      [
        _typical([s["noise"].get(k, [None] * len(epochs))[i] for s in seeds])
        for i in range(len(epochs))
      ]
      for k in ("low", "high")
    ]
    label = results[name]["label"]
    ax.fill_between(epochs, *bounds, color=color, alpha=0.2, linewidth=0)
    ax.plot(epochs, measured, "o-", color=color, label=f"{label}: measured B_simple (95% band)")
    # where |G|^2 is not resolved only the lower bound is known: drawn as an upward triangle
    only_low = [(e, lo) for e, v, lo in zip(epochs, measured, bounds[0]) if v != v and lo == lo]
    if only_low:
      ax.plot(*zip(*only_low), "^", color=color, label=f"{label}: lower bound only")
    ax.plot(
      epochs,
      seeds[0]["noise"]["batch"],
      "--",
      color=color,
      drawstyle="steps-pre",
      label=f"{label}: batch",
    )
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("examples")
  ax.grid(True, which="both", alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend()
  ax.set_title("Measured gradient noise scale against the planned batch (MNIST-1D)")
  fig.savefig(path, dpi=90)
  plt.close(fig)


def aggregate(run: reproduce.Run, per_seed: dict[int, dict], command: str) -> dict:
  """reproduce.aggregate, with updates averaged (adaptive runs differ by seed)."""
  result = reproduce.aggregate(run, per_seed, command)
  result["updates"] = round(statistics.fmean(s["updates"] for s in per_seed.values()))
  return result


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=20)
  reproduce.study_arguments(
    parser,
    workdir="workdir/adaptive",
    out="docs/results/adaptive",
    keep="keep the other runs' results from --out's results.json (same epochs and seeds)",
  )
  args = parser.parse_args()
  if args.epochs < 2:
    parser.error(f"--epochs: must be >= 2, got {args.epochs}")
  reproduce.check_study_arguments(parser, args, [r.name for r in RUNS])
  return args


def kept_results(
  out: pathlib.Path,
  settings: dict,
  results: dict,
  *,
  keys: tuple[str, ...] = ("epochs", "seeds"),
  order: tuple[reproduce.Run, ...] = RUNS,
) -> dict:
  """`results` with the other runs of `out/results.json`, in the order of `order`; an error
  if that file was made with other `keys` settings (epochs or seeds)."""
  earlier = json.loads((out / "results.json").read_text())
  for key in keys:
    if earlier["settings"][key] != settings[key]:
      sys.exit(
        f"--keep: {out / 'results.json'} has {key} {earlier['settings'][key]}, "
        f"this run {settings[key]}"
      )
  merged = {**earlier["runs"], **results}
  return {r.name: merged[r.name] for r in order if r.name in merged}


def main() -> int:
  args = parse()
  import jax

  selected = [r for r in RUNS if not args.only or any(p in r.name for p in args.only)]
  common = {**reproduce.common_fields(args.epochs), **STUDY_FIELDS}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  devices = jax.devices()
  settings = {
    "epochs": args.epochs,
    "seeds": list(range(args.seeds)),
    "device": f"{devices[0].platform} x {len(devices)}",
    "jax": jax.__version__,
  }
  trained = reproduce.train_runs(
    selected,
    settings["seeds"],
    lambda run, seed: train_one(run, common, seed, args),
    reproduce.said,
  )
  results = {r.name: aggregate(r, trained[r.name], r.command(common)) for r in selected}
  results = kept_results(out, settings, results) if args.keep else results
  (out / "results.json").write_text(
    json.dumps({"settings": settings, "runs": results}, indent=1) + "\n"
  )
  text = tables(results, settings)
  (out / "results.md").write_text(text + "\n")
  print(text)
  noise_figure(results, out / "noise.png")
  title = f"Fixed and adaptive phases on MNIST-1D, momentum SGD ({args.epochs} epochs)"
  reproduce.figure(results, list(results), title, out / "adaptive.png")
  print(f"wrote {out}/results.json, results.md, noise.png and adaptive.png", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
