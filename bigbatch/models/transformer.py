"""A decoder-only transformer language model in flax NNX: GPT-2's architecture.

Pre-LayerNorm blocks, `x + attention(LN(x))` then `x + mlp(LN(x))`, with causal
multi-head self-attention and a GELU MLP; a final LayerNorm; and the token embedding
reused as the output projection (tied embeddings), so `logits = h @ embedding.T`.
Positions are a learned embedding, as in GPT-2, or rotary (RoPE) on the queries and
keys, which has no parameters. The initialisation is GPT-2's (Radford et al. 2019).

`dtype` is the compute dtype: the parameters are float32 either way, and the
attention softmax, the LayerNorm statistics and the logits are float32 either way.
Dropout acts only in train mode: bigbatch builds the model through
`bigbatch.models.plugins.NNXModel` and calls `train()` or `eval()` on it each step;
like every NNX module, one built by hand starts in train mode.

Every parameter names its axes (`nnx.Param` `sharding` metadata: `vocab`, `embed`,
`mlp`, `joined_kv` for the heads side by side, `norm`, `length`), and the activations
are constrained by `activation_*` names, so that the mesh's rules
(`bigbatch.partitioning`) split the model over a `tensor` axis as Megatron-LM does:
each device holds whole heads and a slice of the MLP and the vocabulary, and the
residual stream is whole on each. Outside such rules the names change nothing.

`parameter_count` and `flops_per_token` are analytic, so a plan or a utilisation
report can size a model without building it; `PRESETS` holds the fields of a CPU-sized
model, of GPT-2 small and of a 1B-class model.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

POSITIONS = ("learned", "rotary")
INIT_STDDEV = 0.02  # GPT-2's, for every weight matrix and embedding
LAYER_NORM_EPSILON = 1e-5  # GPT-2's
ROTARY_BASE = 10_000.0  # Su et al.'s

PRESETS: dict[str, dict[str, Any]] = {
  # 3,225,088 parameters (3,159,552 without embeddings): bytes in, a few minutes of
  # training on a 2-core CPU. Rotary: no position table to learn from little data.
  "lm_tiny": dict(
    vocab_size=256, context_length=256, num_layers=4, width=256, num_heads=4, positions="rotary"
  ),
  # BPE tokens (`bpe:2048`) for the language-model study where a batch ramp can pay,
  # sized for 10M tokens in under ten minutes on a 2-core CPU (about 38,000 tokens/s at a
  # batch of 2,048 with B_simple measured: docs/RESULTS_LM.md). 231,168 parameters
  # (100,096 without embeddings); the vocabulary is the tokenizer's.
  "lm_mini": dict(
    vocab_size=2_048, context_length=128, num_layers=2, width=64, num_heads=2, positions="rotary"
  ),
  # GPT-2 small: 124,439,808 parameters (85,056,000 without embeddings).
  "gpt2_small": dict(
    vocab_size=50_257,
    context_length=1_024,
    num_layers=12,
    width=768,
    num_heads=12,
    positions="learned",
  ),
  # 1,311,625,216 parameters (1,208,602,624 without embeddings); 50,304 is GPT-2's
  # vocabulary padded to a multiple of 128, so the logits' matrix tiles evenly.
  "lm_1b": dict(
    vocab_size=50_304,
    context_length=2_048,
    num_layers=24,
    width=2_048,
    num_heads=16,
    positions="rotary",
  ),
}


def apply_rotary(x: jax.Array, positions: jax.Array, *, base: float = ROTARY_BASE) -> jax.Array:
  """Rotary position embedding (RoPE; Su et al. 2021, arXiv:2104.09864) of queries or keys.

  Feature `i` of the first half of a head and feature `i` of its second half form a
  pair (GPT-NeoX's layout), turned by the angle `position * base**(-2i / head_dim)`.
  A rotation preserves dot products up to the difference of the two angles, so a query
  at position m and a key at position n score by `m - n` alone.

  Args:
    x: queries or keys, `[batch, length, heads, head_dim]`, `head_dim` even.
    positions: integer positions, `[length]` or `[batch, length]`.
    base: the wavelength scale.

  Returns:
    `x` rotated, in its own dtype; the angles and the rotation are float32, because
    bfloat16 cannot tell apart angles of positions in the thousands.
  """
  half = x.shape[-1] // 2
  frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * frequencies
  cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]  # over the heads
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
  return rotated.astype(x.dtype)


def parameter_count(
  *,
  vocab_size: int,
  context_length: int,
  num_layers: int,
  width: int,
  mlp_ratio: int = 4,
  positions: str = "learned",
  bias: bool = True,
  embeddings: bool = True,
) -> int:
  """The number of parameters of a `Transformer` with these fields, without building it.

  Args:
    vocab_size, context_length, num_layers, width, mlp_ratio, positions, bias: as
      `Transformer`'s (the number of heads changes nothing).
    embeddings: count the token and position embeddings. False gives Kaplan et al.'s
      non-embedding count N; the output projection, tied to the token embedding, is
      left out with it.

  Returns:
    The count of scalars in the model's `nnx.Param`s.
  """

  def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)

  norm = width * (2 if bias else 1)  # scale, and a bias when there are biases
  hidden = mlp_ratio * width
  block = 2 * norm + linear(width, 3 * width) + linear(width, width)
  block += linear(width, hidden) + linear(hidden, width)
  count = num_layers * block + norm
  if embeddings:
    count += vocab_size * width + (context_length * width if positions == "learned" else 0)
  return count


def flops_per_token(
  *, num_layers: int, width: int, sequence_length: int, non_embedding_params: int
) -> float:
  """Training FLOPs per token, as model-FLOPs-utilisation (MFU) reports count them.

  `6N + 12·L·d·T`. The 6N is a forward pass (2N: a multiply and an add per
  parameter) and a backward pass (4N) through the N non-embedding parameters
  (Kaplan et al. 2020, arXiv:2001.08361, section 2.1). The 12·L·d·T is attention's
  two `T×T` matrix products per layer (the scores and the weighted sum of values),
  forward and backward, counted over the whole `T×T` matrix and not its causal half,
  as PaLM's MFU does (Chowdhery et al. 2022, arXiv:2204.02311, appendix B).
  Rematerialisation is not counted: this is the work the model needs, not what the
  hardware did.

  Args:
    num_layers: L, the transformer blocks.
    width: d, the model width (heads × head dimension).
    sequence_length: T, the tokens each sequence attends over.
    non_embedding_params: N, e.g. `parameter_count(..., embeddings=False)`.

  Returns:
    FLOPs to train on one token.
  """
  return 6.0 * non_embedding_params + 12.0 * num_layers * width * sequence_length


def _validate(
  *,
  vocab_size: Any,
  context_length: Any,
  num_layers: Any,
  width: Any,
  num_heads: Any,
  mlp_ratio: Any,
  positions: Any,
  dropout: Any,
) -> None:
  """Raises a one-line ValueError naming `model.FIELD` for the first bad field."""
  sizes = dict(
    vocab_size=vocab_size,
    context_length=context_length,
    num_layers=num_layers,
    width=width,
    num_heads=num_heads,
    mlp_ratio=mlp_ratio,
  )
  for name, value in sizes.items():
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
      raise ValueError(f"model.{name}: {value!r} is not a positive integer")
  if width % num_heads:
    raise ValueError(f"model.width: {width} is not divisible by model.num_heads={num_heads}")
  if positions not in POSITIONS:
    raise ValueError(f"model.positions: {positions!r} is not one of {', '.join(POSITIONS)}")
  if positions == "rotary" and (width // num_heads) % 2:
    raise ValueError(
      f"model.positions: 'rotary' turns pairs of features, but the head dimension "
      f"width/num_heads = {width // num_heads} is odd"
    )
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"model.dropout: {dropout!r} is not a rate in [0, 1)")


def _names(*names: str | None) -> dict[str, Any]:
  """An `nnx.Param`'s metadata naming its axes.

  Not placed when built (`eager_sharding` off): the trainer places the whole
  state itself, and a module built with no mesh in context (by hand, or afresh
  at every call through `nnx.bridge.ToLinen`) must still build.
  """
  return {"out_sharding": names, "eager_sharding": False}


def _constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """`x` split over the mesh as the rules in context map `names` (no rules: `x`)."""
  return nn.with_logical_constraint(x, names)


def _linear(
  fan_in: int,
  fan_out: int,
  names: tuple[str, str],
  *,
  stddev: float,
  bias: bool,
  dtype: Any,
  rngs: nnx.Rngs,
):
  return nnx.Linear(
    fan_in,
    fan_out,
    use_bias=bias,
    kernel_init=nnx.initializers.normal(stddev),
    kernel_metadata=_names(*names),
    bias_metadata=_names(names[1]),
    dtype=dtype,
    rngs=rngs,
  )


def _layer_norm(width: int, *, bias: bool, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # flax computes the statistics in float32 whatever the dtype; the exact two-pass
  # variance, since E[x^2] - E[x]^2 loses digits when the mean is large.
  return nnx.LayerNorm(
    width,
    epsilon=LAYER_NORM_EPSILON,
    use_bias=bias,
    use_fast_variance=False,
    scale_metadata=_names("norm"),
    bias_metadata=_names("norm"),
    dtype=dtype,
    rngs=rngs,
  )


class _Attention(nnx.Module):
  """Causal multi-head self-attention: one projection to queries, keys and values."""

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    rotary: bool,
    bias: bool,
    out_stddev: float,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.num_heads = num_heads
    self.rotary = rotary
    # GPT-2's layout: [queries | keys | values], each `width` columns of heads side by
    # side. Split over `tensor` as stored, the three blocks' boundaries need not fall
    # between two devices' columns, and XLA re-splits them by head after the projection.
    linear = dict(bias=bias, dtype=dtype, rngs=rngs)
    self.qkv = _linear(width, 3 * width, ("embed", "joined_kv"), stddev=INIT_STDDEV, **linear)
    self.out = _linear(width, width, ("joined_kv", "embed"), stddev=out_stddev, **linear)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q, k, v = (_constrain(qkv[:, :, i], *heads) for i in range(3))
    if self.rotary:
      positions = jnp.arange(length)
      q, k = apply_rotary(q, positions), apply_rotary(k, positions)
    # scaled by 1/sqrt(head_dim); the softmax is float32 whatever the dtype
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(y.reshape(batch, length, width))


class _MLP(nnx.Module):
  """Two linear maps with a GELU (tanh approximation, as GPT-2) between them."""

  def __init__(
    self, width: int, hidden: int, *, bias: bool, out_stddev: float, dtype: Any, rngs: nnx.Rngs
  ):
    linear = dict(bias=bias, dtype=dtype, rngs=rngs)
    self.up = _linear(width, hidden, ("embed", "mlp"), stddev=INIT_STDDEV, **linear)
    self.down = _linear(hidden, width, ("mlp", "embed"), stddev=out_stddev, **linear)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = self.up(x)
    hidden = _constrain(hidden, "activation_batch", "activation_length", "activation_mlp")
    return self.down(jax.nn.gelu(hidden, approximate=True))


class _Block(nnx.Module):
  """`x + dropout(attention(LN(x)))`, then `x + dropout(mlp(LN(x)))`."""

  def __init__(
    self,
    *,
    width: int,
    num_heads: int,
    mlp_ratio: int,
    rotary: bool,
    dropout: float,
    bias: bool,
    out_stddev: float,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.attention_norm = _layer_norm(width, bias=bias, dtype=dtype, rngs=rngs)
    self.attention = _Attention(
      width, num_heads, rotary=rotary, bias=bias, out_stddev=out_stddev, dtype=dtype, rngs=rngs
    )
    self.mlp_norm = _layer_norm(width, bias=bias, dtype=dtype, rngs=rngs)
    self.mlp = _MLP(
      width, mlp_ratio * width, bias=bias, out_stddev=out_stddev, dtype=dtype, rngs=rngs
    )
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.dropout(self.attention(self.attention_norm(x)))
    return x + self.dropout(self.mlp(self.mlp_norm(x)))


# the fields `parameter_count` reads, at `Transformer`'s defaults
_DEFAULTS = {
  "vocab_size": 256,
  "context_length": 256,
  "num_layers": 4,
  "width": 256,
  "mlp_ratio": 4,
  "positions": "learned",
  "bias": True,
}


class Transformer(nnx.Module):
  """A decoder-only transformer language model: tokens in, next-token logits out.

  Args:
    vocab_size: tokens, and logits per position.
    context_length: the longest sequence; the rows of the learned position embedding.
    num_layers: transformer blocks.
    width: the model (residual stream) width.
    num_heads: attention heads; each has `width // num_heads` features.
    mlp_ratio: the MLP's hidden width, in multiples of `width`.
    positions: `"learned"` (a learned position embedding, as GPT-2) or `"rotary"`
      (RoPE on queries and keys, no parameters).
    dropout: the rate of dropout on the embeddings and on each residual branch, in
      train mode.
    bias: biases in the linear maps and the LayerNorms.
    dtype: the compute dtype; the parameters are float32 either way.
    rngs: `params` draws the parameters; `dropout` (or `default`) the dropout masks.

  Raises:
    ValueError: one line naming `model.FIELD`, for a field out of range.
  """

  def __init__(
    self,
    *,
    vocab_size: int = 256,
    context_length: int = 256,
    num_layers: int = 4,
    width: int = 256,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    positions: str = "learned",
    dropout: float = 0.0,
    bias: bool = True,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    _validate(
      vocab_size=vocab_size,
      context_length=context_length,
      num_layers=num_layers,
      width=width,
      num_heads=num_heads,
      mlp_ratio=mlp_ratio,
      positions=positions,
      dropout=dropout,
    )
    self.context_length = context_length
    self.num_layers = num_layers
    self.dtype = dtype
    embed = dict(embedding_init=nnx.initializers.normal(INIT_STDDEV), dtype=dtype, rngs=rngs)
    self.token_embedding = nnx.Embed(
      vocab_size, width, embedding_metadata=_names("vocab", "embed"), **embed
    )
    learned = positions == "learned"
    self.position_embedding = (
      nnx.Embed(context_length, width, embedding_metadata=_names("length", "embed"), **embed)
      if learned
      else None
    )
    self.embedding_dropout = nnx.Dropout(dropout, rngs=rngs)
    # GPT-2: each block adds two branches to the residual stream, so the projections
    # into it start 1/sqrt(2 * num_layers) smaller and its variance does not grow with depth.
    out_stddev = INIT_STDDEV / math.sqrt(2 * num_layers)
    block = dict(width=width, num_heads=num_heads, mlp_ratio=mlp_ratio, rotary=not learned)
    block.update(dropout=dropout, bias=bias, out_stddev=out_stddev, dtype=dtype, rngs=rngs)
    # string keys, so that the linen variables and checkpoints are string-keyed
    # dicts as every other model's; called by index, as "10" sorts before "2"
    self.blocks = nnx.Dict({str(i): _Block(**block) for i in range(num_layers)})
    self.final_norm = _layer_norm(width, bias=bias, dtype=dtype, rngs=rngs)

  @staticmethod
  def training_flops_per_token(sequence_length: int, **fields: Any) -> float:
    """`flops_per_token` of a model with these fields (its defaults for the rest), for
    MFU (`bigbatch.models.flops`)."""
    fields = {**_DEFAULTS, **{k: v for k, v in fields.items() if k in _DEFAULTS}}
    non_embedding = parameter_count(**fields, embeddings=False)
    return flops_per_token(
      num_layers=fields["num_layers"],
      width=fields["width"],
      sequence_length=sequence_length,
      non_embedding_params=non_embedding,
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: integers in `[0, vocab_size)`, `[batch, length]`, `length <= context_length`.

    Returns:
      float32 logits, `[batch, length, vocab_size]`; those at position t see tokens
      up to t only.

    Raises:
      ValueError: naming `model.context_length` for a sequence longer than it.
    """
    if tokens.ndim != 2:
      raise ValueError(f"model: the tokens are [batch, length] integers, not shape {tokens.shape}")
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(
        f"model.context_length: {self.context_length}, but the sequences have {length} tokens"
      )
    x = self.token_embedding(tokens)
    if self.position_embedding is not None:
      x = x + self.position_embedding(jnp.arange(length))
    # the residual stream: whole on every device of a `tensor` group
    residual = ("activation_batch", "activation_length", "activation_embed")
    x = _constrain(self.embedding_dropout(x), *residual)
    for i in range(self.num_layers):
      x = _constrain(self.blocks[str(i)](x), *residual)
    x = self.final_norm(x)
    embedding = self.token_embedding.embedding[...].astype(self.dtype)
    # tied embeddings; accumulated in float32, as the softmax over the vocabulary
    # and the loss read small differences between large logits
    logits = jnp.einsum("btd,vd->btv", x, embedding, preferred_element_type=jnp.float32)
    return _constrain(logits, "activation_batch", "activation_length", "activation_vocab")
