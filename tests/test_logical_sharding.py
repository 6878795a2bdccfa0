"""Sharding by a model's own annotations: logical axis names, the mesh's rules, a tensor axis.

The built-in Transformer (1 layer of width 32, 4 heads, sequences of 8 tokens of a
vocabulary of 64) trains on a (data 2, fsdp 2, tensor 2) mesh as on one device; a
linen model written here in the style of flax's lm1b example (`nn.with_logical_
partitioning` on its parameters, one left unannotated) is placed by the rules.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from small_run import small_config

from bigbatch import partitioning, spec
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.cli import args as cli_args
from bigbatch.models import NNXModel, create_model
from bigbatch.train import setup
from bigbatch.workdir import checkpoint as ckpt

LENGTH, VOCAB = 8, 64
TOKENS = jax.ShapeDtypeStruct((1, LENGTH), jnp.int32)


def named(init, *names):
  return nn.with_logical_partitioning(init, names)


class TinyLM(nn.Module):
  """An embedding, one MLP block on the residual stream and an output head of its own;
  every parameter but the head's named as lm1b names its own."""

  width: int = 32
  hidden: int = 64

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    normal = nn.initializers.normal(0.02)
    x = nn.Embed(VOCAB, self.width, embedding_init=named(normal, "vocab", "embed"))(tokens)
    up = nn.Dense(
      self.hidden,
      kernel_init=named(normal, "embed", "mlp"),
      bias_init=named(nn.initializers.zeros, "mlp"),
    )
    hidden = nn.with_logical_constraint(
      nn.gelu(up(x)), ("activation_batch", "activation_length", "activation_mlp")
    )
    x = x + nn.Dense(self.width, kernel_init=named(normal, "mlp", "embed"), use_bias=False)(hidden)
    return nn.Dense(VOCAB, name="head")(x)  # unannotated: the largest-axis rule


def specs(params):
  """Each parameter's partition spec, by its path."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): x.sharding.spec for path, x in flat
  }


def test_a_linen_models_annotations_place_its_parameters_and_moments():
  mesh = shd.make_mesh(2, 2, 2)
  state = st.create_train_state(TinyLM(), optax.adam(1e-3), TOKENS, mesh, fsdp_min_size=0)
  assert specs(state.params) == {
    "Embed_0/embedding": P("tensor", "fsdp"),
    "Dense_0/kernel": P("fsdp", "tensor"),
    "Dense_0/bias": P("tensor"),
    "Dense_1/kernel": P("tensor", "fsdp"),
    # unannotated: split along fsdp on the largest axis it divides, as ever
    "head/bias": P("fsdp"),
    "head/kernel": P(None, "fsdp"),
  }
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state.params))  # unboxed
  moments = state.opt_state[0].mu
  assert specs(moments) == specs(state.params)
  # rules of one's own replace the defaults: a name they leave out is not split
  rules = (("mlp", ("fsdp", "tensor")),)
  mine = st.create_train_state(TinyLM(), optax.sgd(0.1), TOKENS, mesh, rules=rules)
  assert specs(mine.params)["Dense_0/kernel"] == P(None, ("fsdp", "tensor"))
  assert specs(mine.params)["Embed_0/embedding"] == P(None, None)


class NNXBlock(nnx.Module):
  """An NNX module naming its parameters' axes with flax's own `nnx.with_partitioning`
  (placed as they are built, unless whoever builds it says not)."""

  def __init__(self, width: int = 32, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.up = nnx.Linear(
      width, 64, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")), rngs=rngs
    )
    self.down = nnx.Linear(64, width, rngs=rngs)  # unannotated

  def __call__(self, x):
    return self.down(jax.nn.relu(self.up(x)))


def test_an_nnx_models_sharding_metadata_places_its_parameters():
  model = NNXModel(NNXBlock)
  mesh = shd.make_mesh(2, 2, 2)
  state = st.create_train_state(
    model, optax.sgd(0.1), jax.ShapeDtypeStruct((1, 32), jnp.float32), mesh, fsdp_min_size=0
  )
  assert specs(state.params) == {
    "up/kernel": P("fsdp", "tensor"),
    "up/bias": P("fsdp"),  # its bias names no axes: the largest-axis rule
    "down/kernel": P("fsdp", None),
    "down/bias": P("fsdp"),
  }


@pytest.mark.parametrize("name, shape", [("mlp", (1, 40)), ("cnn1d", (1, 40, 1))])
def test_unannotated_models_keep_the_largest_axis_rule(name, shape):
  model = create_model(name, num_classes=10, ghost_batch_size=4)
  inputs = jax.ShapeDtypeStruct(shape, jnp.float32)
  for mesh in (shd.make_mesh(4, 2, 1), shd.make_mesh(2, 2, 2)):
    shardings = st.train_state_shardings(model, optax.sgd(0.1), inputs, mesh, fsdp_min_size=64)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))[
      "params"
    ]
    expected = jax.tree.map(
      lambda x, mesh=mesh: shd.param_sharding(x, mesh, min_size=64).spec, abstract
    )
    assert jax.tree.map(lambda s: s.spec, shardings.params) == expected
    assert any(s.spec != P() for s in jax.tree.leaves(shardings.params))


def test_an_annotation_that_does_not_fit_names_the_parameter():
  class Wrong(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(4, kernel_init=named(nn.initializers.ones, "embed", "mlp", "heads"))(x)

  boxed = jax.eval_shape(lambda: Wrong().init(jax.random.key(0), jnp.zeros((1, 8))))
  with pytest.raises(shd.ShardingError, match=r"^model: params/Dense_0/kernel has 2 axes"):
    partitioning.placed(boxed, shd.make_mesh(2, 2, 2))


def test_fewer_names_than_axes_name_the_leading_ones():
  """flax's DenseGeneral initialises attention's kernels flat under the annotation and
  reshapes them, so lm1b's ('embed', 'kv') names the first two of three axes."""

  class Attention(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.DenseGeneral((2, 4), kernel_init=named(nn.initializers.ones, "embed", "kv"))(x)

  boxed = jax.eval_shape(lambda: Attention().init(jax.random.key(0), jnp.zeros((1, 8))))
  placed = partitioning.placed(boxed, shd.make_mesh(2, 2, 2))
  assert placed["params"]["DenseGeneral_0"]["kernel"].sharding.spec == P("fsdp", None, None)


def test_bad_mesh_sizes_and_rules_are_one_line_naming_the_field():
  with pytest.raises(shd.ShardingError, match=r"^mesh\.tensor: must divide the 8 devices, got 3"):
    shd.make_mesh(tensor=3)
  with pytest.raises(shd.ShardingError, match=r"^mesh\.fsdp: must divide the 8 devices \(the 2"):
    shd.make_mesh(fsdp=4, tensor=4)
  with pytest.raises(shd.ShardingError, match=r"^mesh\.data: data x fsdp x tensor must equal"):
    shd.make_mesh(4, 2, 2)
  bad = {
    "'embed'": r"must be a sequence of \(logical name, mesh axes\) pairs",
    (("embed",),): r"rule 1 \('embed',\) is not a \(logical name, mesh axes\) pair",
    (("embed", "fsdp"), ("mlp", "model")): r"rule 2 maps 'mlp' to 'model'; the mesh axes are",
    (("mlp", ("tensor", 3)),): r"rule 1 maps 'mlp' to \('tensor', 3\)",
  }
  for rules, message in bad.items():
    rules = "embed" if rules == "'embed'" else rules
    with pytest.raises(spec.ConfigError, match=rf"^mesh\.rules: {message}"):
      spec.MeshSpec(rules=rules)


def test_the_command_line_sets_the_tensor_axis_and_the_rules(data_dir):
  argv = [
    "--config",
    "mnist1d_base",
    "--config.mesh.tensor=2",
    "--config.mesh.rules=(('embed', 'fsdp'), ('mlp', ('fsdp', 'tensor')), ('kv', None))",
  ]
  mesh = spec.RunSpec.read(cli_args.parse("train", argv, lambda values: None).config).mesh
  assert mesh.tensor == 2
  assert mesh.rules == (("embed", "fsdp"), ("mlp", ("fsdp", "tensor")), ("kv", None))


def lm_batches(count, size):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, (count, size, LENGTH + 1)).astype(np.int32)
  return [{"inputs": t[:, :-1], "labels": t[:, 1:]} for t in tokens]


def train(mesh, model, optimizer, batches):
  """The state after `batches` on `mesh`, and each step's metrics: on several devices
  measuring the noise scale (per data-parallel group, `tensor` left to the compiler); on
  one, the plain step (the reference, quicker to compile)."""
  state = st.create_train_state(model, optimizer, TOKENS, mesh)
  several = mesh.size > 1
  fn = st.make_train_step(
    model,
    optimizer,
    mesh=mesh if several else None,
    measure_noise=several,
    noise_horizon=256.0,
    rng_seed=0,
  )
  example = {"inputs": jax.ShapeDtypeStruct((LENGTH,), jnp.int32)}
  example["labels"] = example["inputs"]
  steps = st.CompiledSteps(partitioning.traced(fn, mesh), state, example, mesh)
  metrics = []
  for batch in batches:
    state, out = steps(state, batch)
    metrics.append(jax.device_get(out))
  steps.close()
  return state, metrics


@pytest.fixture(scope="module")
def transformer_runs():
  model = create_model(
    "transformer", num_classes=VOCAB, num_layers=1, width=32, num_heads=4, context_length=LENGTH
  )
  # SGD, not Adam: Adam's first steps are about lr x sign(g), and the sign of a gradient
  # near 0 (a token the batch lacks) may differ between two orders of summation
  optimizer, batches = optax.sgd(0.5, momentum=0.9), lm_batches(1, 16) * 3
  one = train(shd.make_mesh(devices=jax.devices()[:1]), model, optimizer, batches)
  three = train(shd.make_mesh(2, 2, 2), model, optimizer, batches)
  return model, optimizer, one, three


def test_the_transformer_trains_on_three_axes_as_on_one_device(transformer_runs):
  _, _, (one, one_metrics), (three, three_metrics) = transformer_runs
  losses = [[float(m["loss"]) for m in run] for run in (one_metrics, three_metrics)]
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-5)
  assert losses[0][2] < losses[0][1] < losses[0][0]  # the same batch, learned
  # the noise scale is measured on both: its groups are the (data, fsdp) devices
  assert all(np.isfinite(m["grad_sq_norm"]) for m in three_metrics)
  for got, expected in zip(jax.tree.leaves(three.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-6)


def test_the_transformers_parameters_live_where_their_names_say(transformer_runs):
  _, _, _, (three, _) = transformer_runs
  where = specs(three.params)
  block = "blocks/0"
  assert where["token_embedding/embedding"] == P("tensor", "fsdp")  # vocab, embed
  assert where[f"{block}/attention/qkv/kernel"] == P("fsdp", "tensor")  # embed, joined_kv
  assert where[f"{block}/attention/qkv/bias"] == P("tensor")
  assert where[f"{block}/attention/out/kernel"] == P("tensor", "fsdp")
  assert where[f"{block}/mlp/up/kernel"] == P("fsdp", "tensor")  # embed, mlp
  assert where[f"{block}/mlp/down/kernel"] == P("tensor", "fsdp")
  assert where[f"{block}/mlp/down/bias"] == P("fsdp")
  assert where[f"{block}/attention_norm/scale"] == P(None)  # norm: whole
  assert specs(three.opt_state[0].trace) == where  # the momentum follows its parameter


def test_a_checkpoint_saved_on_three_axes_restores_onto_eight_data_devices(
  transformer_runs, data_dir, tmp_path
):
  model, optimizer, _, (three, _) = transformer_runs
  config = small_config(data_dir)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  checkpoints = ckpt.Checkpoints(tmp_path / "checkpoints", async_save=False)
  record = {"step": 3, "config": spec.RunSpec.read(config).to_dict()}
  checkpoints.save(3, three, record)
  checkpoints.close()
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  setup.check_workdir(spec.RunSpec.read(config), tmp_path)  # another mesh binds nothing
  eight = shd.make_mesh()
  target = st.abstract_train_state(model, optimizer, TOKENS, eight)
  checkpoints = ckpt.Checkpoints(tmp_path / "checkpoints")
  restored = checkpoints.restore(3, target)
  checkpoints.close()
  assert int(restored.step) == 3
  for got, saved in zip(jax.tree.leaves(restored), jax.tree.leaves(three)):
    assert got.sharding.mesh.shape == eight.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(saved))
  assert specs(restored.params)["token_embedding/embedding"] == P("tensor", "fsdp")
