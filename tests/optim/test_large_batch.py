"""LARS and LAMB step by step against NumPy transcriptions of the papers' algorithms (with
MLPerf's and BERT's exclusions), against optax's where they meet; Lion and Muon against
optax's own; masks read from the updates; clipping against `optax.clip_by_global_norm`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from bigbatch import optim

STEPS = 6
# a conv and a dense kernel, a bias, a norm scale and an embedding table
SHAPES = {
  "conv": {"kernel": (3, 3, 2, 4)},
  "dense": {"kernel": (4, 3), "bias": (3,)},
  "norm": {"scale": (3,)},
  "embed": {"embedding": (5, 3)},
}
KERNELS = {"conv/kernel", "dense/kernel"}  # decayed by default
MATRICES = KERNELS | {"embed/embedding"}  # take the trust ratio by default


def flat(tree):
  return dict(zip(jax.tree.leaves(optim.masks.paths(tree)), jax.tree.leaves(tree)))


def initial():
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  leaves, tree = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
  return jax.tree.unflatten(tree, [jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def noise(step):
  """The random part of step `step`'s gradient, in float32, as NumPy sees it too."""
  leaves, tree = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), step), len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def gradient(params, step):
  return jax.tree.map(lambda w, n: 0.5 * w + n, params, noise(step))


def run(tx, steps=STEPS):
  """Each step's parameters (as flat NumPy dicts) under `tx`."""
  params = initial()
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for step in range(steps):
    updates, state = update(gradient(params, step), state, params)
    params = optax.apply_updates(params, updates)
    out.append({k: np.asarray(v, np.float64) for k, v in flat(params).items()})
  return out, state


def assert_close(actual, expected, rtol=2e-5):
  for a, e in zip(actual, expected):
    for key in e:
      np.testing.assert_allclose(a[key], e[key], rtol=rtol, atol=1e-7, err_msg=key)


def numpy_lars(lr, m, wd, eta, decayed, trusted, steps=STEPS):
  """You et al. (2017) as MLPerf's ResNet-50 runs it, momentum in the accumulation form:
  per layer d = eta ||w|| / (||g|| + wd ||w||) (g + wd w) (d = g where excluded),
  A <- m A + d, w <- w - lr A."""
  w = {k: np.asarray(v, np.float64) for k, v in flat(initial()).items()}
  a = {k: np.zeros_like(v) for k, v in w.items()}
  out = []
  for step in range(steps):
    n = {k: np.asarray(v, np.float64) for k, v in flat(noise(step)).items()}
    for key in w:
      g = 0.5 * w[key] + n[key]
      wd_layer = wd if key in decayed else 0.0
      d = g + wd_layer * w[key]
      if key in trusted:
        w_norm, g_norm = np.linalg.norm(w[key]), np.linalg.norm(g)
        ratio = eta * w_norm / (g_norm + wd_layer * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
        d = ratio * d
      a[key] = m * a[key] + d
      w[key] = w[key] - lr(step) * a[key]
    out.append({k: v.copy() for k, v in w.items()})
  return out


def numpy_lamb(lr, b1, b2, eps, wd, decayed, trusted, steps=STEPS):
  """You et al. (2019), Algorithm 2, with bias correction."""
  w = {k: np.asarray(v, np.float64) for k, v in flat(initial()).items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  out = []
  for step in range(steps):
    t = step + 1
    n = {k: np.asarray(x, np.float64) for k, x in flat(noise(step)).items()}
    for key in w:
      g = 0.5 * w[key] + n[key]
      m[key] = b1 * m[key] + (1 - b1) * g
      v[key] = b2 * v[key] + (1 - b2) * g**2
      r = (m[key] / (1 - b1**t)) / (np.sqrt(v[key] / (1 - b2**t)) + eps)
      u = r + (wd if key in decayed else 0.0) * w[key]
      if key in trusted:
        w_norm, u_norm = np.linalg.norm(w[key]), np.linalg.norm(u)
        u = (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0) * u
      w[key] = w[key] - lr * u
    out.append({k: x.copy() for k, x in w.items()})
  return out


def test_lars_equals_mlperf_step_by_step_with_biases_and_norms_excluded():
  # the rate falls 10x at step 3: in the accumulation form the whole buffer takes it at once
  schedule = optax.piecewise_constant_schedule(2.0, {3: 0.1})
  ours, _ = run(optim.lars(schedule, 0.9, weight_decay=1e-2))
  expected = numpy_lars(lambda s: float(schedule(s)), 0.9, 1e-2, 1e-3, KERNELS, MATRICES)
  assert_close(ours, expected)
  # a bias and a norm scale take plain momentum SGD, no decay: their step is not tiny
  assert abs(ours[0]["dense/bias"] - expected[0]["dense/bias"]).max() < 1e-5


def test_lars_every_leaf_is_optax_lars_while_the_rate_is_constant():
  ours, _ = run(optim.lars(0.5, 0.9, weight_decay=1e-3, weight_decay_mask=None, trust_mask=None,
                           trust_ratio="optax"))  # fmt: skip
  theirs, _ = run(optax.lars(0.5, weight_decay=1e-3, momentum=0.9))
  assert_close(ours, theirs, rtol=1e-5)


def test_lars_differs_from_optax_lars_where_the_rate_changes():
  # optax keeps the old rate inside its buffer: after a cut, its steps are larger for a while
  schedule = optax.piecewise_constant_schedule(1.0, {3: 0.01})
  options = dict(weight_decay_mask=None, trust_mask=None, trust_ratio="optax")
  ours, _ = run(optim.lars(schedule, 0.9, **options))
  theirs, _ = run(optax.lars(schedule, momentum=0.9))
  assert_close(ours[:3], theirs[:3], rtol=1e-5)
  moved = [np.linalg.norm(r[4]["dense/kernel"] - r[3]["dense/kernel"]) for r in (ours, theirs)]
  assert moved[0] < 0.1 * moved[1]


def test_lamb_equals_the_papers_algorithm_with_layer_norms_and_biases_excluded():
  ours, _ = run(optim.lamb(0.01, 0.9, 0.999, 1e-6, weight_decay=0.1))
  expected = numpy_lamb(0.01, 0.9, 0.999, 1e-6, 0.1, KERNELS, MATRICES)
  assert_close(ours, expected)


def test_lamb_every_leaf_is_optax_lamb():
  ours, _ = run(optim.lamb(0.01, weight_decay=0.1, weight_decay_mask=None, trust_mask=None))
  theirs, _ = run(optax.lamb(0.01, weight_decay=0.1))
  assert_close(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize(
  "ours, theirs",
  [
    (optim.lion(1e-3, 0.9, 0.99, weight_decay=0.1), optax.lion(1e-3, 0.9, 0.99, weight_decay=0.1)),
    (optim.muon(0.02, 0.95, weight_decay=0.01), contrib.muon(0.02, beta=0.95, weight_decay=0.01)),
  ],
  ids=["lion", "muon"],
)
def test_lion_and_muon_are_optax_own(ours, theirs):
  actual, state = run(ours)
  expected, _ = run(theirs)
  assert_close(actual, expected, rtol=1e-5)
  assert set(optim.current_hyperparams(state)) == {"learning_rate", "momentum"}


def test_muon_state_is_sharded_as_its_parameters():
  # optax.partition keeps masked moments: each takes its parameter's sharding, or none
  params = jax.device_put(initial())
  tx = optim.muon(0.02)
  state = jax.jit(tx.init, out_shardings=optim.state_shardings(tx, params))(params)
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))


def test_a_mask_excludes_what_it_says_read_from_the_updates():
  zero = jax.tree.map(jnp.zeros_like, initial())  # a zero gradient: the update is the decay
  for mask, decayed in [
    (optim.kernels, KERNELS),
    (optim.matrices, MATRICES),
    (optim.parameter_mask(("bias$", "norm/"), "mask"), {"dense/bias", "norm/scale"}),
    (None, set(flat(initial()))),
  ]:
    tx = optim.adamw(0.1, weight_decay=0.5, mask=mask)
    updates, _ = tx.update(zero, tx.init(initial()), initial())
    moved = {key for key, value in flat(updates).items() if np.any(np.asarray(value) != 0)}
    assert moved == decayed
    for key in decayed:  # -lr wd w, exactly
      np.testing.assert_allclose(flat(updates)[key], -0.05 * flat(initial())[key], rtol=1e-6)


def test_a_pattern_that_names_no_parameter_is_refused_at_init():
  tx = optim.masks.checked(
    optim.adamw(0.1), {"optimizer.decay_mask": optim.parameter_mask("kernal", "f")}
  )
  with pytest.raises(ValueError, match=r"^optimizer\.decay_mask: 'kernal' names no parameter; "):
    tx.init(initial())


def test_clipping_is_optax_clip_by_global_norm_and_counts_what_it_clipped():
  ours, theirs = optim.clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)
  state = ours.init(initial())
  for scale, clipped in ((10.0, 1), (0.01, 0), (3.0, 1)):
    grads = jax.tree.map(lambda n, s=scale: s * n, noise(0))
    updates, state = jax.jit(ours.update)(grads, state)
    expected, _ = jax.jit(theirs.update)(grads, theirs.init(initial()))
    for a, e in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, e)
    assert float(optim.clip_metrics(state)["clipped"]) == clipped
  metrics = optim.clip_metrics(optax.chain(optax.identity(), ours).init(initial()))
  assert float(metrics["clipped_fraction"]) == 0.0
  assert float(optim.clip_metrics(state)["clipped_fraction"]) == pytest.approx(2 / 3)
  assert optim.clip_metrics(optim.sgd_momentum(0.1).init(initial())) == {}
