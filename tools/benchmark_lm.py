"""Benchmarks the language model's train step against a minimal jit + optax loop.

usage: python tools/benchmark_lm.py [--repeats 5] [--quick] [--out DIR] [--batch-sizes 32,128]

The trainer's step for the `lm_tiny_base` recipe (built from its `RunSpec` as
`bigbatch train` builds it: `Experiment.from_spec`, `packed_metrics`,
`CompiledSteps`), with the gradient noise measurement on and off, against a
minimal step on the same model: the `Transformer` (lm_tiny, vocabulary 256) as
a plain NNX module, `nnx.split` / `nnx.merge` inside one `jax.jit` of the
value and gradient of the mean token cross-entropy, `optax.adamw` with the
recipe's hyperparameters and schedule, the parameters and optimizer state
donated. Both run on one CPU device and take the same batch: random tokens
held as NumPy arrays and handed to the step as they are, as the trainer hands
its batches (`sharding.step_batch`). The batches are the recipe's 32 x 128 =
4,096 tokens and a larger 128 x 128.

The contenders are interleaved (A B B A ...; `tools/timing.py`) and the table
gives each one's tokens/s and the ratio trainer's / minimal (median over the
repeats, with its min and max): 1.0 is the minimal loop's speed, 0.9 means
the trainer's step gives up a tenth of it. Prints the table and writes
`lm_step.json` and `lm_step.md` to --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import tempfile
import time

import jax

# one device: the comparison is of the step itself, not of collectives between fake devices
jax.config.update("jax_num_cpu_devices", 1)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from timing import compare  # noqa: E402  (tools/timing.py)

from bigbatch import data  # noqa: E402
from bigbatch import step as st  # noqa: E402
from bigbatch.models.transformer import PRESETS, Transformer  # noqa: E402
from bigbatch.recipe import load_recipe  # noqa: E402
from bigbatch.spec import RunSpec  # noqa: E402
from bigbatch.train.experiment import Experiment  # noqa: E402

RECIPE = "lm_tiny_base"
SEQUENCE_LENGTH = 128  # the recipe's
BATCH_SIZES = (32, 128)  # sequences: the recipe's 4,096 tokens, and 4x that
TOKENS_PER_TIMING = 16_384  # each timing runs at least this many tokens (>= 2 steps)
NOISE = {"measured": True, "not_measured": False}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--quick", action="store_true", help="2 repeats of 1-step timings (a smoke run)"
  )
  parser.add_argument("--out", default="docs/benchmarks", help="where results are written")
  parser.add_argument(
    "--batch-sizes",
    default=",".join(map(str, BATCH_SIZES)),
    help="sequences of 128 tokens per batch, comma-separated",
  )
  return parser.parse_args(argv)


def random_tokens(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of random byte tokens as the text pipeline yields one: int32 `inputs` and
  `labels` (the next token at each position), NumPy arrays in host memory."""
  tokens = np.random.default_rng(seed).integers(0, 256, (batch_size, SEQUENCE_LENGTH + 1))
  tokens = tokens.astype(np.int32)
  return {
    "inputs": np.ascontiguousarray(tokens[:, :-1]),
    "labels": np.ascontiguousarray(tokens[:, 1:]),
  }


def recipe_config(data_dir: str, measure: bool):
  """The recipe's config, its corpus prepared in `data_dir`, noise measured or not."""
  config = load_recipe(RECIPE).get_config()
  config.dataset.data_dir = data_dir
  config.noise.measure = measure
  return config


class TrainersStep:
  """The step `bigbatch train` runs for the recipe, on one device, with its own state.

  Built as the trainer builds it (`bigbatch.train.loop.Loop`): the experiment's
  train step with its metrics packed into one vector, compiled per batch size by
  `CompiledSteps` with the state donated.
  """

  def __init__(self, data_dir: str, measure: bool):
    spec = RunSpec.read(recipe_config(data_dir, measure))
    experiment = Experiment.from_spec(spec, devices=jax.devices()[:1], say=lambda _: None)
    self.experiment = experiment
    self.measures_noise = experiment.train_step.measures_noise
    fn, _ = st.packed_metrics(experiment.train_step.fn)
    self.state = experiment.initial_state()
    self.steps = st.CompiledSteps(
      fn,
      self.state,
      data.example_batch(experiment.dataset),
      experiment.mesh,
      ghost_batch_size=experiment.spec.ghost_batch_size,
    )

  def runner(self, batch: dict[str, np.ndarray]):
    """`run()`: one step on `batch` (state carried over), returning its metrics."""

    def run():
      self.state, metrics = self.steps(self.state, batch)
      return metrics

    return run

  def close(self) -> None:
    self.steps.close()


def minimal_schedule(config) -> optax.Schedule:
  """The recipe's learning rate by step: a linear warm-up, then divided by `factor` at each
  boundary (its token counts in steps of its batch)."""
  lr, batch_tokens = config.optimizer.learning_rate, config.batch_tokens
  warmup = round(config.schedule.warmup_tokens / batch_tokens)
  drops = {
    round(t / batch_tokens) - warmup: 1 / config.schedule.factor
    for t in config.schedule.boundaries_tokens
  }
  return optax.join_schedules(
    [optax.linear_schedule(0.0, lr, warmup), optax.piecewise_constant_schedule(lr, drops)],
    [warmup],
  )


class MinimalStep:
  """The same model and optimizer in a bare `jax.jit` + optax loop, donating its state."""

  def __init__(self, config, seed: int = 0):
    model = Transformer(**PRESETS["lm_tiny"], rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = config.optimizer
    tx = optax.adamw(
      minimal_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
    )

    def loss_fn(params, tokens, labels):
      logits = nnx.merge(graphdef, params, rest)(tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def train_step(params, opt_state, batch):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch["inputs"], batch["labels"])
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self._step = jax.jit(train_step, donate_argnums=(0, 1))
    self.state = (params, tx.init(params))
    self._in_flight: collections.deque = collections.deque()

  def runner(self, batch: dict[str, np.ndarray]):
    """`run()`: one step on `batch`, returning its loss."""

    def run():
      # at most 2 steps in flight, as CompiledSteps keeps
      while len(self._in_flight) >= 2:
        self._in_flight.popleft().block_until_ready()
      *state, loss = self._step(*self.state, batch)
      self.state = tuple(state)
      self._in_flight.append(loss)
      return loss

    return run


def measure_batch(
  ours: dict[str, TrainersStep], theirs: MinimalStep, batch_size: int, repeats: int, count: int
) -> dict:
  """Each noise setting of the trainer's step against the minimal one, at `batch_size`."""
  batch = random_tokens(batch_size)
  tokens = batch_size * SEQUENCE_LENGTH
  minimal = theirs.runner(batch)
  jax.block_until_ready(minimal())  # compiles
  out = {}
  for name, trainer in ours.items():
    run = trainer.runner(batch)
    jax.block_until_ready(run())  # compiles
    result = compare(run, minimal, repeats, count)
    result["throughput_ratio"] = result.pop("ratio")  # trainer's / minimal, in tokens/s
    result["a_tokens_per_second"] = tokens / result["a_seconds"]
    result["b_tokens_per_second"] = tokens / result["b_seconds"]
    result["measures_noise"] = trainer.measures_noise
    out[name] = result
  return out


def table(results: dict) -> str:
  """The results as a markdown table, a row per batch and noise setting."""
  lines = [
    f"device: {results['device']}; recipe {RECIPE} (lm_tiny, {results['parameters']:,} "
    f"parameters); {results['repeats']} interleaved repeats; median [min, max]",
    # a burst of load slows both timings of a pair, so the paired ratio stays near the
    # truth while the two medians can come from different repeats
    "tokens/s: each contender's median; the ratio: the median of the per-repeat ratios of "
    "paired timings, which need not be the quotient of the two medians",
    "",
    "| batch | noise | trainer's tokens/s | minimal tokens/s | trainer's / minimal |",
    "|---|---|---|---|---|",
  ]
  for size, runs in results["batches"].items():
    for name, r in runs.items():
      lines.append(
        f"| {int(size)} x {SEQUENCE_LENGTH} | {name.replace('_', ' ')} | "
        f"{r['a_tokens_per_second']:,.0f} | {r['b_tokens_per_second']:,.0f} | "
        f"{r['throughput_ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] |"
      )
  return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
  """Builds the three steps once and measures each batch size; the results as JSON data."""
  repeats = 2 if args.quick else args.repeats
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  with tempfile.TemporaryDirectory() as data_dir:
    # both settings share the corpus, prepared once in data_dir (about a second)
    ours = {name: TrainersStep(data_dir, measure) for name, measure in NOISE.items()}
    theirs = MinimalStep(recipe_config(data_dir, True))
  parameters = sum(x.size for x in jax.tree.leaves(theirs.state[0]))
  results = {
    "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}",
    "recipe": RECIPE,
    "parameters": parameters,
    "sequence_length": SEQUENCE_LENGTH,
    "repeats": repeats,
    "steps_per_timing": {},
    "batches": {},
  }
  for size in batch_sizes:
    count = 1 if args.quick else max(2, TOKENS_PER_TIMING // (size * SEQUENCE_LENGTH))
    print(
      f"batch {size} x {SEQUENCE_LENGTH} = {size * SEQUENCE_LENGTH:,} tokens; "
      f"{count} steps per timing, {repeats} repeats",
      file=sys.stderr,
    )
    results["steps_per_timing"][str(size)] = count
    results["batches"][str(size)] = measure_batch(ours, theirs, size, repeats, count)
  for trainer in ours.values():
    trainer.close()
  return results


def main(argv: list[str] | None = None) -> int:
  args = parse(argv)
  start = time.perf_counter()
  results = run(args)
  results["wall_seconds"] = time.perf_counter() - start
  text = table(results)
  print(text)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "lm_step.json").write_text(json.dumps(results, indent=1) + "\n")
  (out / "lm_step.md").write_text(text + "\n")
  print(f"wrote {out / 'lm_step.json'} and {out / 'lm_step.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
