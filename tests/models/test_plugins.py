"""Models of a user's own: linen and NNX classes and factories by import path, `register`,
dropout drawn per step (a resumed run draws the same), and one line for each bad plug-in."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import plugin_models
import pytest
from flax import nnx
from small_run import small_config

from bigbatch import config as bbconfig
from bigbatch import models
from bigbatch import step as st
from bigbatch import train as bbtrain
from bigbatch.models import create_model, init_rngs
from bigbatch.workdir import checkpoint as ckpt

X = jax.random.normal(jax.random.key(1), (8, 40))
LABELS = jnp.arange(8) % 3


def nnx_variables(net: nnx.Module) -> dict:
  return {
    "params": nnx.to_pure_dict(nnx.state(net, nnx.Param)),
    "batch_stats": nnx.to_pure_dict(nnx.state(net, nnx.BatchStat)),
  }


def test_an_nnx_model_computes_what_its_nnx_module_computes_in_eval_and_train():
  model = create_model("plugin_models:NNXNet", num_classes=3, rate=0.0)
  assert isinstance(model, models.NNXModel)
  net = plugin_models.NNXNet(3, rate=0.0, rngs=nnx.Rngs(7))
  variables = nnx_variables(net)
  initial = model.init(init_rngs(jax.random.key(0)), X, train=False)
  assert jax.tree.structure(initial) == jax.tree.structure(variables)
  net.eval()
  np.testing.assert_allclose(model.apply(variables, X, train=False), net(X), rtol=1e-6)
  logits, updates = model.apply(variables, X, train=True, mutable=["batch_stats"])
  net.train()
  np.testing.assert_allclose(logits, net(X), rtol=1e-6)
  for ours, theirs in zip(
    jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(nnx_variables(net)["batch_stats"])
  ):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_a_train_step_on_an_nnx_model_is_nnxs_own_sgd_step():
  model = create_model("plugin_models:NNXNet", num_classes=3, rate=0.0)
  tx = optax.sgd(0.1)
  net = plugin_models.NNXNet(3, rate=0.0, rngs=nnx.Rngs(3))
  variables = nnx_variables(net)
  state = st.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(variables["params"]),
    noise=st.GradientNoise.zeros(),
  )
  new, metrics = jax.jit(st.make_train_step(model, tx))(state, {"inputs": X, "labels": LABELS})

  def loss_fn(net):  # the same step written in NNX alone
    return optax.softmax_cross_entropy_with_integer_labels(net(X), LABELS).mean()

  net.train()
  loss, grads = nnx.value_and_grad(loss_fn)(net)
  expected = jax.tree.map(
    lambda p, g: p - 0.1 * g, nnx_variables(net)["params"], nnx.to_pure_dict(grads)
  )
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  for ours, theirs in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["plugin_models:NNXNet", "plugin_models:LinenNet"])
def test_dropout_draws_anew_each_step_and_the_same_for_the_same_step_and_seed(name):
  model = create_model(name, num_classes=3, rate=0.5)
  tx = optax.sgd(0.0)  # the parameters stay put: only the draw changes the loss
  state = st.init_train_state(
    model, tx, jax.ShapeDtypeStruct((1, 40), jnp.float32), jax.random.key(0)
  )
  batch = {"inputs": X, "labels": LABELS}
  losses = {}
  for seed in (0, 1):
    step = jax.jit(st.make_train_step(model, tx, rng_seed=seed))
    for at in (0, 1):
      losses[seed, at] = float(step(state.replace(step=jnp.int32(at)), batch)[1]["loss"])
  again = jax.jit(st.make_train_step(model, tx, rng_seed=0))(state, batch)[1]["loss"]
  assert float(again) == losses[0, 0]
  assert len(set(losses.values())) == 4  # the step and the seed each change the draw


def test_a_factory_and_a_registered_name_build_the_model_with_the_configs_fields():
  built = create_model("plugin_models:linen_factory", num_classes=5, width=4)
  assert (built.num_classes, built.features, built.rate) == (5, 4, 0.0)
  models.register("users_nnx_net", plugin_models.NNXNet, features=8)
  try:
    model = create_model("users_nnx_net", num_classes=4, rate=0.25)
    # NNXNet takes no dtype or ghost batch size, so neither is passed
    assert dict(model.kwargs) == {"num_classes": 4, "features": 8, "rate": 0.25}
    variables = model.init(init_rngs(jax.random.key(0)), X, train=False)
    assert variables["params"]["hidden"]["kernel"].shape == (40, 8)
    with pytest.raises(ValueError, match=r"models\.register: 'users_nnx_net' is taken"):
      models.register("users_nnx_net", plugin_models.NNXNet)
  finally:
    del models.MODELS["users_nnx_net"]


BAD = [
  ("no_such_module:Net", "model.name: cannot import 'no_such_module' (ModuleNotFoundError: "),
  ("plugin_models:Missing", "model.name: 'plugin_models' has no attribute 'Missing'"),
  ("plugin_models:", "model.name: 'plugin_models:' is not an import path of the form"),
  ("plugin_models:NOT_A_MODEL", "model.name: plugin_models:NOT_A_MODEL is a int, not a flax"),
  (
    "plugin_models:NeedsAnInput",
    "model.call.inputs: plugin_models:NeedsAnInput.__call__ needs `segments`, which bigbatch",
  ),
  ("plugin_models:NoRngs", "model.name: plugin_models:NoRngs.__init__ takes no `rngs`"),
  ("plugin_models:returns_a_number", "model.name: plugin_models:returns_a_number() returned a int"),
]


@pytest.mark.parametrize("name,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_plug_in_is_one_line_naming_model_name(name, message):
  with pytest.raises(ValueError) as raised:
    create_model(name, num_classes=3)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_an_unknown_field_names_it_and_what_the_model_takes():
  with pytest.raises(
    ValueError,
    match=r"^model.width: not a parameter of plugin_models:NNXNet; allowed: features, num_classes, rate$",
  ):
    create_model("plugin_models:NNXNet", num_classes=3, width=3)
  with pytest.raises(
    ValueError,
    match=r"^model.width: not a field of plugin_models:LinenNet; allowed: features, num_classes, rate$",
  ):
    create_model("plugin_models:LinenNet", num_classes=3, width=3)


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_an_nnx_model_with_dropout_trains_and_resumes_bitwise(data_dir, tmp_path):
  # normalised over the whole batch, as before a ghost batch reached NNX's BatchNorm: at
  # ghost batch 4 with dropout 0.5, 40 steps learn less
  config = small_config(
    data_dir, **{"model.name": "plugin_models:NNXNet", "ghost_batch_size": None}
  )
  whole = bbtrain.train_and_evaluate(config, tmp_path / "whole", progress=False)
  assert whole["final_test_accuracy"] > 0.2  # 10 classes: twice chance in 40 steps
  first = bbtrain.train_and_evaluate(config, tmp_path / "split", stop_at_step=17, progress=False)
  assert first["status"] == "preempted" and first["step"] == 17
  bbtrain.train_and_evaluate(config, tmp_path / "split", progress=False)
  target = bbconfig.experiment_from_config(config).abstract_state()
  finals = []
  for run in ("whole", "split"):
    checkpoints = ckpt.Checkpoints(tmp_path / run / "checkpoints")
    step = checkpoints.latest_step()
    finals.append((step, checkpoints.restore(step, target)))
    checkpoints.close()
  (step_a, a), (step_b, b) = finals
  assert step_a == step_b == 40
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
