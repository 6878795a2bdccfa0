"""uint8 images normalised on the device: the host's normalisation, the same step, a quarter
of the bytes, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch import data
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import create_model
from bigbatch.step import inputs

SPEC = data.dataset_spec("imagenet2012", 32)  # ImageNet's input at a test's size
STATS = SPEC.device_normalisation
BATCH = 8


def host_normalised(pixels):
  """How the host normalised ImageNet before it shipped uint8 (divide, subtract, divide)."""
  mean, std = (np.asarray(v, np.float32) for v in STATS)
  return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def pixel_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "inputs": rng.integers(0, 256, (BATCH, *SPEC.input_shape), dtype=np.uint8),
    "labels": rng.integers(0, 10, BATCH).astype(np.int32),
  }


def test_uint8_is_normalised_with_imagenets_statistics_and_floats_pass_through():
  assert STATS == (data.datasets.IMAGENET_MEAN, data.datasets.IMAGENET_STD)
  assert SPEC.input_dtype == np.uint8 and data.example_batch(SPEC)["inputs"].dtype == np.uint8
  for name in ("cifar10", "mnist1d"):  # normalised on the host, as before
    spec = data.dataset_spec(name)
    assert spec.device_normalisation is None and spec.input_dtype == np.float32
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  got = np.asarray(inputs.model_inputs(jnp.asarray(pixels), STATS))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, host_normalised(pixels), rtol=0, atol=1e-5)
  floats = jnp.ones((2, 3), jnp.float32)
  assert inputs.model_inputs(floats, STATS) is floats and inputs.model_inputs(floats) is floats
  with pytest.raises(ValueError, match="normalisation"):
    inputs.model_inputs(jnp.asarray(pixels))


def _steps(example_inputs, mesh):
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=2)
  tx = optax.sgd(0.1, momentum=0.9)
  init = jax.ShapeDtypeStruct((1, *SPEC.input_shape), jnp.float32)  # the model sees floats
  state = st.create_train_state(model, tx, init, mesh, seed=1)
  example = {"inputs": example_inputs, "labels": jax.ShapeDtypeStruct((), jnp.int32)}
  train = st.CompiledSteps(
    st.make_train_step(model, tx, data_shards=8, normalisation=STATS), state, example, mesh
  )
  evaluate = st.CompiledSteps(
    st.make_eval_step(model, normalisation=STATS), state, example, mesh, returns_state=False
  )
  return state, train, evaluate


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_step_on_uint8_is_the_step_on_host_normalised_floats():
  mesh = shd.make_mesh()
  host = pixel_batch()
  floats = {**host, "inputs": host_normalised(host["inputs"])}
  pixels_in = shd.global_batch(mesh, host, BATCH)
  floats_in = shd.global_batch(mesh, floats, BATCH)
  # host-to-device bytes: a quarter
  assert pixels_in["inputs"].nbytes * 4 == floats_in["inputs"].nbytes == BATCH * 32 * 32 * 3 * 4
  state_u, train_u, eval_u = _steps(data.example_batch(SPEC)["inputs"], mesh)
  float_example = jax.ShapeDtypeStruct(SPEC.input_shape, jnp.float32)
  state_f, train_f, eval_f = _steps(float_example, mesh)
  for step in range(2):
    np.testing.assert_allclose(
      jax.device_get(eval_u(state_u, pixels_in))["loss"],
      jax.device_get(eval_f(state_f, floats_in))["loss"],
      rtol=1e-5,
    )
    state_u, metrics_u = train_u(state_u, pixels_in)
    state_f, metrics_f = train_f(state_f, floats_in)
    metrics_u, metrics_f = jax.device_get((metrics_u, metrics_f))
    assert metrics_u["loss"] > 1.0, step
    np.testing.assert_allclose(metrics_u["loss"], metrics_f["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_u["grad_norm"], metrics_f["grad_norm"], rtol=1e-4)
  # compiled once each, for the uint8 batches the pipeline yields
  assert train_u.compile_count == 1 and eval_u.compile_count == 1
  for steps in (train_u, eval_u, train_f, eval_f):
    steps.close()
