"""Benchmarks bigbatch against the bare minimum, side by side in one run.

usage: python tools/benchmark.py [--cpu-devices 8] [--repeats 5] [--quick] [--out DIR]

Each comparison interleaves the two contenders (A B B A ...) and reports the
ratio of their medians with its spread over the repeats, so that a shared,
noisy machine affects both alike. Prints a table and writes `benchmark.json`
(and the table as `benchmark.md`) to --out.

1. step: the train step the trainer runs (`config.train_step_from_config`:
   each device's gradient and one all-reduce, measuring the noise scale where
   the batch allows it) vs a minimal `jax.jit` + optax step (same model,
   batch, devices, donation), with the noise measurement on and off, on 1
   and on --cpu-devices devices (each in a process of its own). Target >= 0.97
   of its throughput.
2. phase switch: the first step at a new batch size over a steady step, with
   and without the next phase compiled in the background, and for a switch
   decided while training (adaptive plans: the batch the next decision
   would choose compiled in the background, the learning rate changed in the
   optimizer's state). Target <= 2x.
3. input: pipeline examples/s vs what training consumes, for MNIST-1D
   (cnn1d) and CIFAR-shaped tfds mock data with crop and flip (wrn16_4).
   Target >= 3x.
4. optimizer: bigbatch's sgd_momentum / adam / adamw / amsgrad update vs
   optax's on a ResNet-50-sized parameter tree. Target >= 0.98x optax's speed.
5. scaling: training examples/s against the per-device batch on 1 and on
   --cpu-devices devices (cnn1d), each device count in its own process
   (the count of fake CPU devices is fixed when JAX starts).
6. mesh: the built-in Transformer's train step (its parameters placed by their
   annotations, the noise measured) on a three-axis mesh (`tensor` 2) over the
   same step on the two-axis mesh of the same devices (`tensor` 1), same batch.
   No target: on CPU devices a tensor axis only adds communication; on
   accelerators it is what lets a model too wide for one device train.

--imagenet-input runs only the ImageNet input comparison instead
(tools/benchmark_imagenet.py: bigbatch's pipeline against a flax
examples/imagenet-style one on the same JPEGs, per core and GIL time) and
writes `imagenet_input.json` and `imagenet_input.md`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cpu-devices", type=int, default=8, help="fake CPU devices (CPU only)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
  parser.add_argument("--rows", default="1,2,3,4,5,6", help="the comparisons to run, e.g. 1,6")
  parser.add_argument("--out", default="docs/benchmarks", help="where results are written")
  parser.add_argument("--imagenet-input", action="store_true", help="the ImageNet input only")
  parser.add_argument("--imagenet-dir", default=None, help="fake ImageNet (made if missing)")
  # internal: one device count's scaling measurement, printed as JSON
  parser.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--step-worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--scaling-batches", default="16,64,256,1024", help=argparse.SUPPRESS)
  parser.add_argument("--scaling-examples", type=int, default=32768, help=argparse.SUPPRESS)
  return parser.parse_args()


ARGS = parse()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", ARGS.cpu_devices)

import benchmark_mesh  # noqa: E402  (tools/benchmark_mesh.py)
import benchmark_optimizers  # noqa: E402  (tools/benchmark_optimizers.py)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from benchmark_table import format_table  # noqa: E402  (tools/benchmark_table.py)
from timing import compare, timed  # noqa: E402  (tools/timing.py)

from bigbatch import data, optim  # noqa: E402
from bigbatch import sharding as shd  # noqa: E402
from bigbatch import step as st  # noqa: E402
from bigbatch.models import create_model  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def mnist_setup(batch_size: int):
  mesh = shd.make_mesh()
  model = create_model("cnn1d", num_classes=10, ghost_batch_size=16)
  inputs = jax.ShapeDtypeStruct((1, 40), jnp.float32)
  rng = np.random.default_rng(0)
  host = {
    "inputs": rng.normal(size=(batch_size, 40)).astype(np.float32),
    "labels": rng.integers(0, 10, batch_size).astype(np.int32),
  }
  return mesh, model, inputs, shd.global_batch(mesh, host, batch_size)


def bigbatch_trainer(model, mesh, inputs, spec, batch, ghost_batch_size: int):
  """bigbatch's compiled train step (sgd_momentum) on a fixed `batch`.

  Returns:
    `(train, state, steps)`: `train()` runs one step and returns its metrics;
    `state` is the initial state (donated by the first `train()`); `steps`
    the `CompiledSteps`, to close.
  """
  tx = optim.sgd_momentum(0.1, momentum=0.9)
  state = st.create_train_state(model, tx, inputs, mesh)
  steps = st.CompiledSteps(
    st.make_train_step(model, tx, dataset_size=50_000),
    state,
    data.example_batch(spec),
    mesh,
    ghost_batch_size=ghost_batch_size,
  )
  holder = {"state": state}

  def train():
    holder["state"], metrics = steps(holder["state"], batch)
    return metrics

  return train, state, steps


def trainers_step(mesh, model, inputs, batch, batch_size: int, measure: bool):
  """The step the trainer builds for the MNIST-1D recipe (`train_step_from_config`), at
  `batch_size`, with the noise measurement asked for or not; its `CompiledSteps` and
  whether it measures."""
  from bigbatch import config as bbconfig

  config = bbconfig.load_sibling(str(CONFIGS / "mnist1d_base.py"), "mnist1d_base").get_config()
  config.batch_size = batch_size
  config.optimizer.weight_decay = 0.0  # as the minimal step's optax.sgd
  config.noise.measure = measure
  plan = bbconfig.plan_from_config(config)
  tx = bbconfig.optimizer_from_config(config, plan)
  step, measures = bbconfig.train_step_from_config(config, model, tx, plan, mesh, input_shape=(40,))
  state = st.create_train_state(model, tx, inputs, mesh)
  steps = st.CompiledSteps(
    step, state, data.example_batch(data.dataset_spec("mnist1d")), mesh, ghost_batch_size=16
  )
  holder = {"state": state}

  def train():
    holder["state"], metrics = steps(holder["state"], batch)
    return metrics

  return train, state, steps, measures


def bench_step(repeats: int, count: int, batch_size: int, measure: bool = True) -> dict:
  """The trainer's step vs a hand-written jit + optax step, same everything."""
  mesh, model, inputs, batch = mnist_setup(batch_size)
  ours, state, _, measures = trainers_step(mesh, model, inputs, batch, batch_size, measure)
  plain_tx = optax.sgd(0.1, momentum=0.9)
  params = jax.device_put(jax.device_get(state.params), shd.replicated(mesh))
  stats = jax.device_put(jax.device_get(state.batch_stats), shd.replicated(mesh))
  opt_state = jax.jit(plain_tx.init, out_shardings=optim.state_shardings(plain_tx, params))(params)

  def plain_step(params, stats, opt_state, batch):
    def loss_fn(p):
      logits, new = model.apply(
        {"params": p, "batch_stats": stats}, batch["inputs"], train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean(), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = plain_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt_state, loss

  jitted = jax.jit(plain_step, donate_argnums=(0, 1, 2))
  plain = {"args": (params, stats, opt_state), "in_flight": collections.deque()}

  def theirs():
    # At most 2 steps in flight, as CompiledSteps keeps: with many more, fake CPU
    # devices on few cores can starve XLA's all-reduce rendezvous, which aborts.
    while len(plain["in_flight"]) >= 2:
      plain["in_flight"].popleft().block_until_ready()
    *state_out, loss = jitted(*plain["args"], batch)
    plain["args"] = tuple(state_out)
    plain["in_flight"].append(loss)
    return loss

  jax.block_until_ready(ours())
  jax.block_until_ready(theirs())
  result = compare(ours, theirs, repeats, count)
  result["throughput_ratio"] = result.pop("ratio")  # ours / minimal, in examples per second
  result["measures_noise"] = measures
  return result


def step_worker(repeats: int, count: int, batch_size: int) -> dict:
  """Row 1 on this process's devices: the trainer's step with and without measuring."""
  return {
    "measured": bench_step(repeats, count, batch_size, measure=True),
    "not_measured": bench_step(repeats, count, batch_size, measure=False),
  }


def bench_steps(repeats: int, count: int, batch_size: int) -> dict:
  """Row 1 on 1 and on --cpu-devices devices, each device count in a process of its own."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = {}
  for n in sorted({1, ARGS.cpu_devices}):
    command = [sys.executable, __file__, "--step-worker", "--cpu-devices", str(n)]
    command += ["--repeats", str(repeats), "--scaling-examples", str(count)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
      raise RuntimeError(f"step worker on {n} devices failed: {done.stderr[-2000:]}")
    out[str(n)] = json.loads(done.stdout.strip().splitlines()[-1])
  return out


def _switch_ratio(mode: str, batch_sizes: tuple[int, int], lead: float) -> tuple[float, float]:
  """One phase switch: the first step at the new batch over a steady one, and its seconds.

  The phase before the switch trains for `lead` seconds.

  `decided` is a switch chosen during training (an adaptive plan): the batch
  comes from `adaptive.next_phase`, is compiled in the background as the
  trainer does, and the learning rate changes in the optimizer's state.
  """
  from bigbatch.plan import adaptive

  mesh, model, inputs, small = mnist_setup(batch_sizes[0])
  tx = optim.sgd_momentum(0.1, momentum=0.9)
  state = st.create_train_state(model, tx, inputs, mesh)
  steps = st.CompiledSteps(
    st.make_train_step(model, tx), state, data.example_batch(data.dataset_spec("mnist1d")), mesh
  )
  state, m = steps(state, small)
  jax.block_until_ready(m)
  next_batch, next_lr = batch_sizes[1], 0.1
  if mode == "decided":
    settings = adaptive.Settings("plateau", factor=batch_sizes[1] / batch_sizes[0])
    phase = adaptive.initial_plan(bbconfig_plan(batch_sizes[0]), "plateau", 0.1).phases[0]
    next_batch, next_lr = adaptive.next_phase(settings, phase, 50_000)
  big = mnist_setup(next_batch)[3]
  if mode != "foreground":
    steps.prefetch(next_batch)
  # the current phase trains for `lead` seconds (a real phase lasts minutes) while,
  # with background compilation, the next phase's step compiles
  deadline = time.perf_counter() + lead
  while time.perf_counter() < deadline:
    state, m = steps(state, small)
  jax.block_until_ready(m)
  start = time.perf_counter()
  if mode == "decided":
    state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, learning_rate=next_lr))
  state, m = steps(state, big)
  jax.block_until_ready(m)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(5):
    state, m = steps(state, big)
  jax.block_until_ready(m)
  steady = (time.perf_counter() - start) / 5
  steps.close()
  return first / steady, first


def bbconfig_plan(batch_size: int):
  """A one-phase MNIST-1D plan at `batch_size` (the base an adaptive plan decides from)."""
  from bigbatch import config as bbconfig

  config = bbconfig.load_sibling(str(CONFIGS / "mnist1d_base.py"), "mnist1d_base").get_config()
  config.batch_size = batch_size
  return bbconfig.plan_from_config(config)


def bench_phase_switch(repeats: int, batch_sizes: tuple[int, int]) -> dict:
  """First step at a new batch size over a steady step: compiled at the switch, compiled in
  the background, and decided while training (background compile + a new learning rate)."""
  out, lead = {}, 3.0
  for mode in ("foreground", "background", "decided"):
    runs = [_switch_ratio(mode, batch_sizes, lead) for _ in range(repeats)]
    ratios = [ratio for ratio, _ in runs]
    if mode == "foreground":
      # the phase before a background switch lasts at least 5 foreground compiles: on a
      # CPU the background compile shares the cores with the training it overlaps (on an
      # accelerator it would not), and a real phase lasts minutes
      lead = max(3.0, 5.0 * statistics.median(seconds for _, seconds in runs))
    out[mode] = {
      "first_over_steady": statistics.median(ratios),
      "min": min(ratios),
      "max": max(ratios),
    }
  return out


def input_rates(source, spec, repeats: int, count: int, batch_size: int) -> list[float]:
  """Examples/s of the training input pipeline alone (order, lookup, preprocessing)."""
  rates = []
  for _ in range(repeats):
    batches = data.train_batches(
      source, spec, seed=0, batch_size=batch_size, start_position=0, num_steps=count
    )
    start = time.perf_counter()
    for _ in batches:
      pass
    rates.append(count * batch_size / (time.perf_counter() - start))
  return rates


def input_ratio(rates: list[float], consumed: float) -> dict:
  return {
    "input_examples_per_second": statistics.median(rates),
    "train_examples_per_second": consumed,
    "ratio": statistics.median(rates) / consumed,
    "ratio_min": min(rates) / consumed,
    "ratio_max": max(rates) / consumed,
  }


def bench_input_cifar(repeats: int, count: int, batch_size: int) -> dict:
  """CIFAR-shaped tfds mock data (crop + flip) vs a wrn16_4 train step's examples/s."""
  import tensorflow_datasets as tfds

  with tempfile.TemporaryDirectory() as tmp, tfds.testing.mock_data(num_examples=4096):
    source = data.load_split({"name": "cifar10", "data_dir": tmp}, "train")
  spec = data.dataset_spec("cifar10")
  rates = input_rates(source, spec, repeats, count, batch_size)
  mesh = shd.make_mesh()
  ghost = batch_size // jax.device_count()
  model = create_model("wrn16_4", num_classes=10, ghost_batch_size=ghost)
  inputs = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  host = next(
    iter(
      data.train_batches(source, spec, seed=0, batch_size=batch_size, start_position=0, num_steps=1)
    )
  )
  batch = shd.global_batch(mesh, host, batch_size)
  train, _, steps = bigbatch_trainer(model, mesh, inputs, spec, batch, ghost)
  jax.block_until_ready(train())
  seconds = statistics.median(timed(train, 2) for _ in range(repeats))
  steps.close()
  return input_ratio(rates, batch_size / seconds)


def bench_input(repeats: int, count: int, batch_size: int) -> dict:
  """MNIST-1D input pipeline examples/s vs the train step's examples/s."""
  with tempfile.TemporaryDirectory() as tmp:
    block = {"name": "mnist1d", "num_train_examples": 50_000, "data_dir": tmp}
    source = data.load_split(block, "train")
    rates = input_rates(source, data.dataset_spec("mnist1d"), repeats, count, batch_size)
  step = bench_step(repeats, count, batch_size)  # the trainer's, on this process's devices
  return input_ratio(rates, batch_size / step["a_seconds"])


def scaling_worker(per_device: tuple[int, ...], repeats: int, examples: int) -> dict:
  """Training examples/s of cnn1d at each per-device batch on this process's devices."""
  devices = jax.device_count()
  out = {}
  for size in per_device:
    mesh, model, inputs, batch = mnist_setup(size * devices)
    spec = data.dataset_spec("mnist1d")
    train, _, steps = bigbatch_trainer(model, mesh, inputs, spec, batch, 16)
    jax.block_until_ready(train())
    count = max(3, examples // (size * devices))
    rates = [size * devices / timed(train, count) for _ in range(repeats)]
    out[str(size)] = statistics.median(rates)
    steps.close()
  return out


def bench_scaling(rounds: int, per_device: tuple[int, ...], examples: int) -> dict:
  """Examples/s against the per-device batch, on 1 and on all devices, in alternating
  processes (1, N, 1, N, ...); median and [min, max] over the rounds."""
  counts = sorted({1, ARGS.cpu_devices})
  runs: dict[int, list[dict]] = {n: [] for n in counts}
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  for _ in range(rounds):
    for n in counts:
      command = [sys.executable, __file__, "--scaling-worker", "--cpu-devices", str(n)]
      command += ["--scaling-batches", ",".join(map(str, per_device))]
      command += ["--scaling-examples", str(examples), "--repeats", "3"]
      done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
      if done.returncode != 0:
        raise RuntimeError(f"scaling worker on {n} devices failed: {done.stderr[-2000:]}")
      runs[n].append(json.loads(done.stdout.strip().splitlines()[-1]))
  table = {}
  for size in per_device:
    row = {}
    for n in counts:
      rates = [r[str(size)] for r in runs[n]]
      row[str(n)] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    table[str(size)] = row
  return {"devices": counts, "rounds": rounds, "examples_per_second": table}


def run_benchmarks(rows: set[str], repeats: int, quick: bool) -> dict:
  """The numbered comparisons in `rows` ("1" to "6"), side by side in this process."""
  count = 5 if quick else 30
  results = {"device": f"{jax.devices()[0].device_kind} x {jax.device_count()}", "repeats": repeats}
  if "1" in rows:
    results["step"] = bench_steps(repeats, 4 * count, 1024)
  if "2" in rows:
    results["phase_switch"] = bench_phase_switch(repeats, (1024, 4096))
  if "3" in rows:
    results["input"] = bench_input(repeats, count, 1024)
    cifar_batch = 16 * jax.device_count()
    results["input_cifar"] = bench_input_cifar(repeats, 3 if quick else 20, cifar_batch)
  if "4" in rows:
    results["optimizers"] = benchmark_optimizers.run(repeats, 3 if quick else 10)
  if "5" in rows:
    sizes = (16, 128) if quick else (16, 64, 256, 1024)
    rounds = 1 if quick else repeats
    results["scaling"] = bench_scaling(rounds, sizes, 2048 if quick else 32768)
  if "6" in rows and jax.device_count() >= 2:  # a tensor axis needs two devices
    results["mesh"] = benchmark_mesh.bench_mesh(repeats, 3 if quick else 20)
  return results


def main() -> int:
  if ARGS.imagenet_input:
    import benchmark_imagenet  # tools/benchmark_imagenet.py

    benchmark_imagenet.run(ARGS.repeats, ARGS.out, ARGS.imagenet_dir)
    return 0
  if ARGS.step_worker:
    print(json.dumps(step_worker(ARGS.repeats, ARGS.scaling_examples, 1024)))
    return 0
  if ARGS.scaling_worker:
    batches = tuple(int(b) for b in ARGS.scaling_batches.split(","))
    print(json.dumps(scaling_worker(batches, ARGS.repeats, ARGS.scaling_examples)))
    return 0
  rows = set(ARGS.rows.split(","))
  if not rows <= set("123456"):
    raise SystemExit(f"--rows: {ARGS.rows!r} names rows outside 1 to 6")
  results = run_benchmarks(rows, 2 if ARGS.quick else ARGS.repeats, ARGS.quick)
  table = format_table(results)
  print(table)
  out = pathlib.Path(ARGS.out)
  out.mkdir(parents=True, exist_ok=True)
  # a partial run writes apart, leaving the full run's results in place
  name = "benchmark" if rows == set("123456") else f"benchmark_rows_{'_'.join(sorted(rows))}"
  (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
  (out / f"{name}.md").write_text(table + "\n")
  print(f"wrote {out / name}.json and {out / name}.md", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
