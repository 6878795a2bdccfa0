"""The gradient noise scale measured in the step, against the exact value from per-example gradients.

A logistic regression on fixed data, with the learning rate 0 so that the
parameters (and so the true |G|^2 and tr(S)) stay where they are: the
smoothed estimates of the step must agree with the exact tr(S) / |G|^2,
computed from every example's own gradient (`vmap` of `grad`), within 10%, on
one device (two halves of the batch), on 8 devices (one gradient per device),
and with accumulation (one per micro-batch per device).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch import gradients as gn
from bigbatch import sharding as shd
from bigbatch import step as st

N, FEATURES, CLASSES = 4096, 16, 4


class Logistic(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(CLASSES, kernel_init=nn.initializers.normal(0.3))(x)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, FEATURES)).astype(np.float32)
  w = rng.normal(size=(FEATURES, CLASSES))
  labels = np.argmax(x @ w + rng.gumbel(size=(N, CLASSES)) * 2.0, axis=1).astype(np.int32)
  model = Logistic()
  params = model.init(jax.random.key(1), x[:1])["params"]

  def loss(p, xi, yi):
    return st.cross_entropy(model.apply({"params": p}, xi[None]), yi[None])[0]

  per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, labels)
  flat = np.concatenate([np.asarray(g).reshape(N, -1) for g in jax.tree.leaves(per_example)], 1)
  mean = flat.mean(0)
  exact = {
    "grad_sq_norm": float(mean @ mean),
    "grad_trace": float(((flat - mean) ** 2).sum(1).mean()),
  }
  exact["grad_noise_scale"] = exact["grad_trace"] / exact["grad_sq_norm"]
  return model, x, labels, exact


@pytest.mark.parametrize(
  "devices,micro_batch_size",
  [(1, None), (8, None), (8, 64)],
  ids=["1-device", "8-devices", "accumulation"],
)
def test_the_smoothed_estimate_agrees_with_per_example_gradients(
  problem, devices, micro_batch_size
):
  model, x, labels, exact = problem
  assert 20 < exact["grad_noise_scale"] < 2000  # a noise scale the batch below can measure
  mesh = shd.make_mesh(devices=jax.devices()[:devices])
  tx = optax.sgd(0.0)  # the parameters stay put, so the truth does too
  state = st.create_train_state(model, tx, jax.ShapeDtypeStruct((1, FEATURES), np.float32), mesh)
  batch_size = 256
  step = jax.jit(
    st.make_train_step(
      model,
      tx,
      mesh=mesh,
      measure_noise=True,
      noise_horizon=100.0 * batch_size,
      micro_batch_size=micro_batch_size,
      data_shards=shd.data_parallel_size(mesh),
    )
  )
  rng = np.random.default_rng(devices + (micro_batch_size or 0))
  for _ in range(400):
    take = rng.integers(0, N, batch_size)  # with replacement, as the estimator assumes
    state, metrics = step(
      state, shd.global_batch(mesh, {"inputs": x[take], "labels": labels[take]}, batch_size)
    )
  for key in ("grad_noise_scale", "grad_sq_norm", "grad_trace"):
    assert float(metrics[key]) == pytest.approx(exact[key], rel=0.10), key


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
  assert float(read["grad_noise_scale"]) == pytest.approx(5.0)
  noise = gn.smooth(noise, 4.0, 10.0, examples=100, horizon=100)
  decay = np.exp(-1.0)
  expected = (decay * (1 - decay) * 2.0 + (1 - decay) * 4.0) / (decay * (1 - decay) + (1 - decay))
  assert float(gn.read(noise)["grad_sq_norm"]) == pytest.approx(expected, rel=1e-6)
  assert np.isnan(float(gn.read(gn.GradientNoise.zeros())["grad_noise_scale"]))


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
    measured[batch] = bbconfig.train_step_from_config(config, model, tx, plan, mesh)[1]
  assert measured == {16: False, 32: True}
