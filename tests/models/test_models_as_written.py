"""Models as their authors wrote them: cross-replica and grouped batch norm, a ghost batch
reaching flax's BatchNorm, calling conventions, the causal probe and the preflight."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import GhostBatchNorm, NNXModel, causal, create_adapter, init_rngs
from bigbatch.models.batch_norm import grouping

RNG = np.random.default_rng(0)
HOST = {
  "inputs": RNG.normal(size=(64, 40)).astype(np.float32),
  "labels": RNG.integers(0, 10, 64).astype(np.int32),
}
EXAMPLE = jax.ShapeDtypeStruct((1, 40), jnp.float32)


def one_step(model, batch, mesh=None):
  """One SGD step of `model` from the seed-0 state: (loss, params, batch_stats)."""
  tx = optax.sgd(0.1)
  state = st.init_train_state(model, tx, EXAMPLE, jax.random.key(0))
  shards = 1 if mesh is None else shd.data_parallel_size(mesh)
  step = st.make_train_step(model, tx, rng_seed=None, data_shards=shards)
  if mesh is not None:
    state = jax.device_put(state, shd.replicated(mesh))
    batch = shd.global_batch(mesh, batch, len(batch["labels"]))
  new, metrics = jax.jit(step)(state, batch)
  return float(metrics["loss"]), new.params, new.batch_stats


def assert_close(a, b, rtol=2e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_cross_replica_batch_norm_on_8_devices_is_the_whole_batch_on_1():
  named = create_adapter("models_as_written:PmapResNet", num_classes=10)
  whole = create_adapter("models_as_written:PmapResNet", num_classes=10, axis_name=None)
  with pytest.raises(NameError, match="unbound axis name: batch"):  # why it must be bound
    variables = named.init(init_rngs(jax.random.key(0)), HOST["inputs"][:1])
    named.module.apply(variables, HOST["inputs"], train=True, mutable=["batch_stats"])
  mesh = shd.make_mesh()
  loss8, params8, stats8 = one_step(named, HOST, mesh)
  loss1, params1, stats1 = one_step(whole, HOST)
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  assert_close(params8, params1)
  assert_close(stats8, stats1)
  # and the statistics moved: the running mean left its zeros
  assert float(jnp.abs(stats1["BatchNorm_0"]["mean"]).max()) > 1e-3


def test_a_ghost_batch_reaching_flax_batch_norm_is_ghost_batch_norm():
  ghost = functools.partial(GhostBatchNorm, ghost_size=8, momentum=0.9, epsilon=1e-5)
  intercepted = create_adapter("models_as_written:PmapResNet", num_classes=10, ghost_batch_size=8)
  native = create_adapter("models_as_written:PmapResNet", num_classes=10, norm=ghost)
  rngs = init_rngs(jax.random.key(3))
  ours = intercepted.init(rngs, HOST["inputs"][:1])
  theirs = native.init(rngs, HOST["inputs"][:1])
  assert_close(ours["params"]["Conv_0"], theirs["params"]["Conv_0"], rtol=0)
  out_ours, new_ours = intercepted.apply(ours, HOST["inputs"], train=True, mutable=["batch_stats"])
  out_theirs, new_theirs = native.apply(theirs, HOST["inputs"], train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
  renamed = {k.replace("Ghost", ""): v for k, v in new_theirs["batch_stats"].items()}
  for name, stats in new_ours["batch_stats"].items():
    assert_close(stats, renamed[name], rtol=1e-5)


def test_groups_of_replicas_normalise_their_blocks_together():
  grouped = create_adapter("models_as_written:grouped_resnet", num_classes=10)
  halves = create_adapter("models_as_written:PmapResNet", num_classes=10, ghost_batch_size=32)
  variables = grouped.init(init_rngs(jax.random.key(0)), HOST["inputs"][:1])
  # replicas 0,1 | 2,3 of four are the batch's two halves
  a = grouped.apply(variables, HOST["inputs"], train=True, mutable=["batch_stats"])
  b = halves.apply(variables, HOST["inputs"], train=True, mutable=["batch_stats"])
  assert_close(a, b, rtol=1e-5)
  assert grouping(8, None, "batch", ((0, 2), (1, 3))).member == (0, 1, 0, 1)
  assert grouping(8, None, "batch", None).blocks == 1
  assert grouping(8, None, None, None) is None
  with pytest.raises(ValueError, match=r"axis_index_groups: .* equal groups"):
    grouping(8, None, "batch", ((0, 1), (2,)))


class NamedAxisNNX(nnx.Module):
  def __init__(self, num_classes: int, axis_name=None, *, rngs: nnx.Rngs):
    self.dense = nnx.Linear(40, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, axis_name=axis_name, rngs=rngs)
    self.out = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.norm(self.dense(x))))


def test_an_nnx_batch_norm_naming_an_axis_trains_on_8_devices_as_on_1():
  named = create_adapter(NamedAxisNNX, num_classes=10, axis_name="batch")
  whole = create_adapter(NamedAxisNNX, num_classes=10)
  loss8, params8, stats8 = one_step(named, HOST, shd.make_mesh())
  loss1, params1, stats1 = one_step(whole, HOST)
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  assert_close(params8, params1)
  assert_close(stats8, stats1)


def test_calling_conventions_are_read_from_the_model():
  lm = create_adapter("models_as_written:lm1b_like", num_classes=50, length=16)
  assert lm.mode is None and lm.inputs == {}  # positions and segments have defaults
  assert (lm.train_module.config.deterministic, lm.eval_module.config.deterministic) == (
    False,
    True,
  )
  cnn = create_adapter("models_as_written:CallTimeRngsCNN", num_classes=10)
  assert isinstance(cnn.module, NNXModel) and cnn.module.rngs_at_call
  with pytest.raises(ValueError, match=r"^model.call.inputs: .*needs `attention_mask`"):
    create_adapter("models_as_written:GemmaLike", num_classes=50)
  call = mw_call(inputs={"attention_mask": "causal_mask"})
  gemma = create_adapter("models_as_written:GemmaLike", num_classes=50, call=call)
  assert gemma.inputs == {
    "positions": "positions",
    "cache": "none",
    "attention_mask": "causal_mask",
  }
  tokens = jnp.ones((2, 16), jnp.int32)
  variables = gemma.init(init_rngs(jax.random.key(0)), tokens)
  assert gemma.apply(variables, tokens, train=False).shape == (2, 16, 50)  # (logits, cache)[0]
  with pytest.raises(ValueError, match=r"^model.call.mode: .*takes no `train` argument"):
    create_adapter("models_as_written:GemmaLike", num_classes=50, call=mw_call(mode="train"))


def mw_call(**fields):
  from bigbatch.models import CallSpec

  return CallSpec(**fields)


def test_a_models_own_call_time_rngs_draw_its_dropout_from_the_step():
  cnn = create_adapter("models_as_written:CallTimeRngsCNN", num_classes=10)
  variables = cnn.init(init_rngs(jax.random.key(0)), HOST["inputs"][:2])

  def logits(seed):
    rngs = {"dropout": jax.random.key(seed)}
    out, _ = cnn.apply(variables, HOST["inputs"], train=True, rngs=rngs, mutable=["batch_stats"])
    return np.asarray(out)

  assert not np.allclose(logits(1), logits(2))  # dropout drew
  np.testing.assert_array_equal(logits(1), logits(1))  # from the step's key alone
  # evaluation: no dropout, the same logits whatever the key
  evaluated = cnn.apply(variables, HOST["inputs"], train=False)
  np.testing.assert_array_equal(evaluated, cnn.apply(variables, HOST["inputs"], train=False))


class Bidirectional(nn.Module):
  """Attention without a mask: every position sees every token."""

  vocab_size: int

  @nn.compact
  def __call__(self, tokens, train: bool = True):
    x = nn.Embed(self.vocab_size, 16)(tokens)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2)(x)
    return nn.Dense(self.vocab_size)(x)


@pytest.mark.parametrize(
  "name,options,expected",
  [
    ("transformer", {"num_layers": 1, "width": 32, "num_heads": 2, "context_length": 16}, None),
    ("models_as_written:lm1b_like", {"length": 16}, "shifts its inputs itself"),
    ("models_as_written:lm1b_like", {"length": 16, "targets": "inputs"}, None),
    (Bidirectional, {}, "not causal"),
  ],
  ids=["builtin", "shifts", "shifts-declared", "bidirectional"],
)
def test_the_causal_probe_tells_each_contract(name, options, expected):
  targets = options.pop("targets", "next")
  model = create_adapter(name, num_classes=50, call=mw_call(targets=targets), **options)
  tokens = jnp.ones((1, 16), jnp.int32)
  variables = model.init(init_rngs(jax.random.key(0)), tokens)
  unboxed = nn.meta.unbox(variables)
  problem = causal.check(model, unboxed, 16, 50)
  if expected is None:
    assert problem is None
  else:
    assert expected in problem and "\n" not in problem


class OwnNorm(nn.Module):
  """A batch norm of the model's own: statistics kept, but no flax BatchNorm to intercept."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True):
    mean = self.variable("batch_stats", "mean", jnp.zeros, (x.shape[-1],))
    if train and not self.is_initializing():
      mean.value = 0.9 * mean.value + 0.1 * x.mean(0)
    return nn.Dense(self.num_classes)(x - mean.value)


@pytest.mark.parametrize(
  "name,ghost,whole,words",
  [
    ("cnn1d", 16, False, "ghost batch 16"),
    ("models_as_written:PmapResNet", None, True, "as its axis_name batch asks"),
    ("models_as_written:PmapResNet", 8, False, "ghost batch 8"),
    ("mlp", 16, False, "no batch norm in the model; ghost_batch_size 16 does not apply"),
    (OwnNorm, 16, True, "ghost_batch_size 16 does not reach this model"),
  ],
  ids=["ghost", "axis", "axis-ghost", "no-norm", "own-norm"],
)
def test_the_banner_says_how_the_model_normalises(name, ghost, whole, words):
  from bigbatch.train.build import batch_norm_use

  model = create_adapter(name, num_classes=10, ghost_batch_size=ghost)
  use = batch_norm_use(model, (40,), ghost)
  assert use.whole == whole and words in use.note


def test_packed_documents_reach_a_model_that_takes_them_through_the_step():
  """lm1b's packed batches: `dataset.features` carries each token's document and position,
  `model.call.inputs` passes them by name, and the step (on 8 devices, in 2 micro-batches)
  scores what the model gives with them: not what it gives without."""
  from bigbatch.data import sequences
  from bigbatch.models import CallSpec

  vocab, length = 32, 16
  tokens = np.random.default_rng(3).integers(1, vocab, (16, length)).astype(np.int32)
  tokens[:, [4, 9]] = 0  # three documents in each sequence
  features = sequences.document_features(tokens, separator=0)
  batch = {"inputs": tokens, "labels": tokens, **features}
  names = {"inputs_positions": "inputs_position", "inputs_segmentation": "inputs_segmentation"}
  model = create_adapter(
    "models_as_written:lm1b_like", num_classes=vocab, length=length, deterministic=True,
    call=CallSpec(mode="none", inputs=names, targets="inputs"),
  )  # fmt: skip
  assert model.inputs == names
  model = dataclasses.replace(model, features=tuple((name, (length,), "<i4") for name in features))
  tx = optax.sgd(0.1)
  state = st.init_train_state(
    model, tx, jax.ShapeDtypeStruct((1, length), jnp.int32), jax.random.key(0)
  )
  variables = {"params": state.params}
  mesh = shd.make_mesh()
  step = st.make_train_step(model, tx, rng_seed=None, mesh=mesh, micro_batch_size=8,
                            data_shards=8)  # fmt: skip
  placed = jax.device_put(state, shd.replicated(mesh))
  _, metrics = jax.jit(step)(placed, shd.global_batch(mesh, batch, 16))

  def loss(**kwargs):
    logits = model.module.apply(variables, tokens, **kwargs)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean())

  packed = loss(inputs_positions=features["inputs_position"],
                inputs_segmentation=features["inputs_segmentation"])  # fmt: skip
  assert float(metrics["loss"]) == pytest.approx(packed, rel=1e-5)
  assert abs(packed - loss()) > 1e-3  # the documents changed what the model computed
