"""Reproduces the paper's sections 5.1 and 5.2 on MNIST-1D with bigbatch's trainer.

usage: python tools/reproduce.py [--quick] [--seeds 3] [--only SUBSTRING ...]
                                 [--workdir workdir/reproduce] [--out docs/results]

MNIST-1D at CIFAR-10 size (50,000 training examples, 12,500 test), the `cnn1d`
model, and the paper's step structure scaled from 200 epochs to 20: the noise
scale drops 5x at epochs 6, 12 and 16. Each run is an ordinary `bigbatch train`
(its command line is printed in the table), run in this process on the default
devices:

- 5.1: decaying lr / hybrid / increasing batch, each with momentum, Nesterov,
  plain SGD (lr / (1 - m)) and Adam.
- 5.2 (momentum SGD, batch cap 5,120): original / increasing batch /
  increased initial lr / increased momentum.
- control: the decaying schedule's final noise scale from the start (lr
  0.1 / 125, constant), which must end measurably worse for the comparison
  to mean anything.

Every run keeps its workdir; a run whose `summary.json` exists is read back,
and an interrupted one resumes from its checkpoint, so the tool can be stopped
and started again. Writes `results.json`, the tables as `results.md` and one
figure per optimizer (`5_1_<optimizer>.png`) and one for 5.2 (`5_2.png`) to
--out. `--quick` runs 5 epochs and one seed: a smoke run of a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OPTIMIZERS = ("momentum", "nesterov", "sgd", "adam")
SCHEDULES_5_1 = ("decay_lr", "hybrid", "increase_batch")
LABELS_5_1 = {"decay_lr": "decaying lr", "hybrid": "hybrid", "increase_batch": "increasing batch"}
# The paper's CIFAR-10 results for section 5.2, beside ours in the table.
PAPER_5_2 = {
  "original": ("~80,000", "94.3%"),
  "increase_batch": ("~29,000", "94.4%"),
  "initial_lr": ("<6,500", "94.5%"),
  "momentum": ("<2,500", "93.3%"),
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One schedule: a recipe config, its variant and overrides (as on the command line)."""

  name: str  # e.g. "5.1/adam/hybrid"
  label: str
  config_file: str
  variant: str | None
  overrides: tuple[tuple[str, object], ...] = ()

  def command(self, common: dict[str, object], seed: int | None = None) -> str:
    config = f"configs/{self.config_file}" + (f":{self.variant}" if self.variant else "")
    fields = {**common, **dict(self.overrides)}
    if seed is not None:
      fields["seed"] = seed
    args = " ".join(f"--config.{key}={_flag(value)}" for key, value in fields.items())
    return f"bigbatch train --config {config} {args}"


def _flag(value: object) -> str:
  if isinstance(value, tuple):
    return "'" + _literal(value) + "'"
  return f"{value:g}" if isinstance(value, float) else str(value)


def _literal(value: object) -> str:
  """A tuple as Python reads it back ((a,) for one entry), numbers as %g."""
  if isinstance(value, tuple):
    inner = ",".join(_literal(v) for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def runs() -> list[Run]:
  """Every schedule the reproduction trains, 5.1 first."""
  out = []
  for optimizer in OPTIMIZERS:
    for schedule in SCHEDULES_5_1:
      out.append(
        Run(
          f"5.1/{optimizer}/{schedule}",
          LABELS_5_1[schedule],
          f"mnist1d_{schedule}.py",
          None if optimizer == "momentum" else optimizer,
        )
      )
  cap = (("plan.max_batch_size", 5120),)
  out += [
    Run("5.2/increase_batch", "increasing batch", "mnist1d_hybrid.py", None, cap),
    Run(
      "5.2/initial_lr",
      "increased initial lr",
      "mnist1d_hybrid.py",
      None,
      (("optimizer.learning_rate", 0.5), ("batch_size", 640), *cap),
    ),
    Run(
      "5.2/momentum",
      "increased momentum",
      "mnist1d_hybrid.py",
      None,
      (
        ("optimizer.learning_rate", 0.5),
        ("optimizer.momentum", 0.98),
        ("batch_size", 3200),
        *cap,
      ),
    ),
    Run(
      "control/final_noise",
      "final noise scale from the start",
      "mnist1d_decay_lr.py",
      None,
      (("schedule.name", "constant"), ("optimizer.learning_rate", 0.1 / 125)),
    ),
  ]
  return out


# 5.2's "original" is 5.1's decaying lr with momentum: the same run.
ORIGINAL_5_2 = "5.1/momentum/decay_lr"


def common_fields(epochs: int) -> dict[str, object]:
  """Overrides every run shares: the scaled step structure and the logging."""
  return {
    "num_epochs": epochs,
    "schedule.boundaries": (0.3 * epochs, 0.6 * epochs, 0.8 * epochs),
    "eval_every_epochs": 1.0,
    "eval_train_examples": 5000,
    "checkpoint_every_steps": 100_000,  # phase boundaries and the end only
  }


def make_config(run: Run, common: dict[str, object], seed: int, data_dir: str | None):
  from bigbatch.config import load_sibling

  module = load_sibling(str(CONFIGS / run.config_file), pathlib.Path(run.config_file).stem)
  config = module.get_config(run.variant) if run.variant else module.get_config()
  config.update_from_flattened_dict({**common, **dict(run.overrides), "seed": seed})
  if data_dir:
    config.dataset.data_dir = data_dir
  return config


def train_once(config, workdir: pathlib.Path) -> dict:
  """Trains `config` in `workdir` unless its `summary.json` exists (an interrupted run
  resumes from its checkpoint), the trainer's output in `workdir/log.txt`; the summary."""
  from bigbatch import train as bbtrain

  done = workdir / "summary.json"
  if not done.exists():
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "log.txt", "a") as log, contextlib.redirect_stdout(log):
      bbtrain.train_and_evaluate(config, workdir, progress=False)
  return json.loads(done.read_text())


def train(run: Run, config, workdir: pathlib.Path) -> dict:
  """Trains one run (or reads back a finished one); its summary and eval curve."""
  summary = train_once(config, workdir)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval_accuracy" in r]
  return {
    "accuracy": summary["final_test_accuracy"],
    "test_loss": summary["final_test_loss"],
    "train_loss": summary["final_train_eval_loss"],
    "updates": summary["updates"],
    "wall_seconds": summary["wall_seconds"],
    "curve": {
      "epoch": [r["epoch"] for r in evals],
      "step": [r["step"] for r in evals],
      "test_accuracy": [r["eval_accuracy"] for r in evals],
      "train_loss": [r["train_eval_loss"] for r in evals],
    },
  }


def _mean_std(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(run: Run, per_seed: dict[int, dict], command: str) -> dict:
  seeds = sorted(per_seed)
  accuracy = _mean_std([per_seed[s]["accuracy"] for s in seeds])
  curves = [per_seed[s]["curve"] for s in seeds]
  mean_curve = {
    key: [statistics.fmean(c[key][i] for c in curves) for i in range(len(curves[0][key]))]
    for key in curves[0]
  }
  return {
    "name": run.name,
    "label": run.label,
    "command": command,
    "seeds": seeds,
    "accuracy_mean": accuracy[0],
    "accuracy_std": accuracy[1],
    "train_loss_mean": statistics.fmean(per_seed[s]["train_loss"] for s in seeds),
    "updates": per_seed[seeds[0]]["updates"],
    "wall_seconds_mean": statistics.fmean(per_seed[s]["wall_seconds"] for s in seeds),
    "curve": mean_curve,
    "per_seed": {str(s): per_seed[s] for s in seeds},
  }


def _row(result: dict, baseline_updates: int, extra: tuple[str, ...] = ()) -> str:
  return (
    f"| {result['label']} | {result['accuracy_mean']:.4f} ± {result['accuracy_std']:.4f} "
    f"| {result['train_loss_mean']:.4f} | {result['updates']:,} "
    f"| {baseline_updates / result['updates']:.2f}x | {result['wall_seconds_mean']:.1f} |"
    + "".join(f" {e} |" for e in extra)
  )


def tables(results: dict[str, dict], settings: dict) -> str:
  """The markdown tables of results.md."""
  head = "| schedule | test accuracy (mean ± std) | train loss | updates | fewer | wall s |"
  rule = "|---|---|---|---|---|---|"
  lines = [
    f"MNIST-1D, {settings['train_examples']:,} training examples, `cnn1d`, "
    f"{settings['epochs']} epochs, seeds {settings['seeds']}, {settings['device']}. "
    "Train loss: the first 5,000 training examples at the end. Fewer: the decaying "
    "schedule's updates over the run's.",
    "",
  ]
  # with --only, a table holds the runs that were trained ("fewer" is against the
  # decaying schedule where it ran, else against the table's first row)
  for optimizer in OPTIMIZERS:
    names = [f"5.1/{optimizer}/{s}" for s in SCHEDULES_5_1 if f"5.1/{optimizer}/{s}" in results]
    if not names:
      continue
    base = results[names[0]]["updates"]
    lines += [f"**5.1, {optimizer}**", "", head, rule]
    lines += [_row(results[n], base) for n in names]
    lines.append("")
  names = [ORIGINAL_5_2, "5.2/increase_batch", "5.2/initial_lr", "5.2/momentum"]
  rows = [(name, key) for name, key in zip(names, PAPER_5_2) if name in results]
  if any(name.startswith("5.2/") for name, _ in rows):
    base = results[rows[0][0]]["updates"]
    lines += [
      "**5.2, momentum SGD, batch cap 5,120** (paper: CIFAR-10, 200 epochs)",
      "",
      head + " paper updates | paper accuracy |",
      rule + "---|---|",
    ]
    for name, key in rows:
      result = dict(results[name], label="original") if name == ORIGINAL_5_2 else results[name]
      lines.append(_row(result, base, PAPER_5_2[key]))
    lines.append("")
  if "control/final_noise" in results and ORIGINAL_5_2 in results:
    base = results[ORIGINAL_5_2]["updates"]
    lines += ["**Control: does the schedule matter?**", "", head, rule]
    lines += [_row(results[ORIGINAL_5_2], base), _row(results["control/final_noise"], base)]
    gap = results[ORIGINAL_5_2]["accuracy_mean"] - results["control/final_noise"]["accuracy_mean"]
    lines += ["", f"Decaying lr minus final noise scale from the start: {gap:+.4f}.", ""]
  return "\n".join(lines)


def figure(results: dict[str, dict], names: list[str], title: str, path: pathlib.Path) -> None:
  """Test accuracy and train loss against epochs and against updates (2 x 2).

  Lines are the mean over seeds, bands their min to max. The accuracy axis
  is fitted to the schedules being compared (a control far below is clipped;
  the legend gives its final accuracy).
  """
  import matplotlib
  import matplotlib.ticker

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  shown = [n for n in names if n in results]
  fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
  for name in shown:
    result = results[name]
    control = name.startswith("control")
    label = result["label"] + (f" (ends at {result['accuracy_mean']:.3f})" if control else "")
    curves = [seed["curve"] for seed in result["per_seed"].values()]
    for column, x_key in enumerate(("epoch", "step")):
      x = result["curve"][x_key]
      for row, y_key in enumerate(("test_accuracy", "train_loss")):
        ax = axes[row, column]
        ax.plot(x, result["curve"][y_key], "--" if control else "-", label=label)
        if len(curves) > 1:
          low = [min(c[y_key][i] for c in curves) for i in range(len(x))]
          high = [max(c[y_key][i] for c in curves) for i in range(len(x))]
          ax.fill_between(x, low, high, alpha=0.2)
  # the accuracy axis spans the compared schedules (the control may fall below it)
  compared = [
    a for n in shown if not n.startswith("control") for a in results[n]["curve"]["test_accuracy"]
  ]
  low, high = (min(compared), max(compared)) if compared else (0.0, 1.0)
  margin = 0.05 * (high - low) + 1e-4
  for column, x_label in enumerate(("epochs", "parameter updates")):
    axes[0, column].set_ylabel("test accuracy")
    axes[0, column].set_ylim(low - margin, min(1.0, high + margin))
    axes[1, column].set_ylabel("training cross-entropy (5,000 training examples)")
    axes[1, column].set_yscale("log")
    for row in range(2):
      ax = axes[row, column]
      ax.set_xlabel(x_label)
      ax.grid(alpha=0.3)
      if column == 1:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3))
  fig.suptitle(title)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def said(result: dict) -> str:
  """A trained seed of an image-model study, in one line."""
  return (
    f"test accuracy {result['accuracy']:.4f}, {result['updates']:,} updates, "
    f"{result['wall_seconds']:.1f} s"
  )


def study_arguments(
  parser: argparse.ArgumentParser, *, workdir: str, out: str | None, keep: str | None = None
) -> None:
  """The arguments every study shares: seeds, which runs, where they train, the tfds data,
  where results go, and (`keep`: its help) keeping the other runs of an earlier results.json."""
  parser.add_argument("--seeds", type=int, default=None, help="seeds per run (default 3)")
  parser.add_argument(
    "--only", nargs="*", default=(), help="train only runs whose name contains one of these"
  )
  parser.add_argument("--workdir", default=workdir, help="one subdirectory per run")
  parser.add_argument("--data-dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR)")
  parser.add_argument("--out", default=out, help="where results are written")
  if keep:
    parser.add_argument("--keep", action="store_true", help=keep)


def check_study_arguments(parser: argparse.ArgumentParser, args, names: list[str]) -> None:
  """Seeds (3 unless given) at least 1, and each --only pattern naming one of `names`."""
  args.seeds = 3 if args.seeds is None else args.seeds
  if args.seeds < 1:
    parser.error(f"--seeds: must be >= 1, got {args.seeds}")
  for pattern in args.only:
    if not any(pattern in name for name in names):
      parser.error(f"--only: {pattern!r} matches no run; runs: {', '.join(names)}")


def train_runs(selected: list[Run], seeds: list[int], train_seed, said) -> dict[str, dict]:
  """`train_seed(run, seed)` for each run and seed, a progress line `said(result)` after
  each; {run name: {seed: result}}."""
  out: dict[str, dict] = {}
  total, done = len(selected) * len(seeds), 0
  for run in selected:
    out[run.name] = {}
    for seed in seeds:
      result = out[run.name][seed] = train_seed(run, seed)
      done += 1
      print(f"[{done}/{total}] {run.name} seed {seed}: {said(result)}", flush=True)
  return out


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="5 epochs, 1 seed (a smoke run)")
  parser.add_argument("--epochs", type=int, default=None, help="default 20 (--quick: 5)")
  study_arguments(parser, workdir="workdir/reproduce", out="docs/results")
  args = parser.parse_args()
  args.seeds = args.seeds or (1 if args.quick else None)
  args.epochs = args.epochs or (5 if args.quick else 20)
  if args.epochs < 2:
    parser.error(f"--epochs: must be >= 2, got {args.epochs}")
  check_study_arguments(parser, args, [r.name for r in runs()])
  return args


def main() -> int:
  args = parse()
  import jax

  selected = [r for r in runs() if not args.only or any(p in r.name for p in args.only)]
  common = common_fields(args.epochs)
  workdir, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  devices = jax.devices()
  settings = {
    "epochs": args.epochs,
    "seeds": list(range(args.seeds)),
    "train_examples": 50_000,
    "device": f"{devices[0].platform} x {len(devices)}",
    "jax": jax.__version__,
    "common_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in common.items()},
  }

  def train_seed(run: Run, seed: int) -> dict:
    where = workdir / f"e{args.epochs}" / run.name.replace("/", "_") / f"seed{seed}"
    return train(run, make_config(run, common, seed, args.data_dir), where)

  trained = train_runs(selected, settings["seeds"], train_seed, said)
  results = {r.name: aggregate(r, trained[r.name], r.command(common)) for r in selected}
  settings["train_seconds"] = sum(
    seed["wall_seconds"] for result in results.values() for seed in result["per_seed"].values()
  )
  (out / "results.json").write_text(
    json.dumps({"settings": settings, "runs": results}, indent=1) + "\n"
  )
  table = tables(results, settings)
  (out / "results.md").write_text(table + "\n")
  print(table)
  for optimizer in OPTIMIZERS:
    names = [f"5.1/{optimizer}/{s}" for s in SCHEDULES_5_1]
    if optimizer == "momentum":
      names.append("control/final_noise")
    if any(n in results for n in names):
      title = f"Section 5.1 on MNIST-1D, {optimizer} ({args.epochs} epochs)"
      figure(results, names, title, out / f"5_1_{optimizer}.png")
  names = [ORIGINAL_5_2, "5.2/increase_batch", "5.2/initial_lr", "5.2/momentum"]
  if any(n in results for n in names):
    relabelled = {**results}
    if ORIGINAL_5_2 in results:
      relabelled[ORIGINAL_5_2] = dict(results[ORIGINAL_5_2], label="original")
    title = f"Section 5.2 on MNIST-1D, batch cap 5,120 ({args.epochs} epochs)"
    figure(relabelled, names, title, out / "5_2.png")
  print(f"wrote {out}/results.json, results.md and the figures", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
