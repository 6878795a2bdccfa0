"""Models written to their authors' conventions, not to bigbatch's, given by import path.

Each follows the shape of a published example (written here, small enough for a CPU):
- `PmapResNet`: flax's ImageNet ResNet, its BatchNorm naming the pmap axis
  (`axis_name="batch"`) through a `functools.partial`, called `model(x, train=...)`;
  `GroupedResNet` the same with `axis_index_groups`.
- `CallTimeRngsCNN`: flax's NNX MNIST CNN, dropout taking `rngs` at call time
  (`model(x, rngs)`), switched by `train()` / `eval()`.
- `lm1b_like`: flax's lm1b TransformerLM, its mode in its config
  (`deterministic`), shifting its inputs right itself, its parameters
  annotated with logical axes, taking positions and segments it may be given.
- `GemmaLike`: Gemma's NNX transformer, called
  `model(last_tokens, positions, cache, attention_mask)` and returning
  `(logits, cache)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx


class ResidualBlock(nn.Module):
  filters: int
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.filters, (3,), use_bias=False)(x)
    y = nn.relu(self.norm()(y))
    y = nn.Conv(self.filters, (3,), use_bias=False)(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    return nn.relu(x + y)


class PmapResNet(nn.Module):
  """A pmap-era ResNet on 1-D signals: every BatchNorm averages over `axis_name`."""

  num_classes: int
  filters: int = 8
  blocks: int = 2
  axis_name: str | None = "batch"
  axis_index_groups: Any = None
  norm: Any = None  # another normalisation of the same signature (a test's GhostBatchNorm)

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
    )
    if self.norm is not None:
      norm = functools.partial(self.norm, use_running_average=not train)
    x = x.reshape(x.shape[0], -1, 1)
    x = nn.relu(norm()(nn.Conv(self.filters, (5,), strides=(2,), use_bias=False)(x)))
    for _ in range(self.blocks):
      x = ResidualBlock(self.filters, norm)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=1))


def grouped_resnet(num_classes: int):
  """`PmapResNet` normalising over pairs of 4 replicas."""
  return PmapResNet(num_classes, axis_index_groups=((0, 1), (2, 3)))


class CallTimeRngsCNN(nnx.Module):
  """An NNX CNN whose dropout takes its random stream when called."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, kernel_size=(5,), strides=(2,), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(rate=0.25)
    self.out = nnx.Linear(8 * 20, num_classes, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs):
    x = nnx.relu(self.norm(self.conv(x.reshape(x.shape[0], -1, 1))))
    x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
    return self.out(x)


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """lm1b's style: every setting, the mode included, in one config."""

  vocab_size: int
  width: int = 32
  heads: int = 2
  layers: int = 1
  length: int = 64
  deterministic: bool = True


def shift_right(x):
  return jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]


def logical(init, names):
  return nn.with_logical_partitioning(init, names)


class LMBlock(nn.Module):
  config: LMConfig

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    dense = nn.initializers.xavier_uniform()
    y = nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)))(x)
    # lm1b names the kernels as flax's DenseGeneral initialises them: flat, (embed, kv)
    y = nn.MultiHeadDotProductAttention(
      num_heads=c.heads,
      kernel_init=logical(dense, ("embed", "kv")),
      deterministic=c.deterministic,
    )(y, mask=mask)
    x = x + y
    y = nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)))(x)
    y = nn.Dense(4 * c.width, kernel_init=logical(dense, ("embed", "mlp")))(y)
    y = nn.Dropout(0.1)(nn.gelu(y), deterministic=c.deterministic)
    return x + nn.Dense(c.width, kernel_init=logical(dense, ("mlp", "embed")))(y)


class TransformerLM(nn.Module):
  """A decoder that shifts its inputs right itself: position t predicts token t."""

  config: LMConfig

  @nn.compact
  def __call__(self, inputs, inputs_positions=None, inputs_segmentation=None):
    c = self.config
    mask = nn.combine_masks(
      nn.make_attention_mask(inputs > 0, inputs > 0), nn.make_causal_mask(inputs)
    )
    if inputs_segmentation is not None:  # packed documents attend within themselves
      same = nn.make_attention_mask(inputs_segmentation, inputs_segmentation, jnp.equal)
      mask = nn.combine_masks(mask, same)
    embed = nn.Embed(
      c.vocab_size, c.width, embedding_init=logical(nn.initializers.normal(1.0), ("vocab", "embed"))
    )
    x = embed(shift_right(inputs))
    positions = self.param(
      "positions", logical(nn.initializers.normal(0.02), ("length", "embed")), (c.length, c.width)
    )
    x = x + (
      positions[None, : inputs.shape[1]]
      if inputs_positions is None
      else positions[inputs_positions]
    )
    for _ in range(c.layers):
      x = LMBlock(c)(x, mask)
    x = nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)))(x)
    return nn.Dense(
      c.vocab_size, kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", "vocab"))
    )(x)


def lm1b_like(vocab_size: int, deterministic: bool, width: int = 32, length: int = 64):
  """The factory a config names: the mode is a setting of the model's config."""
  config = LMConfig(vocab_size, width=width, length=length, deterministic=deterministic)
  return TransformerLM(config)


class GemmaLike(nnx.Module):
  """Gemma's calling convention: tokens, positions, a cache and an attention mask in; the
  logits and the cache out."""

  def __init__(self, vocab_size: int, width: int = 32, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab_size, width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=width, decode=False, rngs=rngs)
    self.norm = nnx.RMSNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(0.1)
    self.out = nnx.Linear(width, vocab_size, rngs=rngs)
    self.width = width

  def __call__(self, last_tokens, positions, cache, attention_mask, rngs: nnx.Rngs | None = None):
    x = self.embed(last_tokens)
    angle = positions[..., None] / 10000.0 ** (jnp.arange(self.width) / self.width)
    x = x + jnp.sin(angle)
    x = x + self.attention(self.norm(x), mask=attention_mask[:, None], deterministic=True)
    x = self.dropout(x, rngs=rngs)
    return self.out(x), cache
