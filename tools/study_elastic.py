"""Each phase on the devices it needs, measured: an elastic run against the largest slice.

usage: python tools/study_elastic.py [--seeds 3] [--epochs 40] [--workdir workdir/elastic]
                                     [--out docs/results/elastic]

`mnist1d_increase_batch` (batch 128 -> 640 -> 3,200 -> 16,000) with slices of 1, 2, 4
and 8 CPU devices at 64 examples a device: phase 0 wants 2 devices, the others 8. For
each seed, two runs of the same plan and data order:

- elastic: `bigbatch train --until_phase_end` on 2 devices, which stops at phase 0's end
  (exit 75), then the same command on 8, which resumes there and finishes;
- 8 throughout: the same plan on 8 devices from the start.

Each is `bigbatch train` in a process of its own, its device count set through XLA_FLAGS.
Device-seconds are each phase's seconds times the devices it ran on (the summary's
`phases`); on this machine the fake devices share its cores, so a phase's wall time
hardly depends on its device count, and device-seconds say what the same phases would
hold on a slice of real devices, where an idle device is paid for all the same. Writes
`results.json` and `results.md` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from bigbatch.cli.train import EXIT_NEEDS_DEVICES

ROOT = pathlib.Path(__file__).resolve().parents[1]
ELASTIC = ("--config.elastic.slice_sizes=(1,2,4,8)", "--config.elastic.per_device_batch=64")
CODE = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
  parser.add_argument("--epochs", type=int, default=40, help="the recipe's 40, or fewer")
  parser.add_argument("--workdir", default="workdir/elastic", help="one directory per run")
  parser.add_argument("--out", default="docs/results/elastic", help="where results go")
  args = parser.parse_args()
  if args.seeds < 1 or args.epochs < 4:
    parser.error(f"--seeds >= 1 and --epochs >= 4, got {args.seeds} and {args.epochs}")
  return args


def command(workdir: pathlib.Path, seed: int, epochs: int, *extra: str) -> list[str]:
  """`bigbatch train` on the recipe; the boundaries scale with --epochs (10/20/30 of 40)."""
  scaled = ",".join(f"{epochs * f:g}" for f in (0.25, 0.5, 0.75))
  return ["train", "--config", "mnist1d_increase_batch", "--workdir", str(workdir),
          "--noprogress", f"--config.seed={seed}", f"--config.num_epochs={epochs}",
          f"--config.schedule.boundaries=({scaled})", *ELASTIC, *extra]  # fmt: skip


def run(argv: list[str], devices: int) -> tuple[int, float]:
  """The command in a process with `devices` CPU devices: (exit status, wall seconds)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = {**os.environ, "XLA_FLAGS": flags.strip()}
  started = time.monotonic()
  done = subprocess.run([sys.executable, "-c", CODE, *argv], env=env, cwd=ROOT, text=True,
                        capture_output=True)  # fmt: skip
  if done.returncode not in (0, EXIT_NEEDS_DEVICES):
    sys.exit(f"bigbatch {' '.join(argv)} on {devices} devices: exit {done.returncode}\n"
             f"{done.stderr[-3000:]}")  # fmt: skip
  return done.returncode, time.monotonic() - started


def measured(workdir: pathlib.Path, wall: float) -> dict:
  """A finished run's accuracy, updates, and each phase's devices, seconds, device-seconds."""
  summary = json.loads((workdir / "summary.json").read_text())
  phases = [
    {"phase": p["phase"], "batch_size": p["batch_size"], "steps": p["steps"],
     "devices": p["devices"], "seconds": p["seconds"],
     "device_seconds": p["devices"] * p["seconds"]}
    for p in summary["phases"] if p["steps"]
  ]  # fmt: skip
  return {
    "accuracy": summary["final_test_accuracy"],
    "updates": summary["updates"],
    "sessions": summary["sessions"],
    "phases": phases,
    "seconds": sum(p["seconds"] for p in phases),
    "device_seconds": sum(p["device_seconds"] for p in phases),
    "process_wall_seconds": wall,
  }


def one_seed(args, seed: int) -> dict[str, dict]:
  """The elastic run (2 devices, then 8) and the run on 8 throughout, for one seed."""
  where = pathlib.Path(args.workdir) / f"e{args.epochs}"
  elastic, whole = where / f"elastic_seed{seed}", where / f"eight_seed{seed}"
  argv = command(elastic, seed, args.epochs, "--until_phase_end")
  status, first = run(argv, 2)
  if status != EXIT_NEEDS_DEVICES:
    sys.exit(f"seed {seed}: the run on 2 devices ended with {status}, not at phase 0's end")
  _, second = run(argv, 8)
  _, alone = run(command(whole, seed, args.epochs), 8)
  return {"elastic": measured(elastic, first + second), "eight": measured(whole, alone)}


def table(results: dict[int, dict[str, dict]], epochs: int) -> str:
  def mean_std(key: str, name: str) -> str:
    values = [r[name][key] for r in results.values()]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):,.4g} ± {spread:,.2g}"

  lines = [
    f"MNIST-1D, `mnist1d_increase_batch` over {epochs} epochs, slices of 1, 2, 4, 8 CPU "
    f"devices at 64 examples a device; seeds {sorted(results)} (mean ± std).",
    "",
    "| run | test accuracy | updates | device-seconds | seconds (phases) | process wall s |",
    "|---|---|---|---|---|---|",
  ]
  for name, label in (("elastic", "elastic: phase 0 on 2, then 8"), ("eight", "8 throughout")):
    updates = results[next(iter(results))][name]["updates"]
    lines.append(
      f"| {label} | {mean_std('accuracy', name)} | {updates:,} | "
      f"{mean_std('device_seconds', name)} | {mean_std('seconds', name)} | "
      f"{mean_std('process_wall_seconds', name)} |"
    )
  saved = [
    1 - r["elastic"]["device_seconds"] / r["eight"]["device_seconds"] for r in results.values()
  ]
  lines += ["", f"Device-seconds saved by the elastic run: {statistics.mean(saved):.1%} "
            f"(seeds: {', '.join(f'{s:.1%}' for s in saved)}).", "", "Per phase (seed 0):", "",
            "| run | phase | batch | steps | devices | seconds | device-seconds |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
  first = results[min(results)]
  for name in ("elastic", "eight"):
    for p in first[name]["phases"]:
      lines.append(
        f"| {name} | {p['phase']} | {p['batch_size']:,} | {p['steps']:,} | {p['devices']} | "
        f"{p['seconds']:.1f} | {p['device_seconds']:.1f} |"
      )
  return "\n".join(lines)


def main() -> int:
  args = parse()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = {}
  for seed in range(args.seeds):
    results[seed] = one_seed(args, seed)
    e, w = results[seed]["elastic"], results[seed]["eight"]
    print(f"seed {seed}: elastic {e['accuracy']:.4f}, {e['device_seconds']:,.0f} device-s; "
          f"8 throughout {w['accuracy']:.4f}, {w['device_seconds']:,.0f} device-s", flush=True)  # fmt: skip
  settings = {"epochs": args.epochs, "seeds": args.seeds, "command": " ".join(sys.argv)}
  (out / "results.json").write_text(json.dumps({"settings": settings, "seeds": results}, indent=1))
  text = table(results, args.epochs)
  (out / "results.md").write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
