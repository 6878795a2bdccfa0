"""What checking the state finite costs: the trainer's step with and without the check.

usage: python tools/benchmark_finite.py [--repeats 9] [--out docs/benchmarks]

The trainer's step (`bigbatch.train.loop.Loop`: the experiment's train step,
its metrics packed into one vector, compiled by `CompiledSteps` with the state
donated) with `packed_metrics(check_finite=True)`, which adds the index of the
new state's first non-finite array to the vector (`bigbatch.step.finite`),
against the same step with `check_finite=False`. Two recipes on one CPU device,
each as `bigbatch train` builds it: the default run (MNIST-1D, `cnn1d`, batch
128, the noise measured) and `lm_tiny_base` (a 4-layer transformer of width
256, AdamW, batch 32 sequences of 128 bytes, on random bytes). The two are
interleaved (A B, B A, ...); reported: checked / unchecked seconds per step,
median [min, max] over the repeats. Target: under 1% (ratio <= 1.01). Writes
`finite.json` and `finite.md` to --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 1)

import numpy as np  # noqa: E402

from bigbatch import data  # noqa: E402
from bigbatch import step as st  # noqa: E402
from bigbatch.recipe import load_recipe  # noqa: E402
from bigbatch.spec import RunSpec  # noqa: E402
from bigbatch.train.experiment import Experiment  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from timing import compare  # noqa: E402

TARGET = 1.01
CASES = {  # recipe, its batch (examples), steps per timing (about a second's worth)
  "mnist1d (cnn1d), batch 128": ("mnist1d_increase_batch", 128, 200),
  "lm_tiny (transformer 256x4), batch 32x128 tokens": ("lm_tiny_base", 32, 2),
}


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--out", default="docs/benchmarks", help="where results are written")
  return parser.parse_args()


def _batch(experiment: Experiment, batch_size: int) -> dict[str, np.ndarray]:
  """A batch of the experiment's shapes: random inputs and labels in their ranges."""
  example = data.example_batch(experiment.dataset)
  rng = np.random.default_rng(0)
  out = {}
  for key, leaf in example.items():
    shape = (batch_size, *leaf.shape)  # `example_batch` gives one example's shapes
    if np.issubdtype(leaf.dtype, np.integer):
      high = 256 if key == "inputs" or len(shape) > 1 else experiment.dataset.num_classes
      out[key] = rng.integers(0, high, shape).astype(leaf.dtype)
    else:
      out[key] = rng.normal(size=shape).astype(leaf.dtype)
  return out


def steps_of(recipe: str, batch_size: int, data_dir: str):
  """The trainer's step of `recipe` with and without the finite check, each with its state."""
  config = load_recipe(recipe).get_config()
  config.dataset.data_dir = data_dir
  spec = RunSpec.read(config)
  experiment = Experiment.from_spec(spec, say=lambda _: None)
  batch = _batch(experiment, batch_size)
  runners = []
  for check in (True, False):
    fn, _ = st.packed_metrics(experiment.train_step.fn, check_finite=check)
    compiled = st.CompiledSteps(
      fn,
      experiment.initial_state(),
      data.example_batch(experiment.dataset),
      experiment.mesh,
      ghost_batch_size=spec.ghost_batch_size,
    )
    holder = {"state": experiment.initial_state()}

    def run(compiled=compiled, holder=holder):
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics

    jax.block_until_ready(run())  # compiled, and one step run, before any timing
    runners.append(run)
  return runners


def main() -> int:
  args = parse()
  rows, results = [], {}
  with tempfile.TemporaryDirectory() as data_dir:
    for name, (recipe, batch_size, count) in CASES.items():
      checked, unchecked = steps_of(recipe, batch_size, data_dir)
      # ratio = checked seconds / unchecked seconds: the check's cost per step
      timing = compare(unchecked, checked, args.repeats, count)
      results[name] = timing
      ms = (timing["a_seconds"] * 1e3, timing["b_seconds"] * 1e3)
      cell = f"{timing['ratio']:.4f} [{timing['ratio_min']:.4f}, {timing['ratio_max']:.4f}]"
      rows.append(f"| {name} | {ms[0]:.2f} | {ms[1]:.2f} | {cell} |")
  table = "\n".join(
    [
      f"the finite check, 1 CPU device, {args.repeats} repeats (interleaved)",
      "",
      "| step | unchecked ms | checked ms | checked / unchecked (target <= 1.01) |",
      "|---|---|---|---|",
      *rows,
    ]
  )
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "finite.json").write_text(json.dumps(results, indent=2) + "\n")
  (out / "finite.md").write_text(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
