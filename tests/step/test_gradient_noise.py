"""The gradient noise scale measured in the step, against the exact value from per-example gradients.

A logistic regression on fixed data, with the learning rate 0 so that the
parameters (and so the true |G|^2 and tr(S)) stay where they are: the
smoothed estimates of the step must agree with the exact tr(S) / |G|^2,
computed from every example's own gradient (`vmap` of `grad`), within 10%, on
one device (two halves of the batch), on 8 devices (one gradient per device),
and with accumulation (one per micro-batch per device).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.step import gradients as gn

N, FEATURES, CLASSES = 4096, 16, 4


class Logistic(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(CLASSES, kernel_init=nn.initializers.normal(0.3))(x)


def _per_example(model, x, labels, params=None):
  """Every example's gradient, flattened: (N, parameters)."""
  if params is None:
    params = model.init(jax.random.key(1), x[:1])["params"]

  def loss(p, xi, yi):
    return st.cross_entropy(model.apply({"params": p}, xi[None]), yi[None])[0]

  per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, labels)
  return np.concatenate(
    [np.asarray(g).reshape(len(x), -1) for g in jax.tree.leaves(per_example)], 1
  )


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, FEATURES)).astype(np.float32)
  w = rng.normal(size=(FEATURES, CLASSES))
  labels = np.argmax(x @ w + rng.gumbel(size=(N, CLASSES)) * 2.0, axis=1).astype(np.int32)
  model = Logistic()
  flat = _per_example(model, x, labels)
  mean = flat.mean(0)
  exact = {
    "grad_sq_norm": float(mean @ mean),
    "grad_trace": float(((flat - mean) ** 2).sum(1).mean()),
  }
  exact["grad_noise_scale"] = exact["grad_trace"] / exact["grad_sq_norm"]
  return model, x, labels, exact


@pytest.mark.parametrize(
  "devices,micro_batch_size,every",
  [(1, None, 1), (1, None, 4), (8, None, 1), (8, 64, 1)],
  ids=["1-device", "1-device-every-4", "8-devices", "accumulation"],
)
def test_the_smoothed_estimate_agrees_with_per_example_gradients(
  problem, devices, micro_batch_size, every
):
  model, x, labels, exact = problem
  assert 20 < exact["grad_noise_scale"] < 2000  # a noise scale the batch below can measure
  mesh = shd.make_mesh(devices=jax.devices()[:devices])
  tx = optax.sgd(0.0)  # the parameters stay put, so the truth does too
  inputs = jax.ShapeDtypeStruct((1, FEATURES), np.float32)
  # seed 1: the parameters `problem` took the exact per-example gradients at
  state = st.create_train_state(model, tx, inputs, mesh, seed=1)
  batch_size = 256
  step = one_in(
    every,
    model,
    tx,
    mesh=mesh,
    measure_noise=True,
    # one step in `every` measures: a horizon `every` times longer averages as many
    noise_horizon=100.0 * batch_size * every,
    micro_batch_size=micro_batch_size,
    data_shards=shd.data_parallel_size(mesh),
  )
  rng = np.random.default_rng(devices + (micro_batch_size or 0))
  for i in range(400 * every):
    take = rng.integers(0, N, batch_size)  # with replacement, as the estimator assumes
    state, metrics = step(
      i, state, shd.global_batch(mesh, {"inputs": x[take], "labels": labels[take]}, batch_size)
    )
    jax.block_until_ready(metrics)  # one step at a time, as the trainer on CPU devices
  for key in ("grad_noise_scale", "grad_sq_norm", "grad_trace"):
    assert float(metrics[key]) == pytest.approx(exact[key], rel=0.10), key
  # resolved here, so both bounds are numbers, and they hold the exact value
  low, high = float(metrics["grad_noise_scale_low"]), float(metrics["grad_noise_scale_high"])
  assert 0 < low <= exact["grad_noise_scale"] <= high < np.inf
  assert float(metrics["grad_sq_norm_se"]) > 0 and float(metrics["grad_noise_steps"]) > 50


def one_in(every, model, tx, **options):
  """`step(i, state, batch)`: step i measures when `every` divides it (the trainer's rule)."""
  measuring = jax.jit(st.make_train_step(model, tx, noise_every=every, **options))
  between = jax.jit(
    st.make_train_step(model, tx, noise_every=every, measure_this_step=False, **options)
  )
  return lambda i, state, batch: (between if i % every else measuring)(state, batch)


def test_one_step_in_k_measures_and_its_smoothing_counts_the_k_steps_examples(problem):
  """noise_every=3 on one device, as the trainer runs it: steps 0, 3 and 6 cut the batch in
  halves and measure, the others (measure_this_step=False) take it whole. The smoothing holds exactly the three measurements, by hand (the
  halves' gradients from jax.grad), each standing for 3 x B examples; the parameters are
  those of the step that measures every time (the halves' mean gradient is the batch's).
  The interval's coverage is unchanged: per measurement the decay is that of every=1 at
  a horizon 3 times shorter, which the coverage tests below simulate."""
  model, x, labels, _ = problem
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  tx = optax.sgd(0.5)
  inputs = jax.ShapeDtypeStruct((1, FEATURES), np.float32)
  batch_size, horizon, every = 64, 1000.0, 3
  rng = np.random.default_rng(7)
  takes = [rng.integers(0, N, batch_size) for _ in range(7)]

  def run(k):
    state = st.create_train_state(model, tx, inputs, mesh, seed=1)
    step = one_in(k, model, tx, mesh=mesh, measure_noise=True, noise_horizon=horizon)
    seen = []
    for i, take in enumerate(takes):
      seen.append(state.params)
      state, metrics = step(
        i, state, shd.global_batch(mesh, {"inputs": x[take], "labels": labels[take]}, batch_size)
      )
    return state, metrics, seen

  state, metrics, seen = run(every)
  reference, _, _ = run(1)

  def grad(params, take):
    def loss(p):
      return st.cross_entropy(model.apply({"params": p}, x[take]), labels[take]).mean()

    return np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.grad(loss)(params))])

  noise = gn.GradientNoise.zeros()
  for i in range(0, len(takes), every):
    half = batch_size // 2
    first, second = grad(seen[i], takes[i][:half]), grad(seen[i], takes[i][half:])
    small_sq = (first @ first + second @ second) / 2
    big_sq = ((first + second) / 2) @ ((first + second) / 2)
    sq_norm, trace = gn.estimates(small_sq, big_sq, half, batch_size)
    noise = gn.smooth(noise, sq_norm, trace, every * batch_size, horizon)
  for field in dataclasses.fields(gn.GradientNoise):
    got, want = getattr(state.noise, field.name), getattr(noise, field.name)
    np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=field.name)
  assert float(metrics["grad_noise_steps"]) == pytest.approx(
    float(gn.moments(noise)["steps"]), rel=1e-5
  )
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_estimates_and_smoothing_by_hand():
  # two groups of 4 with |g|^2 = 5 and 3 (mean 4), their mean's |G|^2 = 2, B = 8
  sq, trace = gn.estimates(jnp.float32(4.0), jnp.float32(2.0), 4, 8)
  assert float(sq) == pytest.approx((8 * 2 - 4 * 4) / 4)  # 0
  assert float(trace) == pytest.approx((4 - 2) / (1 / 4 - 1 / 8))  # 16
  noise = gn.GradientNoise.zeros()
  noise = gn.smooth(noise, 2.0, 10.0, examples=100, horizon=100)
  read = gn.read(noise)
  # debiased: after one step the estimate is the step's own value
  assert float(read["grad_sq_norm"]) == pytest.approx(2.0)
  moments = gn.moments(noise)
  assert float(moments["trace"] / moments["sq_norm"]) == pytest.approx(5.0)
  # one step says nothing of its own spread: B_simple and both bounds are unknown
  assert float(moments["steps"]) == pytest.approx(1.0)
  for key in ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high"):
    assert np.isnan(float(read[key])), key
  noise = gn.smooth(noise, 4.0, 14.0, examples=100, horizon=100)
  decay = np.exp(-1.0)
  w = np.array([decay * (1 - decay), 1 - decay])  # each step's weight in the EMA
  g, t = np.array([2.0, 4.0]), np.array([10.0, 14.0])
  mean_g, mean_t = w @ g / w.sum(), w @ t / w.sum()
  steps = w.sum() ** 2 / (w**2).sum()
  moments = gn.moments(noise)
  assert float(moments["sq_norm"]) == pytest.approx(mean_g, rel=1e-6)
  assert float(moments["steps"]) == pytest.approx(steps, rel=1e-6)
  # the weighted variance, unbiased, over the effective number of steps
  var_g = (w @ (g - mean_g) ** 2 / w.sum()) / (steps - 1)
  cov = (w @ ((g - mean_g) * (t - mean_t)) / w.sum()) / (steps - 1)
  assert float(moments["var_sq_norm"]) == pytest.approx(var_g, rel=1e-5)
  assert float(moments["cov"]) == pytest.approx(cov, rel=1e-5)
  assert np.isnan(float(gn.read(gn.GradientNoise.zeros())["grad_noise_scale"]))


def _fieller_by_brute_force(stats, z):
  """Every r on a fine grid with (T - r G)^2 <= z^2 Var(T - r G)."""
  r = np.geomspace(1.0, 1e9, 4_000_000)
  g, t = stats["sq_norm"], stats["trace"]
  var = stats["var_trace"] - 2 * r * stats["cov"] + r**2 * stats["var_sq_norm"]
  return r[(t - r * g) ** 2 <= z * z * var]


@pytest.mark.parametrize(
  "case,expected",
  [
    ({"sq_norm": 0.01, "var_sq_norm": 1e-6}, "both"),  # |G|^2 10 standard errors from 0
    ({"sq_norm": 0.001, "var_sq_norm": 1e-6}, "low"),  # 1 standard error: not resolved
    ({"sq_norm": -0.0005, "var_sq_norm": 1e-6}, "low"),  # a negative estimate, as in the issue
    ({"sq_norm": -0.01, "var_sq_norm": 1e-6}, "below"),  # 10 standard errors below 0
  ],
)
def test_fieller_interval_against_the_inequality_by_hand(case, expected):
  stats = {"trace": 8.6, "var_trace": 0.04, "cov": 2e-5, **case}
  z = 1.96
  out = {
    k: float(v) for k, v in gn.interval({k: jnp.float32(v) for k, v in stats.items()}, z).items()
  }
  inside = _fieller_by_brute_force(stats, z)
  if expected == "both":
    assert out["low"] == pytest.approx(inside.min(), rel=1e-3)
    assert out["high"] == pytest.approx(inside.max(), rel=1e-3)
    assert out["value"] == pytest.approx(stats["trace"] / stats["sq_norm"], rel=1e-5)
  elif expected == "low":  # every ratio from the lower bound up is in the set: no upper bound
    assert out["low"] == pytest.approx(inside.min(), rel=1e-3) and inside.max() == 1e9
    assert out["high"] == np.inf and np.isnan(out["value"])
  else:  # no positive ratio fits; |G|^2 >= 0, so the bound is tr(S)'s low over |G|^2's high
    assert inside.size == 0
    se = np.sqrt(stats["var_sq_norm"])
    assert out["low"] == pytest.approx((8.6 - z * 0.2) / (z * se), rel=1e-5)
    assert out["high"] == np.inf and np.isnan(out["value"])
  assert out["low"] > 0


def test_nothing_is_known_while_the_trace_is_not_resolved():
  stats = {"sq_norm": 0.001, "var_sq_norm": 1e-6, "trace": 0.1, "var_trace": 1.0, "cov": 0.0}
  out = gn.interval({k: jnp.float32(v) for k, v in stats.items()}, 1.96)
  assert all(np.isnan(float(out[k])) for k in ("value", "low", "high"))


def _simulated_bounds(per_example, seeds, steps, batch, pieces, horizon):
  """B_simple's bounds after `steps` steps of the estimator (`gradients.estimates`,
  `smooth`, `read`) on batches drawn with replacement from exact per-example
  gradients, cut in `pieces` groups, once per seed."""
  n = per_example.shape[0]

  def one_seed(key):
    def body(noise, key):
      take = jax.random.randint(key, (batch,), 0, n)
      groups = per_example[take].reshape(pieces, batch // pieces, -1).mean(1)
      small_sq = jnp.mean(jnp.sum(groups**2, -1))
      big_sq = jnp.sum(groups.mean(0) ** 2)
      sq_norm, trace = gn.estimates(small_sq, big_sq, batch / pieces, batch)
      return gn.smooth(noise, sq_norm, trace, batch, horizon), None

    noise, _ = jax.lax.scan(body, gn.GradientNoise.zeros(), jax.random.split(key, steps))
    read = gn.read(noise)
    return read["grad_noise_scale_low"], read["grad_noise_scale_high"], read["grad_noise_scale"]

  return jax.jit(jax.vmap(one_seed))(jax.random.split(jax.random.key(0), seeds))


@pytest.mark.parametrize("pieces", [2, 8], ids=["halves", "8-groups"])
def test_the_interval_covers_the_exact_noise_scale_at_its_nominal_rate(problem, pieces):
  """300 seeds of 300 steps at batch 256: the 95% interval holds the exact B_simple of the
  per-example gradients in 95% of them (binomial standard error 1.3%)."""
  model, x, labels, exact = problem
  flat = jnp.asarray(_per_example(model, x, labels))
  low, high, value = map(np.asarray, _simulated_bounds(flat, 300, 300, 256, pieces, 50 * 256))
  truth = exact["grad_noise_scale"]
  assert np.isfinite(high).all() and (value > 0).all()  # resolved here: every seed has both
  covered = np.mean((low <= truth) & (truth <= high))
  assert 0.91 <= covered <= 0.985, covered


def test_at_the_optimum_the_gradient_is_not_resolved_and_only_a_lower_bound_is_given(problem):
  """At the loss's minimum the true |G|^2 is 0 and B_simple is infinite: the interval
  should reach up without bound in about 95% of seeds, and never show a negative value."""
  model, x, labels, _ = problem
  params = model.init(jax.random.key(1), x[:1])["params"]

  def loss(p):
    return st.cross_entropy(model.apply({"params": p}, x), labels).mean()

  tx = optax.lbfgs()
  opt = tx.init(params)
  value_and_grad = optax.value_and_grad_from_state(loss)

  @jax.jit
  def descend(params, opt):
    value, grad = value_and_grad(params, state=opt)
    updates, opt = tx.update(grad, opt, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), opt

  for _ in range(200):
    params, opt = descend(params, opt)
  flat = jnp.asarray(_per_example(model, x, labels, params))
  mean = flat.mean(0)
  assert float(mean @ mean) < 1e-9  # the full-batch gradient is gone
  low, high, value = map(np.asarray, _simulated_bounds(flat, 300, 300, 256, 8, 50 * 256))
  unbounded = np.mean(np.isinf(high))
  assert 0.90 <= unbounded <= 0.99, unbounded
  assert not (value <= 0).any()  # a value is shown only where resolved, and then positive
  assert (low[np.isfinite(low)] > 0).all()


def test_a_batch_whose_halves_cannot_hold_a_ghost_batch_is_not_measured(tmp_path):
  """One device, no accumulation: measuring cuts the batch in halves, and a half of 16
  examples cannot be normalised in ghost batches of 16, so the step does not measure."""
  from small_run import small_config

  from bigbatch import config as bbconfig
  from bigbatch.models import create_model

  mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
  measured = {}
  for batch in (16, 32):
    config = small_config(str(tmp_path), batch_size=batch, ghost_batch_size=16)
    config.plan.strategy = "decay_lr"
    config.plan.batch_multiple = 16
    plan = bbconfig.plan_from_config(config)
    model = create_model("cnn1d", num_classes=10, ghost_batch_size=16)
    tx = bbconfig.optimizer_from_config(config, plan)
    measured[batch] = bbconfig.train_step_from_config(
      config, model, tx, plan, mesh, input_shape=(40,)
    )[1]
  assert measured == {16: False, 32: True}


def test_a_model_without_batch_norm_is_measured_on_8_devices(tmp_path):
  """With `ghost_batch_size` unset, only a model with whole-batch batch norm keeps the
  partitioned (unmeasured) step on several devices; an MLP's step measures, here on
  random data (the Logistic test above checks the values on 8 devices)."""
  from small_run import small_config

  from bigbatch import config as bbconfig
  from bigbatch.models import create_model

  mesh = shd.make_mesh(devices=jax.devices()[:8])
  measured, steps = {}, {}
  for name in ("mlp", "cnn1d"):
    config = small_config(str(tmp_path), ghost_batch_size=None, batch_size=64)
    config.plan.strategy = "decay_lr"
    config.model.name = name
    if name == "mlp":
      config.model.features = (32,)
    plan = bbconfig.plan_from_config(config)
    model = bbconfig.model_from_config(config, num_classes=10)
    tx = bbconfig.optimizer_from_config(config, plan)
    steps[name], measured[name] = bbconfig.train_step_from_config(
      config, model, tx, plan, mesh, input_shape=(40,)
    )
    if name == "mlp":
      state = st.create_train_state(model, tx, jax.ShapeDtypeStruct((1, 40), np.float32), mesh)
      rng = np.random.default_rng(0)
      host = {
        "inputs": rng.normal(size=(64, 40)).astype(np.float32),
        "labels": rng.integers(0, 10, 64).astype(np.int32),
      }
      step = jax.jit(steps[name])
      for _ in range(5):
        state, metrics = step(state, shd.global_batch(mesh, host, 64))
      assert float(metrics["grad_trace"]) > 0 and float(metrics["grad_noise_steps"]) > 1
  assert measured == {"mlp": True, "cnn1d": False}
  assert bbconfig.whole_batch_norm(create_model("cnn1d", num_classes=10), (40,), None)
  assert not bbconfig.whole_batch_norm(create_model("cnn1d", num_classes=10), (40,), 16)


def test_whole_batch_norm_is_not_measured_on_one_device_but_a_ghost_batch_reaching_it_is(
  tmp_path,
):
  """Cutting the batch in halves to measure would normalise each half apart; a user's NNX
  module that takes no `ghost_batch_size` still gets it (its flax BatchNorm intercepted),
  and so is measured."""
  from small_run import small_config

  from bigbatch import config as bbconfig

  one = shd.make_mesh(devices=jax.devices()[:1])
  measured = {}
  for name, ghost in (("cnn1d", None), ("cnn1d", 4), ("mlp", None), ("plugin_models:NNXNet", 4)):
    config = small_config(str(tmp_path), ghost_batch_size=ghost)
    config.model.name = name
    plan = bbconfig.plan_from_config(config)
    model = bbconfig.model_from_config(config, num_classes=10)
    tx = bbconfig.optimizer_from_config(config, plan)
    _, measured[name, ghost] = bbconfig.train_step_from_config(
      config, model, tx, plan, one, input_shape=(40,)
    )
  assert measured == {
    ("cnn1d", None): False,
    ("cnn1d", 4): True,
    ("mlp", None): True,
    # the ghost batch reaches the NNX module's own nnx.BatchNorm (`models.batch_norm`)
    ("plugin_models:NNXNet", 4): True,
  }
