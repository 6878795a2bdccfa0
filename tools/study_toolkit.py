"""The learning-rate toolkit on MNIST-1D: PowerSign/AddSign, snapshot ensembles, sharpness.

usage: python tools/study_toolkit.py [--seeds 3] [--epochs 20] [--only sign|snapshots|sharpness]
                                     [--workdir workdir/adaptive] [--out docs/results/toolkit]

The setting of tools/study_adaptive.py (MNIST-1D at CIFAR-10 size, `cnn1d`, 20
epochs, evaluation every epoch), sharing its workdirs, so that its fixed
`decay_lr` and `increase_batch` runs are trained once for both tools:

- sign: momentum SGD against PowerSign and AddSign (configs/mnist1d_sign.py)
  on the decaying schedule;
- snapshots: SGDR (4 cycles of 5 epochs, momentum SGD, batch 128); the
  ensemble of its 4 cycle-end snapshots (`bigbatch ensemble`) against its
  final model and against the step schedule's model, same epochs;
- sharpness: fixed batch 128 (the decaying schedule), a fixed large batch
  (16,000, the increasing plan's last, from the first step at lr 0.1) and
  the increasing-batch plan: test accuracy, the top Hessian eigenvalue and
  Keskar's epsilon-sharpness (`bigbatch sharpness`) of each final model.

Writes results.json and results.md (the three tables) to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tools: runs, configs, training
import study_adaptive

Run = reproduce.Run
SIGN = (
  study_adaptive.RUNS[0],  # fixed/decay_lr: momentum SGD
  Run("sign/power_sign", "PowerSign", "mnist1d_sign.py", "power_sign"),
  Run("sign/add_sign", "AddSign", "mnist1d_sign.py", "add_sign"),
)
SNAPSHOTS = Run(
  "snapshots/sgdr",
  "SGDR, 4 cycles",
  "mnist1d_decay_lr.py",
  None,
  (("schedule.name", "sgdr"), ("schedule.cycle_epochs", 5.0), ("schedule.cycle_mult", 1.0)),
)
SHARPNESS = (
  study_adaptive.RUNS[0],
  Run(
    "sharpness/fixed_large",
    "fixed batch 16,000",
    "mnist1d_decay_lr.py",
    None,
    (("batch_size", 16_000), ("schedule.name", "constant")),
  ),
  study_adaptive.RUNS[1],  # fixed/increase_batch
)
STUDIES = ("sign", "snapshots", "sharpness")


def command_json(argv: list[str]) -> dict:
  """Runs a `bigbatch` command in this process and returns what it printed as JSON."""
  from bigbatch import cli

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    status = cli.main(argv)
  if status != 0:
    raise RuntimeError(f"bigbatch {' '.join(argv)} exited {status}")
  return json.loads(out.getvalue())


def workdir_of(run: Run, seed: int, args) -> pathlib.Path:
  return pathlib.Path(args.workdir) / f"e{args.epochs}" / run.name.replace("/", "_") / f"seed{seed}"


def train_seeds(run: Run, common: dict, args) -> dict[int, dict]:
  per_seed = {}
  for seed in range(args.seeds):
    config = reproduce.make_config(run, common, seed, args.data_dir)
    per_seed[seed] = reproduce.train(run, config, workdir_of(run, seed, args))
    print(f"{run.name} seed {seed}: test accuracy {per_seed[seed]['accuracy']:.4f}", flush=True)
  return per_seed


def _mean_std(values: list[float]) -> str:
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{mean:.4f} ± {std:.4f}"


def sign_study(common: dict, args) -> tuple[dict, list[str]]:
  results = {}
  lines = ["| optimizer | test accuracy | train loss | updates |", "|---|---|---|---|"]
  for run in SIGN:
    per_seed = train_seeds(run, common, args)
    results[run.name] = per_seed
    label = "momentum SGD" if run is SIGN[0] else run.label
    lines.append(
      f"| {label} | {_mean_std([s['accuracy'] for s in per_seed.values()])} "
      f"| {statistics.fmean(s['train_loss'] for s in per_seed.values()):.4f} "
      f"| {per_seed[0]['updates']:,} |"
    )
  return results, lines


def snapshot_study(common: dict, args) -> tuple[dict, list[str]]:
  """The SGDR run's final model and ensembles of its last M snapshots, per seed."""
  baseline = train_seeds(SIGN[0], common, args)
  per_seed = train_seeds(SNAPSHOTS, common, args)
  ensembles: dict[int, dict[int, float]] = {}
  for seed in per_seed:
    ensembles[seed] = {}
    for members in (2, 4):
      where = workdir_of(SNAPSHOTS, seed, args)
      result = command_json(["ensemble", "--workdir", str(where), "--last", str(members), "--json"])
      ensembles[seed][members] = result["ensemble"]["eval_accuracy"]
  lines = [
    "| model | test accuracy (mean ± std) |",
    "|---|---|",
    f"| step schedule, final model | {_mean_std([s['accuracy'] for s in baseline.values()])} |",
    f"| SGDR, final model | {_mean_std([s['accuracy'] for s in per_seed.values()])} |",
  ]
  for members in (2, 4):
    values = [ensembles[s][members] for s in per_seed]
    lines.append(f"| SGDR, ensemble of the last {members} snapshots | {_mean_std(values)} |")
  return {"baseline": baseline, "sgdr": per_seed, "ensembles": ensembles}, lines


def sharpness_study(common: dict, args) -> tuple[dict, list[str]]:
  results = {}
  lines = [
    "| schedule | test accuracy | top Hessian eigenvalue | epsilon-sharpness (1e-3), % | updates |",
    "|---|---|---|---|---|",
  ]
  for run in SHARPNESS:
    per_seed = train_seeds(run, common, args)
    for seed, values in per_seed.items():
      where = workdir_of(run, seed, args)
      values["sharpness"] = command_json(
        ["sharpness", "--workdir", str(where), "--iterations", str(args.iterations), "--json"]
      )
    results[run.name] = per_seed
    eig = [s["sharpness"]["eigenvalue"] for s in per_seed.values()]
    eps = [s["sharpness"]["sharpness"] for s in per_seed.values()]
    label = {"fixed/decay_lr": "fixed batch 128 (decaying lr)"}.get(run.name, run.label)
    lines.append(
      f"| {label} | {_mean_std([s['accuracy'] for s in per_seed.values()])} "
      f"| {statistics.fmean(eig):.2f} ± {statistics.stdev(eig) if len(eig) > 1 else 0:.2f} "
      f"| {statistics.fmean(eps):.3f} ± {statistics.stdev(eps) if len(eps) > 1 else 0:.3f} "
      f"| {per_seed[0]['updates']:,} |"
    )
  return results, lines


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--only", nargs="*", default=STUDIES, choices=STUDIES)
  parser.add_argument("--workdir", default="workdir/adaptive", help="shared with study_adaptive")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--iterations", type=int, default=50, help="of `bigbatch sharpness`")
  parser.add_argument("--out", default="docs/results/toolkit")
  args = parser.parse_args()
  if args.seeds < 1:
    parser.error(f"--seeds: must be >= 1, got {args.seeds}")
  return args


def main() -> int:
  args = parse()
  common = {**reproduce.common_fields(args.epochs), **study_adaptive.STUDY_FIELDS}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  studies = {"sign": sign_study, "snapshots": snapshot_study, "sharpness": sharpness_study}
  titles = {
    "sign": "**PowerSign and AddSign against momentum SGD** (decaying schedule)",
    "snapshots": "**Snapshot ensembles** (20 epochs each)",
    "sharpness": "**Sharpness of the final model**",
  }
  results, text = {}, []
  for name in args.only:
    results[name], lines = studies[name](common, args)
    text += [titles[name], "", *lines, ""]
  (out / "results.json").write_text(
    json.dumps({"seeds": args.seeds, "epochs": args.epochs, **results}, indent=1) + "\n"
  )
  (out / "results.md").write_text("\n".join(text))
  print("\n".join(text))
  return 0


if __name__ == "__main__":
  sys.exit(main())
