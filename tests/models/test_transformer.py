"""The transformer language model: GPT-2's parameter count, causality, a NumPy forward
pass, rotary's relative positions, tied embeddings, GPT-2's initialisation, the linen
adapter bigbatch trains it through, bfloat16 compute, and one line for each bad field."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bigbatch import partitioning
from bigbatch.models import init_rngs
from bigbatch.models.plugins import NNXModel
from bigbatch.models.transformer import (
  PRESETS,
  Transformer,
  apply_rotary,
  flops_per_token,
  parameter_count,
)

TINY = dict(vocab_size=32, context_length=8, num_layers=2, width=16, num_heads=2)
TOKENS = jax.random.randint(jax.random.key(0), (2, 8), 0, 32)


def params_of(model: nnx.Module) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def count(fields: dict) -> int:
  abstract = nnx.eval_shape(lambda: Transformer(**fields, rngs=nnx.Rngs(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def analytic(fields: dict, **options) -> int:
  return parameter_count(**{k: v for k, v in fields.items() if k != "num_heads"}, **options)


@nnx.jit
def forward(model: nnx.Module, tokens: jax.Array) -> jax.Array:
  """The model's logits, compiled whole: faster here than op by op."""
  return model(tokens)


def tiny(positions: str) -> Transformer:
  """A tiny model in eval mode, its parameters moved off their initial values so that
  the LayerNorms, biases and attention patterns all take part."""
  model = Transformer(**TINY, positions=positions, rngs=nnx.Rngs(1))
  leaves, tree = jax.tree.flatten(params_of(model))
  keys = jax.random.split(jax.random.key(2), len(leaves))
  noise = [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(tree, [x + n for x, n in zip(leaves, noise)]))
  model.eval()
  return model


def test_gpt2_small_has_its_published_124_439_808_parameters():
  gpt2 = PRESETS["gpt2_small"]
  assert analytic(gpt2) == count(gpt2) == 124_439_808
  # Kaplan et al.'s N: without the token (50,257 x 768) and position (1,024 x 768) tables
  assert analytic(gpt2, embeddings=False) == 124_439_808 - (50_257 + 1_024) * 768 == 85_056_000
  # 6N, plus 12 * 12 layers * 768 * 1,024 for attention
  assert (
    flops_per_token(
      num_layers=12, width=768, sequence_length=1_024, non_embedding_params=85_056_000
    )
    == 6 * 85_056_000 + 113_246_208
  )


@pytest.mark.parametrize(
  "fields, expected",
  [
    (PRESETS["lm_tiny"], 3_225_088),  # the counts the presets' comments state
    (PRESETS["lm_mini"], 231_168),
    (PRESETS["lm_1b"], 1_311_625_216),
    (dict(TINY, positions="rotary", bias=False, mlp_ratio=3), None),
  ],
  ids=["lm_tiny", "lm_mini", "lm_1b", "rotary_no_bias"],
)
def test_the_analytic_parameter_count_is_the_models(fields, expected):
  assert analytic(fields) == count(fields) == (expected or count(fields))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_logits_at_a_position_see_no_later_token(positions):
  model = tiny(positions)
  before = forward(model, TOKENS)
  for t in range(TOKENS.shape[1] - 1):
    changed = TOKENS.at[:, t + 1 :].set((TOKENS[:, t + 1 :] + 1) % TINY["vocab_size"])
    after = forward(model, changed)
    np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
    assert np.abs(after[:, t + 1 :] - before[:, t + 1 :]).min() > 0  # the change is seen


def numpy_rotary(x: np.ndarray) -> np.ndarray:
  """RoPE as a complex rotation: feature i and feature i + d/2 are one complex number."""
  half = x.shape[-1] // 2
  angles = np.arange(x.shape[1])[:, None] * 10_000.0 ** (-np.arange(half) / half)
  turned = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * angles)[None, :, None, :]
  return np.concatenate([turned.real, turned.imag], axis=-1)


def numpy_forward(params: dict, tokens: np.ndarray, *, num_heads: int, rotary: bool):
  """GPT-2's forward pass in float64 NumPy, reading the parameters by name."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)

  def norm(x, q):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * q["scale"] + q["bias"]

  def linear(x, q):
    return x @ q["kernel"] + q["bias"]

  def attention(x, q):
    batch, length, width = x.shape
    qkv = linear(x, q["qkv"]).reshape(batch, length, 3, num_heads, width // num_heads)
    queries, keys, values = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if rotary:
      queries, keys = numpy_rotary(queries), numpy_rotary(keys)
    scores = np.einsum("bthd,bshd->bhts", queries, keys) / np.sqrt(width // num_heads)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = np.einsum("bhts,bshd->bthd", weights, values).reshape(batch, length, width)
    return linear(mixed, q["out"])

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

  embedding = p["token_embedding"]["embedding"]
  x = embedding[tokens]
  if not rotary:
    x = x + p["position_embedding"]["embedding"][: tokens.shape[1]]
  for i in range(len(p["blocks"])):
    block = p["blocks"][str(i)]
    x = x + attention(norm(x, block["attention_norm"]), block["attention"])
    hidden = gelu(linear(norm(x, block["mlp_norm"]), block["mlp"]["up"]))
    x = x + linear(hidden, block["mlp"]["down"])
  return norm(x, p["final_norm"]) @ embedding.T


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_the_forward_pass_is_gpt2s_written_in_numpy(positions):
  model = tiny(positions)
  expected = numpy_forward(
    params_of(model), np.asarray(TOKENS), num_heads=2, rotary=positions == "rotary"
  )
  logits = forward(model, TOKENS)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 8, 32)
  assert np.abs(expected).max() > 1  # logits of this size test the whole model
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_rotary_scores_depend_only_on_the_distance_between_query_and_key():
  q, k = jax.random.normal(jax.random.key(3), (2, 1, 16, 2, 8))
  at = jnp.arange(16)

  def scores(shift):
    return jnp.einsum("bthd,bshd->bhts", apply_rotary(q, at + shift), apply_rotary(k, at + shift))

  np.testing.assert_allclose(scores(37), scores(0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(scores(1_000), scores(0), rtol=1e-4, atol=1e-4)
  plain = jnp.einsum("bthd,bshd->bhts", q, k)
  same_place = jnp.diagonal(scores(0), axis1=2, axis2=3)
  np.testing.assert_allclose(
    same_place, jnp.diagonal(plain, axis1=2, axis2=3), rtol=1e-5, atol=1e-5
  )
  assert np.abs(scores(0) - plain).max() > 0.1  # but apart, the positions matter
  np.testing.assert_allclose(apply_rotary(q, at), numpy_rotary(np.asarray(q)), atol=1e-5)


def test_the_output_projection_is_the_token_embedding():
  model = tiny("rotary")
  params = params_of(model)
  assert "position_embedding" not in params  # rotary has no position parameters
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  vocab_sized = [path for path, x in flat if TINY["vocab_size"] in x.shape]
  assert vocab_sized == [("token_embedding", "embedding")]  # no output matrix of its own
  unused, other = 5, 7
  tokens = jnp.where(TOKENS == unused, 0, TOKENS)
  before = forward(model, tokens)
  embedding = model.token_embedding.embedding
  embedding[...] = embedding[...].at[unused].add(0.5 * embedding[other])
  after = forward(model, tokens)
  # a token that is not in the input: only its own logit moves, by h . (0.5 e_other)
  np.testing.assert_allclose(np.delete(after, unused, -1), np.delete(before, unused, -1), atol=1e-6)
  np.testing.assert_allclose(
    after[..., unused], before[..., unused] + 0.5 * before[..., other], rtol=1e-5, atol=1e-5
  )
  # and the same row is the input embedding: where the token is read, everything moves
  with_it = tokens.at[:, 3].set(unused)
  assert np.abs(forward(model, with_it)[:, 3:] - after[:, 3:]).min() > 0


def test_the_initialisation_is_gpt2s():
  model = Transformer(**dict(TINY, width=64, num_layers=2), rngs=nnx.Rngs(4))
  for path, x in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    x, name = np.asarray(x[...]), "/".join(map(str, path))
    assert x.dtype == np.float32, name
    if path[-1] == "bias":
      np.testing.assert_array_equal(x, 0, err_msg=name)
    elif path[-1] == "scale":
      np.testing.assert_array_equal(x, 1, err_msg=name)
    else:  # the projections into the residual stream start 1/sqrt(2 * 2 layers) smaller
      stddev = 0.01 if path[-2] in ("out", "down") else 0.02
      assert abs(x.mean()) < 0.1 * stddev and x.std() == pytest.approx(stddev, rel=0.1), name


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_through_bigbatchs_adapter_it_computes_what_the_nnx_module_computes(positions):
  fields = dict(TINY, positions=positions)
  model = NNXModel(Transformer, kwargs=flax.core.FrozenDict(fields))
  boxed = model.init(init_rngs(jax.random.key(5)), TOKENS, train=False)
  # each parameter comes boxed with the logical names of its axes; the state holds values
  assert partitioning.logical_names(boxed["params"]["token_embedding"]["embedding"]) == (
    "vocab",
    "embed",
  )
  variables = partitioning.unbox(boxed)
  net = Transformer(**fields, rngs=nnx.Rngs(params=5, dropout=6))
  assert jax.tree.map(jnp.shape, variables) == {"params": jax.tree.map(jnp.shape, params_of(net))}
  net.eval()
  np.testing.assert_allclose(
    model.apply({"params": params_of(net)}, TOKENS, train=False), net(TOKENS), rtol=1e-6
  )
  nnx.update(net, variables["params"])  # the adapter's own initial parameters
  np.testing.assert_allclose(model.apply(variables, TOKENS, train=False), net(TOKENS), rtol=1e-6)
  # no dropout: training computes exactly what evaluation does
  train = model.apply(variables, TOKENS, train=True, rngs={"dropout": jax.random.key(7)})
  np.testing.assert_array_equal(train, model.apply(variables, TOKENS, train=False))


def test_dropout_acts_in_train_mode_only():
  model = NNXModel(Transformer, kwargs=flax.core.FrozenDict(TINY, dropout=0.3))
  variables = model.init(init_rngs(jax.random.key(5)), TOKENS, train=False)
  evaluated = model.apply(variables, TOKENS, train=False)
  trained = [
    model.apply(variables, TOKENS, train=True, rngs={"dropout": jax.random.key(seed)})
    for seed in (8, 9, 8)
  ]
  np.testing.assert_array_equal(model.apply(variables, TOKENS, train=False), evaluated)
  assert np.abs(trained[0] - evaluated).max() > 1e-3
  assert np.abs(trained[0] - trained[1]).max() > 1e-3  # a new key, a new mask
  np.testing.assert_array_equal(trained[0], trained[2])  # the same key, the same mask


def test_bfloat16_computes_in_bfloat16_from_float32_parameters():
  fields = dict(TINY, positions="rotary")
  wide = Transformer(**fields, rngs=nnx.Rngs(10))
  narrow = Transformer(**fields, dtype=jnp.bfloat16, rngs=nnx.Rngs(10))
  for ours, theirs in zip(jax.tree.leaves(params_of(narrow)), jax.tree.leaves(params_of(wide))):
    assert ours.dtype == jnp.float32
    np.testing.assert_array_equal(ours, theirs)
  hidden = narrow.token_embedding(TOKENS)
  assert hidden.dtype == narrow.blocks["0"](hidden).dtype == jnp.bfloat16
  logits, reference = forward(narrow, TOKENS), forward(wide, TOKENS)
  assert logits.dtype == jnp.float32
  error = np.abs(logits - reference).max()
  assert 0 < error < 0.02 * np.abs(reference).max()  # bfloat16's 8 bits, not float32's


BAD = [
  (dict(width=10, num_heads=4), "model.width: 10 is not divisible by model.num_heads=4"),
  (dict(positions="sinusoidal"), "model.positions: 'sinusoidal' is not one of learned, rotary"),
  (
    dict(width=12, num_heads=4, positions="rotary"),
    "model.positions: 'rotary' turns pairs of features, but the head dimension",
  ),
  (dict(num_layers=0), "model.num_layers: 0 is not a positive integer"),
  (dict(vocab_size=2.5), "model.vocab_size: 2.5 is not a positive integer"),
  (dict(dropout=1.0), "model.dropout: 1.0 is not a rate in [0, 1)"),
]


@pytest.mark.parametrize(
  "fields, message", BAD, ids=["heads", "positions", "rotary_odd", "layers", "vocab", "dropout"]
)
def test_a_bad_field_is_one_line_naming_it(fields, message):
  with pytest.raises(ValueError) as raised:
    Transformer(**fields, rngs=nnx.Rngs(0))
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_sequence_longer_than_the_context_is_one_line_naming_context_length():
  model = Transformer(**TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"^model\.context_length: 8, but the sequences have 9 "):
    model(jnp.zeros((1, 9), jnp.int32))
