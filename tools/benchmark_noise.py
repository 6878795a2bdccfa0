"""What measuring the gradient noise scale costs: the train step with and without it.

usage: python tools/benchmark_noise.py [--cpu-devices 8] [--repeats 7] [--every 8]
                                      [--out docs/benchmarks]

For each (devices, batch) the same model (cnn1d), batch and optimizer run
compiled steps, each timed against the unmeasured one, interleaved (A B B A ...)
so that a shared machine slows them alike:

  measured   bigbatch's step with `noise.measure` on (the default): each
             device's gradient, its squared norm, one all-reduce
  unmeasured the same step with `noise.measure` off
  partitioned the step whose gradient the compiler partitions (no per-device
             gradients: the step before the noise scale was measured)
  every k    one device, `noise.every` = k, as the trainer runs it: the measured
             step (the batch in halves) on one step in k, and on the others the
             step that takes the batch whole and carries the smoothing

and reports each one's throughput (examples per second) over the unmeasured
step's. Target: measured >= 0.97 x unmeasured; on one device, where the
measured step cuts the batch in two halves (there is no second device to
compare with) and the cost lies, every k >= 0.99. Writes `noise.json` and
`noise.md`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cpu-devices", type=int, default=8, help="fake CPU devices (CPU only)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--count", type=int, default=40, help="steps per timing")
  parser.add_argument("--every", type=int, default=8, help="noise.every of the one-device case")
  parser.add_argument("--out", default="docs/benchmarks", help="where results are written")
  # internal: one device count's cases, printed as JSON
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args()


ARGS = parse()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", ARGS.cpu_devices)

import numpy as np  # noqa: E402
from timing import compare  # noqa: E402  (tools/timing.py)

from bigbatch import data, optim  # noqa: E402
from bigbatch import sharding as shd  # noqa: E402
from bigbatch import step as st  # noqa: E402
from bigbatch.models import create_model  # noqa: E402


def contenders(devices: int, batch_size: int) -> dict:
  """The three steps on `devices` devices, each a `run()` of one step on a fixed batch."""
  mesh = shd.make_mesh(devices=jax.devices()[:devices])
  model = create_model("cnn1d", num_classes=10, ghost_batch_size=16)
  inputs = jax.ShapeDtypeStruct((1, 40), np.float32)
  tx = optim.sgd_momentum(0.1, momentum=0.9)
  rng = np.random.default_rng(0)
  host = {
    "inputs": rng.normal(size=(batch_size, 40)).astype(np.float32),
    "labels": rng.integers(0, 10, batch_size).astype(np.int32),
  }
  batch = shd.global_batch(mesh, host, batch_size)
  measured = {"mesh": mesh, "measure_noise": True, "noise_horizon": 5_000.0}
  kinds = {"measured": [measured], "unmeasured": [{"mesh": mesh}], "partitioned": [{}]}
  if devices == 1:  # step i runs the first when `every` divides i, else the second
    every = {**measured, "noise_every": ARGS.every}
    kinds["every"] = [every, {**every, "measure_this_step": False}]
  example = data.example_batch(data.dataset_spec("mnist1d"))
  runs = {}
  for name, options in kinds.items():
    state = st.create_train_state(model, tx, inputs, mesh)
    steps = [
      st.CompiledSteps(
        st.make_train_step(model, tx, dataset_size=50_000, **o), state, example, mesh
      )
      for o in options
    ]
    holder = {"state": state, "step": 0}

    def run(steps=steps, holder=holder):
      pick = steps[0] if holder["step"] % ARGS.every == 0 else steps[-1]
      holder["state"], metrics = pick(holder["state"], batch)
      holder["step"] += 1
      return metrics

    for _ in range(len(steps)):  # each compiled and warm
      jax.block_until_ready(run())
    runs[name] = run
  return runs


def worker() -> list[dict]:
  """The cases of this process's device count (1 device: batch 128 and 1,024; else 128 each)."""
  devices = jax.device_count()
  batches = (128, 1024) if devices == 1 else (128 * devices,)
  cases = []
  for batch_size in batches:
    runs = contenders(devices, batch_size)
    unmeasured = compare(runs["measured"], runs["unmeasured"], ARGS.repeats, ARGS.count)
    partitioned = compare(runs["measured"], runs["partitioned"], ARGS.repeats, ARGS.count)
    case = {
      "devices": devices,
      "batch_size": batch_size,
      "measured_ms": 1e3 * unmeasured["a_seconds"],
      "unmeasured_ms": 1e3 * unmeasured["b_seconds"],
      "partitioned_ms": 1e3 * partitioned["b_seconds"],
      # measured throughput over the other's: a's speed / b's = median(b) / median(a)
      "measured_over_unmeasured": unmeasured,
      "measured_over_partitioned": partitioned,
    }
    if "every" in runs:
      case["every"] = ARGS.every
      case["every_over_unmeasured"] = compare(
        runs["every"], runs["unmeasured"], ARGS.repeats, ARGS.count
      )
    cases.append(case)
  return cases


def main() -> int:
  if ARGS.worker:
    print(json.dumps(worker()))
    return 0
  # each device count in its own process: a process's fake CPU devices share its threads
  results = {"device": jax.devices()[0].device_kind, "cases": []}
  for devices in (1, ARGS.cpu_devices):
    command = [sys.executable, __file__, "--worker", "--cpu-devices", str(devices)]
    command += ["--repeats", str(ARGS.repeats), "--count", str(ARGS.count)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    results["cases"] += json.loads(done.stdout.strip().splitlines()[-1])
  lines = [
    f"device: {results['device']}; {ARGS.repeats} interleaved repeats of {ARGS.count} steps; "
    "throughput ratio, median [min, max]",
    "",
    f"| devices | batch | measured ms | measured / unmeasured (>= 0.97) | measured / "
    f"partitioned | every {ARGS.every} / unmeasured (>= 0.99) |",
    "|---|---|---|---|---|---|",
  ]

  def spread(ratio):
    return f"{ratio['ratio']:.3f} [{ratio['ratio_min']:.3f}, {ratio['ratio_max']:.3f}]"

  for case in results["cases"]:
    every = spread(case["every_over_unmeasured"]) if "every" in case else "—"
    lines.append(
      f"| {case['devices']} | {case['batch_size']:,} | {case['measured_ms']:.2f} | "
      f"{spread(case['measured_over_unmeasured'])} | "
      f"{spread(case['measured_over_partitioned'])} | {every} |"
    )
  table = "\n".join(lines)
  print(table)
  out = pathlib.Path(ARGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "noise.json").write_text(json.dumps(results, indent=1) + "\n")
  (out / "noise.md").write_text(table + "\n")
  print(f"wrote {out / 'noise.json'} and {out / 'noise.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
