"""PowerSign and AddSign against a NumPy transcription of Bello et al. (2017)."""

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import bigbatch as bb
from bigbatch import config as bbconfig
from bigbatch import optim
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import create_model
from bigbatch.schedules import make_schedule

STEPS, PERIODS = 30, 3  # T = 30 steps, n = 3: the restarts fall at steps 10 and 20
DECAYS = ("none", "linear", "cyclical", "restart")


def paper_decay(kind, t, total, periods):
  """f(t) as written in the paper, for t <= T."""
  if kind == "none":
    return 1.0
  if kind == "linear":
    return 1 - t / total
  if kind == "cyclical":
    return 0.5 * (1 + math.cos(2 * math.pi * periods * t / total))
  period = total / periods
  return 0.5 * (1 + math.cos(math.pi * (t % period) / period))


def random_params(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  return {"w": jax.random.normal(keys[0], (8, 4)), "b": jax.random.normal(keys[1], (4,))}


def gradients(params, step):
  """Noisy pseudo-gradients, so that g and its average often disagree in sign."""
  key = jax.random.fold_in(jax.random.PRNGKey(42), step)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  noise = [2.0 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(tree, [0.5 * x + n for x, n in zip(leaves, noise)])


def sign_numpy(params, kind, lrs, betas, *, alpha, decay, total, weight_decay=0.0):
  """The paper's update, per step, in float64; returns the parameters and how
  many elements had g and m of opposite signs."""
  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  m = jax.tree.map(np.zeros_like, w)
  disagreements = 0
  for t, (lr, beta) in enumerate(zip(lrs, betas)):
    g = jax.tree.map(
      np.asarray, gradients(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), w), t)
    )
    g = jax.tree.map(lambda x: x.astype(np.float64), g)
    m = jax.tree.map(lambda m, g, b=beta: b * m + (1 - b) * g, m, g)
    f = paper_decay(decay, t, total, PERIODS)
    for name in w:
      s = np.sign(g[name]) * np.sign(m[name])
      disagreements += int(np.sum(s < 0))
      if kind == "power_sign":
        update = alpha ** (f * s) * g[name]
      else:
        update = (alpha + f * s) * g[name]
      w[name] = w[name] - lr * (update + weight_decay * w[name])
  return w, disagreements


def run(opt, params, steps):
  state = jax.jit(opt.init, out_shardings=optim.state_shardings(opt, params))(params)

  @jax.jit
  def step(params, state, i):
    updates, state = opt.update(gradients(params, i), state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, i)
  return params, state, step


def assert_trees_close(actual, expected, rtol):
  for name in expected:
    a, e = np.asarray(actual[name], np.float64), expected[name]
    assert np.linalg.norm(a - e) <= rtol * np.linalg.norm(e), name


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("kind, alpha", [("power_sign", math.e), ("add_sign", 1.0)])
def test_each_decay_follows_the_papers_equations(kind, alpha, decay):
  build = optim.power_sign if kind == "power_sign" else optim.add_sign
  opt = build(0.01, 0.9, decay=decay, decay_steps=STEPS, num_periods=PERIODS)
  params = random_params()
  actual, state, _ = run(opt, params, STEPS)
  expected, disagreements = sign_numpy(
    params, kind, [0.01] * STEPS, [0.9] * STEPS, alpha=alpha, decay=decay, total=STEPS
  )
  assert disagreements > 0.1 * STEPS * 36  # the sign term did act both ways
  assert_trees_close(actual, expected, rtol=1e-5)
  inner = state.inner_state[0]
  assert int(inner.count) == STEPS and inner.count.dtype == jnp.int32


def test_decoupled_weight_decay_and_a_scheduled_beta():
  beta = optax.join_schedules([optax.constant_schedule(0.9), optax.constant_schedule(0.5)], [12])
  opt = optim.add_sign(
    0.02, beta, alpha=1.5, decay="restart", decay_steps=STEPS, num_periods=PERIODS, weight_decay=0.1
  )
  params = jax.device_put(random_params(1), jax.devices()[0])  # committed, as outputs are
  actual, state, step = run(opt, params, STEPS)
  expected, _ = sign_numpy(
    params,
    "add_sign",
    [0.02] * STEPS,
    [0.9] * 12 + [0.5] * (STEPS - 12),
    alpha=1.5,
    decay="restart",
    total=STEPS,
    weight_decay=0.1,
  )
  assert_trees_close(actual, expected, rtol=1e-5)
  assert step._cache_size() == 1
  assert float(optim.current_hyperparams(state)["momentum"]) == pytest.approx(0.5)


def test_past_its_steps_the_decay_keeps_its_last_value():
  for kind in DECAYS:
    f = optim.sign_decay(kind, 40, 2.0)
    values = np.asarray([f(t) for t in (40, 41, 1000)])
    np.testing.assert_allclose(values, paper_decay(kind, 40, 40, 2.0), atol=1e-7)


def small_plan():
  """N = 2,000, batch 20 -> 100 -> 500, then the rate decays at the cap: 6 epochs."""
  return bb.plan_phases(
    dataset_size=2000,
    epochs=6,
    learning_rate=0.05,
    momentum=0.9,
    batch_size=20,
    schedule=make_schedule("step", 6, boundaries=(1, 2, 3), factor=5),
    strategy="hybrid",
    max_batch_size=500,
    batch_multiple=20,
  )


@pytest.mark.parametrize("kind", ["power_sign", "add_sign"])
def test_follows_a_plan_across_phase_boundaries(kind):
  plan = small_plan()
  assert [p.batch_size for p in plan.phases] == [20, 100, 500, 500]
  total = plan.total_steps
  build = optim.power_sign if kind == "power_sign" else optim.add_sign
  opt = build(plan, beta=plan, decay="linear", decay_steps=total)
  params = jax.device_put(random_params(), jax.devices()[0])
  actual, state, step = run(opt, params, total)
  lrs = [plan.phase_at(i).learning_rate for i in range(total)]
  assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.01)  # cut past the cap
  alpha = math.e if kind == "power_sign" else 1.0
  expected, _ = sign_numpy(
    params, kind, lrs, [0.9] * total, alpha=alpha, decay="linear", total=total
  )
  assert_trees_close(actual, expected, rtol=2e-5)
  assert step._cache_size() == 1  # one compilation for all phases
  hyper = optim.current_hyperparams(state)
  assert float(hyper["learning_rate"]) == pytest.approx(plan.phases[-1].learning_rate)
  assert float(hyper["momentum"]) == pytest.approx(0.9)


def test_the_average_is_sharded_as_its_parameter():
  opt = optim.power_sign(0.01, decay="cyclical", decay_steps=20)
  mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
  sharded = NamedSharding(mesh, PartitionSpec("data"))
  params = random_params()
  placed = jax.device_put(params, {"w": sharded, "b": NamedSharding(mesh, PartitionSpec())})
  state = jax.jit(opt.init, out_shardings=optim.state_shardings(opt, placed))(placed)
  averages = [leaf for leaf in jax.tree.leaves(state) if leaf.shape == (8, 4)]
  assert len(averages) == 1 and averages[0].sharding.is_equivalent_to(sharded, 2)
  actual, after, _ = run(opt, placed, 20)
  assert next(x for x in jax.tree.leaves(after) if x.shape == (8, 4)).sharding.is_equivalent_to(
    sharded, 2
  )
  expected, _, _ = run(opt, params, 20)  # one device
  for name in params:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7)


def mnist1d_config(**optimizer):
  cfg = bbconfig.load_sibling(
    str(pathlib.Path(__file__).parents[2] / "configs" / "x.py"), "mnist1d_base"
  ).get_config()
  cfg.optimizer = ml_collections.ConfigDict(optimizer)
  return cfg


EXAMPLE = {
  "inputs": jax.ShapeDtypeStruct((6, 6, 3), jnp.float32),
  "labels": jax.ShapeDtypeStruct((), jnp.int32),
}


@pytest.mark.parametrize("kind, gain", [("power_sign", math.e), ("add_sign", 2.0)])
def test_a_config_builds_the_optimizer_and_the_step_takes_it(kind, gain):
  cfg = mnist1d_config(name=kind, learning_rate=0.05, beta=0.8, decay="cyclical", num_periods=2)
  plan = bbconfig.plan_from_config(cfg)
  assert plan.baseline_momentum == 0.8  # beta is what the plan's momentum feeds
  optimizer = bbconfig.optimizer_from_config(cfg, plan)
  model = create_model("mlp", num_classes=10)
  mesh = shd.make_mesh()
  inputs = jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32)
  state = st.create_train_state(model, optimizer, inputs, mesh)
  step = st.make_train_step(model, optimizer, dataset_size=50_000, data_shards=8)
  steps = st.CompiledSteps(step, state, EXAMPLE, mesh)
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.normal(size=(16, 6, 6, 3)).astype(np.float32),
    "labels": rng.integers(0, 10, 16).astype(np.int32),
  }
  state, metrics = steps(state, shd.global_batch(mesh, batch, 16))
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  assert metrics["learning_rate"] == pytest.approx(0.05)
  assert metrics["momentum"] == pytest.approx(0.8)
  # first step: m = (1 - beta) g agrees with g everywhere and f(0) = 1
  assert metrics["update_norm"] == pytest.approx(0.05 * gain * metrics["grad_norm"], rel=1e-5)


@pytest.mark.parametrize(
  "fields, match",
  [
    ({"decay": "cosine"}, "optimizer.decay: 'cosine' is not one of none"),
    ({"alpha": 0.5}, "optimizer.alpha: must be >= 1"),
    ({"beta": 1.0}, r"optimizer.beta: must be in \[0, 1\)"),
    ({"num_periods": 0}, "optimizer.num_periods: must be positive"),
    ({"momentum": 0.9}, "optimizer.momentum: not a field of power_sign"),
  ],
)
def test_config_errors_name_the_field(fields, match):
  cfg = mnist1d_config(name="power_sign", learning_rate=0.05, **fields)
  with pytest.raises(bbconfig.ConfigError, match=match):
    bbconfig.plan_from_config(cfg)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: optim.power_sign(0.1, beta=1.0), "beta"),
    (lambda: optim.add_sign(0.1, alpha=0.9), "alpha"),
    (lambda: optim.power_sign(0.1, decay="linear"), "decay_steps"),
    (lambda: optim.add_sign(0.1, decay="exp"), "decay"),
    (lambda: optim.power_sign(0.1, decay="restart", decay_steps=10, num_periods=0), "num_periods"),
  ],
)
def test_bad_arguments_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
