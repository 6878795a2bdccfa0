"""A user's loss: the step differentiates it and reports its metrics, on one device, over
micro-batches and per device with the noise scale measured; bad losses get one line."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import plugin_losses
import pytest
from small_run import small_config

from bigbatch import config as bbconfig
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch import train as bbtrain
from bigbatch.models import create_model
from bigbatch.step import losses

RNG = np.random.default_rng(0)
BATCH = {
  "inputs": RNG.normal(size=(64, 40)).astype(np.float32),
  "labels": RNG.integers(0, 10, 64).astype(np.int32),
}


def setup(mesh=None):
  model = create_model("mlp", num_classes=10, features=(16,))
  tx = optax.sgd(0.1)
  inputs = jax.ShapeDtypeStruct((1, 40), jnp.float32)
  state = st.init_train_state(model, tx, inputs, jax.random.key(0))
  if mesh is not None:
    state = st.create_train_state(model, tx, inputs, mesh)
  return model, tx, state


def by_hand(model, params):
  """The squared-error loss, its error rate and its SGD step, written without bigbatch."""

  def loss(p):
    logits = model.apply({"params": p}, BATCH["inputs"], train=True)
    return plugin_losses.squared_error(logits, BATCH)[0].mean()

  value, grads = jax.value_and_grad(loss)(params)
  logits = model.apply({"params": params}, BATCH["inputs"], train=True)
  error = float(np.mean(np.argmax(logits, -1) != BATCH["labels"]))
  return float(value), error, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


@pytest.mark.parametrize("kind", ["whole", "micro_batches", "8_devices_measured"])
def test_a_users_loss_is_differentiated_and_its_metrics_reported(kind):
  mesh = shd.make_mesh(devices=jax.devices()[:8]) if kind == "8_devices_measured" else None
  model, tx, state = setup(mesh)
  loss, error, params = by_hand(model, state.params)
  options = {"micro_batch_size": 16} if kind == "micro_batches" else {}
  if mesh is not None:
    options = {"mesh": mesh, "data_shards": 8, "measure_noise": True, "noise_horizon": 640.0}
  step = st.make_train_step(model, tx, loss_fn=plugin_losses.squared_error, **options)
  batch = shd.global_batch(mesh, BATCH, 64) if mesh is not None else BATCH
  new, metrics = jax.jit(step)(state, batch)
  assert "accuracy" not in metrics
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["error"]), error, rtol=1e-6)
  for ours, theirs in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
  if mesh is not None:  # 8 groups' gradients: the noise scale is measured with any loss
    assert float(metrics["grad_trace"]) > 0


def test_the_eval_step_sums_a_users_loss_and_metrics_over_the_real_examples():
  model, _, state = setup()
  step = jax.jit(st.make_eval_step(model, loss_fn=plugin_losses.squared_error))
  padded = st.pad_batch({k: v[:50] for k, v in BATCH.items()}, 64)
  sums = step(state, padded)
  logits = model.apply({"params": state.params}, BATCH["inputs"][:50], train=False)
  losses_, metrics = plugin_losses.squared_error(logits, {"labels": BATCH["labels"][:50]})
  assert int(sums["count"]) == 50
  np.testing.assert_allclose(float(sums["loss"]), float(np.sum(losses_)), rtol=1e-5)
  assert float(sums["error"]) == float(np.sum(metrics["error"]))


BAD = [
  ("plugin_losses:mean_loss", "loss: returns a loss of shape (), not one per example (2,)"),
  ("plugin_losses:only_the_loss", "loss: returns a ShapeDtypeStruct, not (losses, metrics)"),
  ("plugin_losses:metric_per_batch", "loss: metric 'total' has shape (), not one per example (2,)"),
  ("plugin_losses:NOT_A_FUNCTION", "loss: plugin_losses:NOT_A_FUNCTION is a int, not a function"),
  ("plugin_losses:missing", "loss: 'plugin_losses' has no attribute 'missing'"),
  ("softmax", "loss: 'softmax' is not cross_entropy, nor an import path"),
]


@pytest.mark.parametrize("name,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_loss_is_one_line_naming_loss_before_anything_compiles(tmp_path, name, message):
  config = small_config(str(tmp_path), loss=name)
  model = bbconfig.model_from_config(config, 10)
  from bigbatch import data

  with pytest.raises(bbconfig.ConfigError) as raised:
    bbconfig.loss_from_config(config, model, data.dataset_spec("mnist1d"))
  assert str(raised.value) == message or str(raised.value).startswith(message)
  assert "\n" not in str(raised.value)


def test_the_default_is_cross_entropy_and_accuracy():
  logits = jnp.asarray([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
  batch = {"labels": jnp.asarray([0, 0, 0])}
  values, metrics = losses.classification(0.0)(logits, batch)
  np.testing.assert_allclose(
    values, optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
  )
  np.testing.assert_array_equal(metrics["accuracy"], [1.0, 0.0, 1.0])


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_run_with_a_users_loss_logs_its_metrics_and_evaluates_them(tmp_path):
  config = small_config(str(tmp_path / "tfds"), loss="plugin_losses:squared_error")
  summary = bbtrain.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert summary["updates"] == 40 and summary["final_test_accuracy"] is None
  from small_run import metrics_rows

  rows = metrics_rows(tmp_path / "run")
  trained = [r for r in rows if "error" in r]
  evaluated = [r for r in rows if "eval_error" in r]
  assert trained and evaluated and not any("accuracy" in r for r in rows)
  assert 0.0 <= evaluated[-1]["eval_error"] <= 1.0 and evaluated[-1]["eval_loss"] > 0


def test_a_sequences_loss_is_the_mean_of_its_tokens_cross_entropies():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, (3, 5)), jnp.int32)
  per_example, metrics = losses.classification(bytes_per_token=1.0)(logits, {"labels": labels})
  log_softmax = jax.nn.log_softmax(np.asarray(logits, np.float64))
  by_hand = -np.take_along_axis(log_softmax, np.asarray(labels)[..., None], -1)[..., 0].mean(1)
  np.testing.assert_allclose(per_example, by_hand, rtol=1e-5)
  correct = (np.argmax(np.asarray(logits), -1) == np.asarray(labels)).mean(1)
  np.testing.assert_allclose(metrics["accuracy"], correct)
  np.testing.assert_allclose(metrics["bits_per_byte"], by_hand / np.log(2), rtol=1e-5)
  # two bytes a token: half the bits per byte
  _, two = losses.classification(bytes_per_token=2.0)(logits, {"labels": labels})
  np.testing.assert_allclose(two["bits_per_byte"], by_hand / np.log(2) / 2, rtol=1e-5)
  # images keep their metrics: no bits per byte without bytes per token
  assert set(losses.classification()(logits[:, 0], {"labels": labels[:, 0]})[1]) == {"accuracy"}
