"""Models: published parameter counts, forward shapes, and ghost batch norm semantics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch.models import GhostBatchNorm, create_model


def count_params(model, shape):
  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
  )
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_parameter_counts_match_the_published_ones():
  # ResNet-50 v1.5: 25,557,032 (torchvision, MLPerf); WRN-16-4: ~2.75M (Zagoruyko & Komodakis)
  assert count_params(create_model("resnet50", num_classes=1000), (1, 224, 224, 3)) == 25_557_032
  wrn = count_params(create_model("wrn16_4", num_classes=10), (1, 32, 32, 3))
  assert wrn == pytest.approx(2.75e6, rel=0.01)
  # Inception-ResNet-V2: the Keras reference has 55,813,192 trainable parameters and
  # 60,544 batch-norm statistics; its batch norms have no scale, ours add 30,272 of them.
  inception = create_model("inception_resnet_v2", num_classes=1000)
  variables = jax.eval_shape(
    lambda: inception.init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)), train=False)
  )
  stats = sum(x.size for x in jax.tree.leaves(variables["batch_stats"]))
  assert stats == 60_544
  assert count_params(inception, (1, 299, 299, 3)) == 55_813_192 + stats // 2


@pytest.mark.parametrize(
  "name, shape, classes",
  [
    pytest.param("resnet50", (4, 64, 64, 3), 1000, marks=pytest.mark.slow),
    ("wrn16_4", (4, 32, 32, 3), 10),
    ("cnn1d", (4, 40), 10),
    ("tiny_cnn", (4, 8, 8, 3), 10),
    # 75x75: the smallest input it takes
    pytest.param("inception_resnet_v2", (2, 75, 75, 3), 10, marks=pytest.mark.slow),
  ],
)
def test_forward_shapes_and_batch_stats(name, shape, classes):
  fields = {"blocks": (1, 1, 2)} if name == "inception_resnet_v2" else {}  # fewer repeats
  model = create_model(name, num_classes=classes, ghost_batch_size=2, **fields)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  # jitted: run op by op, a WRN's forward pass compiles each of its hundreds of ops apart
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
    variables, x
  )
  assert logits.shape == (shape[0], classes) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # training moved the running averages; evaluation does not
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"], variables["batch_stats"]
  )
  assert max(jax.tree.leaves(moved)) > 0
  evaluated = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert evaluated.shape == (shape[0], classes)


def test_ghost_batch_norm_is_batch_norm_per_group():
  ghost, features = 4, 3
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 5, features)) * 3 + 1
  ghost_bn = GhostBatchNorm(ghost_size=ghost, momentum=0.9)
  variables = ghost_bn.init(jax.random.PRNGKey(1), x, use_running_average=False)
  y, updated = ghost_bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  plain = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)
  plain_vars = plain.init(jax.random.PRNGKey(1), x[:ghost], use_running_average=False)
  means, variances = [], []
  for g in range(16 // ghost):
    group = x[g * ghost : (g + 1) * ghost]
    expected, stats = plain.apply(
      plain_vars, group, use_running_average=False, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(y[g * ghost : (g + 1) * ghost], expected, rtol=1e-5, atol=1e-5)
    means.append(stats["batch_stats"]["mean"])
    variances.append(stats["batch_stats"]["var"])
  # each group's BatchNorm moved its running mean from 0 by (1 - 0.9) * group mean;
  # the ghost norm's running averages move by the mean of the groups' statistics
  np.testing.assert_allclose(updated["batch_stats"]["mean"], np.mean(means, 0), rtol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["var"], np.mean(variances, 0), rtol=1e-5)


def test_ghost_batch_norm_training_output_does_not_depend_on_the_batch_size():
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 8, 8, 3))
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(1), x, train=False))(x[:8])

  def train(model, x):  # jitted: op by op, each of the model's ops compiles apart
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])(
      variables, x
    )

  small, large = train(model, x[:8]), train(model, x)
  np.testing.assert_allclose(small, large[:8], rtol=1e-5, atol=1e-6)
  # ordinary (whole-batch) batch norm does depend on it
  whole = create_model("tiny_cnn", num_classes=10, ghost_batch_size=None)
  small, large = train(whole, x[:8]), train(whole, x)
  assert not np.allclose(small, large[:8], rtol=1e-3)


def test_evaluation_uses_the_running_averages():
  bn = GhostBatchNorm(ghost_size=2)
  x = jnp.arange(12.0).reshape(4, 3)
  variables = bn.init(jax.random.PRNGKey(0), x, use_running_average=True)
  variables = {
    "params": variables["params"],
    "batch_stats": {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 4.0, 4.0])},
  }
  y = bn.apply(variables, x, use_running_average=True)
  np.testing.assert_allclose(y, (x - jnp.array([1.0, 2.0, 3.0])) / jnp.sqrt(4.0 + 1e-5), rtol=1e-6)


def test_errors_name_the_field():
  with pytest.raises(ValueError, match=r"model.name: 'vgg' is not one of"):
    create_model("vgg", num_classes=10)
  with pytest.raises(ValueError, match=r"model.depth: not a field of resnet50"):
    create_model("resnet50", num_classes=10, depth=3)
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=3)
  x = jnp.zeros((8, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x[:6], train=False)
  with pytest.raises(ValueError, match=r"ghost_batch_size: the batch .* multiple of the ghost"):
    model.apply(variables, x, train=True, mutable=["batch_stats"])
