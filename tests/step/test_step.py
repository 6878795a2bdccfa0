"""The train and eval steps: sharded equals unsharded, one compile per phase, exact sums."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import monitoring
from xla_env import xla_flags

from bigbatch import config as bbconfig
from bigbatch import optim, plan_phases, schedules
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import compute_dtype, create_model

EXAMPLE = {
  "inputs": jax.ShapeDtypeStruct((6, 6, 3), jnp.float32),
  "labels": jax.ShapeDtypeStruct((), jnp.int32),
}


def make_batch(batch_size, seed):
  rng = np.random.default_rng(seed)
  return {
    "inputs": rng.normal(size=(batch_size, 6, 6, 3)).astype(np.float32),
    "labels": rng.integers(0, 10, batch_size).astype(np.int32),
  }


def setup(model, optimizer, mesh, *, dataset_size=None, ghost=None, **kwargs):
  kwargs.setdefault("data_shards", shd.data_parallel_size(mesh))
  inputs = jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32)
  shardings = st.train_state_shardings(model, optimizer, inputs, mesh, fsdp_min_size=64)
  state = st.create_train_state(model, optimizer, inputs, mesh, fsdp_min_size=64)
  assert jax.tree.map(lambda leaf: leaf.sharding, state) == shardings
  step = st.make_train_step(model, optimizer, dataset_size=dataset_size, **kwargs)
  steps = st.CompiledSteps(step, state, EXAMPLE, mesh, ghost_batch_size=ghost)
  return state, steps


def train(model, optimizer, mesh, batch_sizes, ghost=None):
  state, steps = setup(model, optimizer, mesh, ghost=ghost)
  for i, batch_size in enumerate(batch_sizes):
    state, metrics = steps(state, shd.global_batch(mesh, make_batch(batch_size, i), batch_size))
  return jax.device_get(state), jax.device_get(metrics)


def assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max())


@pytest.mark.parametrize(
  "model_name, ghost, fsdp",
  [
    pytest.param("tiny_cnn", 2, 1, marks=pytest.mark.slow),  # 2 covers the ghost batches
    ("tiny_cnn", 2, 2),
    ("mlp", None, 1),
    ("mlp", None, 2),
  ],
)
def test_sharded_step_equals_the_single_device_step(model_name, ghost, fsdp):
  model = create_model(model_name, num_classes=10, ghost_batch_size=ghost)
  optimizer = optim.sgd_momentum(0.1, momentum=0.9, weight_decay=1e-3)
  one = shd.make_mesh(devices=jax.devices()[:1])
  eight = shd.make_mesh(fsdp=fsdp)
  state1, metrics1 = train(model, optimizer, one, [16, 16, 32], ghost)
  state8, metrics8 = train(model, optimizer, eight, [16, 16, 32], ghost)
  assert_trees_close(state8.params, state1.params, 1e-5)
  assert_trees_close(state8.batch_stats, state1.batch_stats, 1e-5)
  assert_trees_close(metrics8, metrics1, 1e-5)
  assert state8.step == 3
  if fsdp == 2:  # the check is not vacuous: some parameters were split
    _, steps = setup(model, optimizer, eight)
    specs = [s.spec for s in jax.tree.leaves(steps.state_shardings.params)]
    assert any("fsdp" in spec for spec in specs)


def test_metrics_are_the_step_values():
  model = create_model("mlp", num_classes=10)
  optimizer = optim.sgd_momentum(0.05, momentum=0.8)
  mesh = shd.make_mesh()
  state, steps = setup(model, optimizer, mesh, dataset_size=1000, label_smoothing=0.1)
  before = jax.device_get(state.params)
  batch = make_batch(16, 0)
  state, metrics = steps(state, shd.global_batch(mesh, batch, 16))

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["inputs"])
    targets = 0.9 * jax.nn.one_hot(batch["labels"], 10) + 0.1 / 10
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(before)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert metrics["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == batch["labels"]))
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
  # first momentum step: the update is -lr * grad
  np.testing.assert_allclose(metrics["update_norm"], 0.05 * optax.tree.norm(grads), rtol=1e-5)
  np.testing.assert_allclose(metrics["param_norm"], optax.tree.norm(state.params), rtol=1e-6)
  assert metrics["learning_rate"] == pytest.approx(0.05)
  assert metrics["momentum"] == pytest.approx(0.8)
  assert metrics["batch_size"] == 16
  assert metrics["noise_scale"] == pytest.approx(0.05 * (1000 / 16 - 1) / 0.2, rel=1e-6)


def plan_16_80_400():
  # N = 800, 3 epochs, noise scale /5 at epochs 1 and 2: batches 16 -> 80 -> 400
  return plan_phases(
    dataset_size=800,
    epochs=3,
    learning_rate=0.1,
    batch_size=16,
    momentum=0.9,
    schedule=schedules.make_schedule("step", 3, boundaries=(1, 2), factor=5.0),
    strategy="increase_batch",
    batch_multiple=16,
  )


class CompileCounter:
  """Counts XLA backend compiles (every executable jax builds, jitted or not)."""

  def __init__(self):
    self.count = 0
    monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1

  def close(self):
    monitoring.unregister_event_duration_listener(self._listen)


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
@pytest.mark.parametrize("background", [False, True])
def test_a_run_across_three_phases_compiles_three_train_steps(background):
  plan = plan_16_80_400()
  assert plan.batch_sizes == (16, 80, 400)
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=2)
  optimizer = optim.sgd_momentum(plan, momentum=plan)
  mesh = shd.make_mesh()
  state, steps = setup(model, optimizer, mesh, dataset_size=800, ghost=2)
  batches = {b: shd.global_batch(mesh, make_batch(b, b), b) for b in plan.batch_sizes}
  initial = [(leaf.sharding, leaf.dtype) for leaf in jax.tree.leaves(state)]
  counter = CompileCounter()
  try:
    for phase in plan.phases:
      if background and phase.index + 1 < len(plan.phases):
        steps.prefetch(plan.phases[phase.index + 1].batch_size)
      for _ in range(phase.steps):
        state, metrics = steps(state, batches[phase.batch_size])
        assert [(leaf.sharding, leaf.dtype) for leaf in jax.tree.leaves(state)] == initial
      metrics = jax.device_get(metrics)
      assert metrics["batch_size"] == phase.batch_size
      assert metrics["learning_rate"] == pytest.approx(phase.learning_rate)
      assert metrics["noise_scale"] == pytest.approx(phase.noise_scale, rel=1e-5)
    steps.close()
  finally:
    counter.close()
  assert int(state.step) == plan.total_steps == 50 + 10 + 2
  assert counter.count == 3 and steps.compile_count == 3
  compiled = {r.batch_size: r.background for r in steps.records}
  assert compiled == {16: False, 80: background, 400: background}


def test_batches_that_do_not_split_are_refused_before_compiling():
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=4)
  optimizer = optim.sgd_momentum(0.1)
  _, steps = setup(model, optimizer, shd.make_mesh(), ghost=4)
  with pytest.raises(shd.ShardingError, match="batch_size: 48 must be a positive multiple of 32"):
    steps.compiled(48)
  assert steps.compile_count == 0

  config = bbconfig.load_sibling(
    str(pathlib.Path(__file__).parents[2] / "configs" / "x.py"), "mnist1d_base"
  ).get_config()
  config.ghost_batch_size = 32
  plan = bbconfig.plan_from_config(config)
  with pytest.raises(bbconfig.ConfigError, match=r"batch_size: 128 must be .* of 256"):
    bbconfig.check_plan_on_mesh(config, plan, shd.make_mesh())
  config.ghost_batch_size = 16
  config.plan.strategy = "increase_batch"
  config.plan.batch_multiple = 8
  config.plan.noise_rule = "exact"  # batch 128 -> 632, not whole ghost batches per device
  plan = bbconfig.plan_from_config(config)
  with pytest.raises(bbconfig.ConfigError, match=r"plan.batch_multiple: \d+ must .* \(phase 2\)"):
    bbconfig.check_plan_on_mesh(config, plan, shd.make_mesh())


def test_model_from_config_names_bad_fields():
  config = bbconfig.load_sibling(
    str(pathlib.Path(__file__).parents[2] / "configs" / "x.py"), "mnist1d_base"
  ).get_config()
  model = bbconfig.model_from_config(config, num_classes=10)
  # the model as bigbatch calls it; its module is the linen model built from the fields
  assert model.module.ghost_batch_size == 16 and model.module.dtype == jnp.float32
  config.model.name = "vgg"
  with pytest.raises(bbconfig.ConfigError, match=r"model\.name: 'vgg' is not one of resnet50"):
    bbconfig.model_from_config(config, num_classes=10)
  config.model.name = "cnn1d"
  config.model.depth = 3
  with pytest.raises(bbconfig.ConfigError, match=r"model\.depth: not a field of cnn1d"):
    bbconfig.model_from_config(config, num_classes=10)
  del config.model.depth
  config.compute_dtype = "float16"
  with pytest.raises(bbconfig.ConfigError, match="compute_dtype: 'float16' is not one of auto"):
    bbconfig.model_from_config(config, num_classes=10)


def test_eval_counts_every_example_exactly_with_a_padded_last_batch():
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=2)
  mesh = shd.make_mesh()
  optimizer = optim.sgd_momentum(0.1)
  state, steps = setup(model, optimizer, mesh, ghost=2)
  state, _ = steps(state, shd.global_batch(mesh, make_batch(16, 0), 16))
  evaluate = st.CompiledSteps(
    st.make_eval_step(model),
    state,
    {**EXAMPLE, "mask": jax.ShapeDtypeStruct((), jnp.int32)},
    mesh,
    returns_state=False,
  )
  data = make_batch(21, 7)  # 16 + a partial batch of 5
  totals = {"accuracy": 0.0, "loss": 0.0, "count": 0}
  for start in (0, 16):
    part = st.pad_batch({k: v[start : start + 16] for k, v in data.items()}, 16)
    sums = jax.device_get(evaluate(state, shd.global_batch(mesh, part, 16)))
    totals = {k: totals[k] + sums[k] for k in totals}
  host = jax.device_get(state)
  logits = model.apply(
    {"params": host.params, "batch_stats": host.batch_stats}, data["inputs"], train=False
  )
  assert totals["count"] == 21
  assert totals["accuracy"] == int(np.sum(np.argmax(logits, -1) == data["labels"]))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, data["labels"]).sum()
  np.testing.assert_allclose(totals["loss"], loss, rtol=1e-5)
  assert evaluate.compile_count == 1


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_bfloat16_compute_keeps_float32_parameters():
  mesh = shd.make_mesh()
  optimizer = optim.sgd_momentum(0.1, momentum=0.9)
  results = {}
  for dtype in ("float32", "bfloat16"):
    model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=2, dtype=compute_dtype(dtype))
    state, steps = setup(model, optimizer, mesh, ghost=2)
    batch = shd.global_batch(mesh, make_batch(16, 0), 16)
    hlo = steps.compiled(16).as_text()
    assert ("bf16" in hlo) == (dtype == "bfloat16")
    state, metrics = steps(state, batch)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(state.opt_state)} >= {jnp.dtype("float32")}
    results[dtype] = jax.device_get(metrics)
  assert results["bfloat16"]["loss"] == pytest.approx(results["float32"]["loss"], rel=2e-2)
  assert compute_dtype("auto") == jnp.float32  # on CPU


PERSISTENT_CACHE_RUN = """
import jax, jax.numpy as jnp
from jax import monitoring
from bigbatch import optim, sharding, step
from bigbatch.models import compute_dtype, create_model

events = []
monitoring.register_event_listener(lambda event, **_: events.append(event))
step.enable_compilation_cache({cache!r})
mesh = sharding.make_mesh()
model = create_model("mlp", num_classes=10)
opt = optim.adam(1e-3)
inputs = jax.ShapeDtypeStruct((1, 12), jnp.float32)
state = step.create_train_state(model, opt, inputs, mesh)
example = {{"inputs": jax.ShapeDtypeStruct((12,), jnp.float32),
           "labels": jax.ShapeDtypeStruct((), jnp.int32)}}
steps = step.CompiledSteps(step.make_train_step(model, opt), state, example, mesh)
steps.compiled(64)
print("hits", events.count("/jax/compilation_cache/cache_hits"))
"""


def test_persistent_compilation_cache_spares_a_restarted_run_the_compile(tmp_path):
  script = PERSISTENT_CACHE_RUN.format(cache=str(tmp_path / "cache"))
  env = {**os.environ, "XLA_FLAGS": xla_flags(8)}

  def run():
    out = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split("hits")[-1])

  assert run() == 0
  assert any((tmp_path / "cache").iterdir())
  assert run() >= 1  # the train step (and init) came from the cache


def test_micro_batches_take_the_same_block_of_every_device():
  from bigbatch.step.accumulate import micro_batches

  batch = {"x": jnp.arange(16)}
  split = micro_batches(batch, count=2, shards=2)["x"]
  np.testing.assert_array_equal(split, [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]])


@pytest.mark.parametrize(
  "model_name, ghost, devices",
  [
    ("mlp", None, 1),
    ("mlp", None, 8),
    pytest.param("tiny_cnn", 2, 1, marks=pytest.mark.slow),  # 8 covers the ghost batches
    ("tiny_cnn", 2, 8),
  ],
)
def test_an_accumulated_update_equals_the_whole_batch_update(model_name, ghost, devices):
  model = create_model(model_name, num_classes=10, ghost_batch_size=ghost)
  optimizer = optim.sgd_momentum(0.1, momentum=0.9)
  mesh = shd.make_mesh(devices=jax.devices()[:devices])
  results = {}
  for micro in (None, 16):  # 64 examples at once, or 4 micro-batches of 16
    state, steps = setup(model, optimizer, mesh, ghost=ghost, micro_batch_size=micro)
    for i in range(2):
      state, metrics = steps(state, shd.global_batch(mesh, make_batch(64, i), 64))
    results[micro] = jax.device_get((state.params, state.batch_stats, metrics))
  whole, accumulated = results[None], results[16]
  assert accumulated[2]["micro_batches"] == 4 and whole[2]["micro_batches"] == 1
  assert_trees_close(accumulated[0], whole[0], 1e-5)
  assert_trees_close(accumulated[1], whole[1], 1e-5)  # running averages too
  for key in ("loss", "accuracy", "grad_norm", "update_norm"):
    np.testing.assert_allclose(accumulated[2][key], whole[2][key], rtol=1e-5)


def test_a_checkpoint_of_state_format_1_restores_with_a_fresh_noise_smoothing(tmp_path):
  """Checkpoints written before B_simple had bounds hold the noise means alone: they
  restore as written (checked against their checksums), with the smoothing started again."""
  from bigbatch.step import gradients as gn
  from bigbatch.workdir import checkpoint as ckpt

  mesh = shd.make_mesh(devices=jax.devices()[:2])
  model = create_model("cnn1d", num_classes=10, ghost_batch_size=4)
  tx = optim.sgd_momentum(0.1)
  inputs = jax.ShapeDtypeStruct((1, 40), jnp.float32)
  state = st.create_train_state(model, tx, inputs, mesh, seed=3)
  old = state.replace(
    step=state.step + 7,
    noise=gn.GradientNoiseFormat1(jnp.float32(0.5), jnp.float32(9.0), jnp.float32(0.8)),
  )
  checkpoints = ckpt.Checkpoints(tmp_path / "checkpoints", async_save=False)
  checkpoints.save(7, old, {"step": 7})  # no `state_format`: format 1
  target = st.abstract_train_state(model, tx, inputs, mesh)
  restored = st.restore_train_state(checkpoints, 7, target)
  checkpoints.close()
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert isinstance(restored.noise, gn.GradientNoise)
  assert all(float(leaf) == 0.0 for leaf in jax.tree.leaves(restored.noise))
  assert restored.noise.weight.sharding == target.noise.weight.sharding
