"""bigbatch.optim against optax, against NumPy, across phases and over 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import bigbatch as bb
from bigbatch import optim
from bigbatch.schedules import make_schedule

STEPS = 100


def random_params(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
    "conv": jax.random.normal(keys[0], (3, 3, 4, 8)),
    "dense": {
      "kernel": jax.random.normal(keys[1], (16, 8)),
      "bias": jax.random.normal(keys[2], (8,)),
    },
  }


# the pseudo-gradients' noise for each leaf shape, drawn once in NumPy: a jax.random draw
# inside each jitted step made every test compile for seconds
_NOISE: dict = {}


def _noise(shape: tuple) -> np.ndarray:
  if shape not in _NOISE:
    rng = np.random.default_rng(sum(shape) + 7 * len(shape))
    _NOISE[shape] = rng.normal(size=(STEPS, *shape)).astype(np.float32)
  return _NOISE[shape]


def gradients(params, step):
  """Deterministic pseudo-gradients: random, plus a pull toward the parameters."""
  leaves, tree = jax.tree.flatten(params)
  return jax.tree.unflatten(tree, [0.5 * x + jnp.asarray(_noise(x.shape))[step] for x in leaves])


def train(opt, params, steps=STEPS):
  """`steps` jitted updates; returns the parameters, the state and the compiled update."""
  state = jax.jit(opt.init, out_shardings=optim.state_shardings(opt, params))(params)

  @jax.jit
  def step(params, state, i):
    updates, state = opt.update(gradients(params, i), state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, i)
  return params, state, step


def assert_trees_close(actual, expected, rtol):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    assert np.linalg.norm(a - e) <= rtol * np.linalg.norm(e)


PAIRS = {
  "sgd": (optim.sgd_momentum(0.05, 0.9), optax.sgd(0.05, 0.9)),
  "sgd_nesterov": (
    optim.sgd_momentum(0.05, 0.9, nesterov=True),
    optax.sgd(0.05, 0.9, nesterov=True),
  ),
  "sgd_plain": (optim.sgd_momentum(0.05, 0.0), optax.sgd(0.05)),
  "sgdw": (
    optim.sgd_momentum(0.05, 0.9, weight_decay=5e-4),
    optax.chain(optax.trace(0.9), optax.add_decayed_weights(5e-4), optax.scale(-0.05)),
  ),
  "adam": (optim.adam(1e-2), optax.adam(1e-2)),
  "adam_nesterov": (optim.adam(1e-2, nesterov=True), optax.adam(1e-2, nesterov=True)),
  "adamw": (optim.adamw(1e-2, weight_decay=1e-2), optax.adamw(1e-2, weight_decay=1e-2)),
  "amsgrad": (optim.amsgrad(1e-2), optax.amsgrad(1e-2)),
}


@pytest.mark.parametrize("name", PAIRS)
def test_matches_optax_with_constant_hyperparameters(name):
  ours, theirs = PAIRS[name]
  params = random_params()
  actual, _, _ = train(ours, params)
  expected, _, _ = train(theirs, params)
  assert_trees_close(actual, expected, rtol=1e-6)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), actual, params))
  assert min(float(x) for x in moved) > 1e-3  # the comparison is not between no-ops


def test_weight_decay_mask_leaves_masked_parameters_undecayed():
  mask = {"conv": True, "dense": {"kernel": True, "bias": False}}
  params = random_params()
  masked, _, _ = train(optim.sgd_momentum(0.05, 0.9, weight_decay=0.1, mask=mask), params)
  decayed, _, _ = train(optim.sgd_momentum(0.05, 0.9, weight_decay=0.1), params)
  plain, _, _ = train(optim.sgd_momentum(0.05, 0.9), params)
  assert_trees_close(masked["dense"]["kernel"], decayed["dense"]["kernel"], 1e-6)
  assert_trees_close(masked["dense"]["bias"], plain["dense"]["bias"], 1e-6)
  assert not np.allclose(masked["dense"]["bias"], decayed["dense"]["bias"], rtol=1e-3)


def amsgrad_reddi_numpy(params, lr, b1, b2, eps, steps):
  """AMSGrad as written by Reddi et al. (no bias correction), in float64."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  m = jax.tree.map(np.zeros_like, params)
  v = jax.tree.map(np.zeros_like, params)
  vmax = jax.tree.map(np.zeros_like, params)
  for i in range(steps):
    g = jax.tree.map(
      lambda x: np.asarray(x, np.float64),
      gradients(jax.tree.map(jnp.asarray, jax.tree.map(lambda x: x.astype(np.float32), params)), i),
    )
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
    vmax = jax.tree.map(np.maximum, vmax, v)
    params = jax.tree.map(lambda w, m, vm: w - lr * m / (np.sqrt(vm) + eps), params, m, vmax)
  return params


def test_amsgrad_without_bias_correction_is_reddis_algorithm():
  params = random_params()
  actual, _, _ = train(optim.amsgrad(1e-2, bias_correction=False), params)
  expected = amsgrad_reddi_numpy(params, 1e-2, 0.9, 0.999, 1e-8, STEPS)
  assert_trees_close(actual, expected, rtol=2e-5)
  corrected, _, _ = train(optim.amsgrad(1e-2), params)  # and it is not optax's variant
  leaf = np.asarray(corrected["dense"]["bias"], np.float64)
  assert np.linalg.norm(leaf - expected["dense"]["bias"]) > 1e-3 * np.linalg.norm(leaf)


def sgd_numpy(params, lrs, momenta, nesterov=False):
  """Accumulation-form momentum with per-step lr and m, in float64."""
  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  acc = jax.tree.map(np.zeros_like, w)
  for i, (lr, m) in enumerate(zip(lrs, momenta)):
    g = jax.tree.map(
      lambda x: np.asarray(x, np.float64),
      gradients(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), w), i),
    )
    acc = jax.tree.map(lambda a, g, m=m: m * a + g, acc, g)
    step = jax.tree.map(lambda a, g, m=m: g + m * a, acc, g) if nesterov else acc
    w = jax.tree.map(lambda w, s, lr=lr: w - lr * s, w, step)
  return w


def small_plan():
  """N = 2,000, batch 20 -> 100 -> 500 (lr fixed), then capped (lr decays): 6 epochs."""
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


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_follows_a_plan_and_switches_at_phase_boundaries(nesterov):
  plan = small_plan()
  assert [p.batch_size for p in plan.phases] == [20, 100, 500, 500]
  steps = plan.total_steps
  opt = optim.sgd_momentum(plan, momentum=plan, nesterov=nesterov)
  params = jax.device_put(random_params(), jax.devices()[0])  # committed, as outputs are
  actual, state, step = train(opt, params, steps)
  lrs = [plan.phase_at(i).learning_rate for i in range(steps)]
  expected = sgd_numpy(params, lrs, [0.9] * steps, nesterov)
  assert_trees_close(actual, expected, rtol=2e-5)
  assert step._cache_size() == 1  # one compilation for all phases
  # the state holds the hyperparameters of the last step taken
  hyper = optim.current_hyperparams(state)
  assert float(hyper["learning_rate"]) == pytest.approx(plan.phases[-1].learning_rate)
  assert float(hyper["momentum"]) == pytest.approx(0.9)


def test_momentum_that_changes_between_phases_needs_no_recompile():
  boundary = 40
  momentum = optax.join_schedules(
    [optax.constant_schedule(0.9), optax.constant_schedule(0.98)], [boundary]
  )
  lr = optax.join_schedules(
    [optax.constant_schedule(0.05), optax.constant_schedule(0.01)], [boundary]
  )
  opt = optim.sgd_momentum(lr, momentum=momentum)
  params = jax.device_put(random_params(), jax.devices()[0])
  states = []
  state = jax.jit(opt.init, out_shardings=optim.state_shardings(opt, params))(params)
  update = jax.jit(opt.update)
  for i in range(STEPS):
    updates, state = update(gradients(params, i), state, params)
    params = optax.apply_updates(params, updates)
    states.append(optim.current_hyperparams(state))
  assert update._cache_size() == 1
  assert float(states[boundary - 1]["momentum"]) == pytest.approx(0.9)
  assert float(states[boundary]["momentum"]) == pytest.approx(0.98)
  assert float(states[boundary - 1]["learning_rate"]) == pytest.approx(0.05)
  assert float(states[boundary]["learning_rate"]) == pytest.approx(0.01)
  expected = sgd_numpy(
    random_params(),
    [0.05] * boundary + [0.01] * (STEPS - boundary),
    [0.9] * boundary + [0.98] * (STEPS - boundary),
  )
  assert_trees_close(params, expected, rtol=2e-5)


@pytest.mark.parametrize(
  "make",
  [
    lambda plan: optim.adam(plan, b1=plan),
    lambda plan: optim.adamw(plan, b1=plan, weight_decay=plan),
    lambda plan: optim.amsgrad(plan, b1=plan),
  ],
)
def test_adam_family_follows_a_plan(make):
  plan = small_plan()
  opt = make(plan)
  params = jax.device_put(random_params(), jax.devices()[0])
  state = jax.jit(opt.init, out_shardings=optim.state_shardings(opt, params))(params)
  update = jax.jit(opt.update)
  for i in range(plan.total_steps):
    updates, state = update(gradients(params, i), state, params)
    params = optax.apply_updates(params, updates)
    hyper = optim.current_hyperparams(state)
    assert float(hyper["learning_rate"]) == pytest.approx(plan.phase_at(i).learning_rate)
    assert float(hyper["momentum"]) == pytest.approx(0.9)
  assert update._cache_size() == 1


def test_current_hyperparams_inside_a_chain():
  opt = optax.chain(optax.clip_by_global_norm(1.0), optim.adamw(3e-4, b1=0.8, weight_decay=0.1))
  hyper = optim.current_hyperparams(opt.init(random_params()))
  assert float(hyper["learning_rate"]) == pytest.approx(3e-4)
  assert float(hyper["momentum"]) == pytest.approx(0.8)
  assert float(hyper["weight_decay"]) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["sgd", "sgd_nesterov", "sgdw", "adam", "adamw", "amsgrad"])
def test_sharded_parameters_keep_their_shardings(name):
  ours, _ = PAIRS[name]
  mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
  assert mesh.size == 8
  sharded = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  params = {
    "w": jax.random.normal(jax.random.PRNGKey(0), (16, 4)),
    "b": jax.random.normal(jax.random.PRNGKey(1), (4,)),
  }
  shardings = {"w": sharded, "b": replicated}
  placed = jax.device_put(params, shardings)
  state = jax.jit(ours.init, out_shardings=optim.state_shardings(ours, placed))(placed)
  moments = [leaf for leaf in jax.tree.leaves(state) if leaf.shape == (16, 4)]
  assert len(moments) == (1 if name.startswith("sgd") else 3 if name == "amsgrad" else 2)
  assert all(leaf.sharding.is_equivalent_to(sharded, 2) for leaf in moments)
  # and abstract parameters give the same shardings, before anything is allocated
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), placed
  )
  assert jax.tree.leaves(optim.state_shardings(ours, abstract)) == jax.tree.leaves(
    optim.state_shardings(ours, placed)
  )
  actual, state_after, _ = train(ours, placed, steps=20)
  assert actual["w"].sharding.is_equivalent_to(sharded, 2)
  before = [x.sharding for x in jax.tree.leaves(state) if x.shape == (16, 4)]
  after = [x.sharding for x in jax.tree.leaves(state_after) if x.shape == (16, 4)]
  assert before and all(a.is_equivalent_to(b, 2) for a, b in zip(after, before))
  expected, _, _ = train(ours, params, steps=20)  # one device
  assert_trees_close(actual, expected, rtol=1e-6)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: optim.sgd_momentum(0.1, momentum=1.0), "momentum"),
    (lambda: optim.sgd_momentum(-0.1), "learning_rate"),
    (lambda: optim.adam(1e-3, b1=1.2), "b1"),
    (lambda: optim.adam(1e-3, b2=1.0), "b2"),
    (lambda: optim.adamw(1e-3, weight_decay=-1.0), "weight_decay"),
  ],
)
def test_bad_hyperparameters_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
