"""Sharpness: power iteration and ε-sharpness against closed forms, sharded and not."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bigbatch import sharding as shd
from bigbatch.measure import sharpness
from bigbatch.models.small import MLP

# a 10-parameter pytree: power iteration must not assume one flat vector
SHAPES = {"a": (2, 3), "b": (4,)}


def unflatten(flat):
  return {"a": flat[:6].reshape(2, 3), "b": flat[6:]}


def quadratic(matrix):
  matrix = jnp.asarray(matrix, jnp.float32)

  def loss(params):
    w = ravel_pytree(params)[0]
    return 0.5 * w @ matrix @ w

  return loss


def rotated(eigenvalues, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(10, 10)))
  return q @ np.diag(eigenvalues) @ q.T


@pytest.mark.parametrize(
  "matrix, expected",
  [
    (np.diag([4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0, -0.5, -1.0]), 4.0),
    (rotated([5.0, -3.0, 2.0, 1.0, 1.0, 0.5, 0.3, 0.1, -0.1, 0.0]), 5.0),
    # a saddle whose negative curvature dominates: the largest magnitude, signed
    (rotated([-6.0, 4.0, 2.0, 1.0, 0.5, 0.5, 0.2, 0.1, -1.0, 0.0], seed=1), -6.0),
  ],
  ids=["diagonal", "rotated", "negative-dominant"],
)
def test_power_iteration_finds_the_largest_magnitude_eigenvalue(matrix, expected):
  params = unflatten(jnp.ones(10))
  result = sharpness.hessian_top_eigenvalue(
    quadratic(matrix), params, iterations=500, key=jax.random.key(3), tol=1e-6
  )
  assert bool(result.converged) and int(result.iterations) < 500
  assert float(result.value) == pytest.approx(expected, rel=1e-4)


def test_power_iteration_counts_its_iterations():
  params = unflatten(jnp.ones(10))
  # every direction an eigenvector: the 1st estimate is exact, the 2nd confirms it
  flat = sharpness.hessian_top_eigenvalue(quadratic(2.0 * np.eye(10)), params, tol=1e-6)
  assert float(flat.value) == pytest.approx(2.0, rel=1e-6)
  assert int(flat.iterations) == 2
  # tol = 0 never passes on a spread spectrum: all iterations run, not converged
  spread = np.diag(np.linspace(1.0, 2.0, 10))
  capped = sharpness.hessian_top_eigenvalue(quadratic(spread), params, iterations=7, tol=0.0)
  assert int(capped.iterations) == 7 and not bool(capped.converged)


def separable(a):
  a = jnp.asarray(a, jnp.float32)

  def loss(params):
    return jnp.sum(a * ravel_pytree(params)[0] ** 2)

  return loss


def box_maximum(a, w, epsilon):
  """max of sum a_i (w_i + y_i)^2 over |y_i| <= eps (|w_i| + 1), coordinate by coordinate."""
  r = epsilon * (np.abs(w) + 1.0)
  far = (np.abs(w) + r) ** 2  # a_i > 0: the corner away from zero
  near = np.maximum(np.abs(w) - r, 0.0) ** 2  # a_i < 0: as close to zero as the box allows
  return float(np.sum(a * np.where(a > 0, far, near)))


@pytest.mark.parametrize("epsilon", sharpness.PAPER_EPSILONS)
def test_epsilon_sharpness_reaches_the_box_maximum(epsilon):
  rng = np.random.default_rng(0)
  a = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.1, 2.5, -0.7, 1.0, -2.0])
  w = rng.normal(size=10)
  w[-1] = 2e-4  # inside its own box: the maximum is interior, at y = -w
  result = sharpness.epsilon_sharpness(
    separable(a),
    unflatten(jnp.asarray(w, jnp.float32)),
    epsilon=epsilon,
    steps=30,
    learning_rate=0.1,
  )
  f, f_max = float(np.sum(a * w**2)), box_maximum(a, w, epsilon)
  assert float(result.loss) == pytest.approx(f, rel=1e-6)
  assert float(result.max_loss) == pytest.approx(f_max, rel=1e-6)
  assert float(result.sharpness) == pytest.approx((f_max - f) / (1 + f) * 100, rel=1e-3)


def test_epsilon_sharpness_at_a_stationary_point_needs_a_random_start():
  a = np.linspace(0.5, 3.0, 10)
  params = unflatten(jnp.zeros(10))
  # zero gradient at y = 0: the ascent cannot move
  assert float(sharpness.epsilon_sharpness(separable(a), params).sharpness) == 0.0
  result = sharpness.epsilon_sharpness(separable(a), params, key=jax.random.key(0))
  # every corner of the box |y_i| <= eps is a maximum: f = eps^2 sum a_i, f(w) = 0
  assert float(result.sharpness) == pytest.approx(1e-6 * a.sum() * 100, rel=1e-3)


class NormedMLP(nn.Module):
  """Dense, batch norm, ReLU, dense: the smallest model with batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(4)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(3)(nn.relu(x))


def tiny_problem(model, examples=16):
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.normal(size=(examples, 5)).astype(np.float32),
    "labels": rng.integers(0, 3, size=examples).astype(np.int32),
  }
  variables = model.init(jax.random.key(1), jnp.asarray(batch["inputs"]), train=False)
  batch_stats = variables.get("batch_stats", {})
  if batch_stats:  # running averages away from their (0, 1) initial values
    _, updates = model.apply(variables, batch["inputs"] * 2 + 1, mutable=["batch_stats"])
    batch_stats = updates["batch_stats"]
  return variables["params"], batch_stats, batch


@pytest.mark.parametrize("model", [MLP(features=(4,), num_classes=3), NormedMLP()])
def test_model_loss_eigenvalue_matches_the_dense_hessian(model):
  params, batch_stats, batch = tiny_problem(model)
  loss_fn = sharpness.model_loss(model, batch_stats, batch)
  flat, unravel = ravel_pytree(params)
  # jitted: op by op, the few dozen Hessian rows took ten times as long on CPU
  hessian = jax.jit(jax.hessian(lambda flat: loss_fn(unravel(flat))))(flat)
  eigenvalues = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
  expected = eigenvalues[np.argmax(np.abs(eigenvalues))]
  result = sharpness.hessian_top_eigenvalue(loss_fn, params, iterations=1000, tol=1e-7)
  assert np.isfinite(float(result.value)) and float(result.value) > 0
  assert float(result.value) == pytest.approx(expected, rel=1e-3)


def test_a_new_batch_of_the_same_shapes_reuses_the_compiled_measurement():
  model = MLP(features=(4,), num_classes=3)
  params, batch_stats, batch = tiny_problem(model)
  options = {"iterations": 3, "tol": 0.0}
  first = sharpness.hessian_top_eigenvalue(
    sharpness.model_loss(model, batch_stats, batch), params, **options
  )
  compiled = sharpness._power_iteration._cache_size()
  other = jax.tree.map(lambda x: x[::-1].copy(), batch)
  # an equal (not the same) model object and new examples: arguments, not a new program
  loss_fn = sharpness.model_loss(MLP(features=(4,), num_classes=3), batch_stats, other)
  second = sharpness.hessian_top_eigenvalue(loss_fn, params, **options)
  assert sharpness._power_iteration._cache_size() == compiled
  # reversing the examples leaves the mean loss (and its Hessian) unchanged
  assert float(second.value) == pytest.approx(float(first.value), rel=1e-5)


def test_sharded_measurements_equal_the_single_device_ones():
  model = NormedMLP()
  params, batch_stats, batch = tiny_problem(model)
  mesh = shd.make_mesh(data=4, fsdp=2)
  # every leaf with an even axis split over fsdp, the 16 examples over all 8 devices
  placed = jax.tree.map(
    lambda x: jax.device_put(x, shd.param_sharding(x, mesh, min_size=1)), params
  )
  assert not placed["Dense_0"]["kernel"].sharding.is_fully_replicated
  sharded_loss = sharpness.model_loss(model, batch_stats, shd.global_batch(mesh, batch, 16))
  single_loss = sharpness.model_loss(model, batch_stats, jax.tree.map(jnp.asarray, batch))
  # a fixed count (tol 0): the same iterates on both sides, up to summation order
  options = {"iterations": 20, "tol": 0.0, "key": jax.random.key(2)}
  sharded = sharpness.hessian_top_eigenvalue(sharded_loss, placed, **options)
  single = sharpness.hessian_top_eigenvalue(single_loss, params, **options)
  assert float(sharded.value) == pytest.approx(float(single.value), rel=1e-5)
  sharded_eps = sharpness.epsilon_sharpness(sharded_loss, placed)
  single_eps = sharpness.epsilon_sharpness(single_loss, params)
  assert float(sharded_eps.sharpness) > 0
  assert float(sharded_eps.sharpness) == pytest.approx(float(single_eps.sharpness), rel=1e-4)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"iterations": 0}, "iterations: must be a positive integer"),
    ({"tol": -1.0}, "tol: must be >= 0"),
  ],
)
def test_bad_power_iteration_arguments_name_the_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sharpness.hessian_top_eigenvalue(quadratic(np.eye(10)), unflatten(jnp.ones(10)), **kwargs)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"epsilon": 0.0}, "epsilon: must be positive"),
    ({"steps": 0}, "steps: must be a positive integer"),
    ({"learning_rate": -0.1}, "learning_rate: must be positive"),
  ],
)
def test_bad_sharpness_arguments_name_the_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sharpness.epsilon_sharpness(quadratic(np.eye(10)), unflatten(jnp.ones(10)), **kwargs)
  with pytest.raises(ValueError, match="loss_fn: must be callable"):
    sharpness.epsilon_sharpness(None, unflatten(jnp.ones(10)))
