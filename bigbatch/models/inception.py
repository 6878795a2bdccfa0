"""Inception-ResNet-V2 (Szegedy et al. 2016), with ghost batch norm.

The layout follows the widely used Keras reference (`InceptionResNetV2`,
299x299 input): a stem, 10 x block35, reduction A, 20 x block17,
reduction B, 10 x block8, a 1x1 convolution to 1536 features, global
average pooling and the classifier. Every convolution is followed by
ghost batch norm and ReLU, except the linear 1x1 convolution that closes
each residual block, which has a bias instead and is scaled before the sum.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigbatch.models.ghost_norm import GhostBatchNorm


class ConvNorm(nn.Module):
  """Convolution (no bias), ghost batch norm, ReLU."""

  filters: int
  kernel: Sequence[int]
  strides: int = 1
  padding: str = "SAME"
  ghost_batch_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(
      self.filters,
      tuple(self.kernel),
      (self.strides, self.strides),
      padding=self.padding,
      use_bias=False,
      dtype=self.dtype,
    )(x)
    x = GhostBatchNorm(self.ghost_batch_size, dtype=self.dtype)(x, use_running_average=not train)
    return nn.relu(x)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _stem(x, conv):
  """The stem (299 -> 35x35x192) and mixed 5b (320 features); `conv(y, filters, kernel,
  strides, padding)` adds a conv-norm-ReLU to the calling module, in this order."""
  x = conv(x, 32, 3, 2, "VALID")
  x = conv(x, 32, 3, padding="VALID")
  x = conv(x, 64, 3)
  x = _max_pool(x)
  x = conv(x, 80, 1, padding="VALID")
  x = conv(x, 192, 3, padding="VALID")
  x = _max_pool(x)
  pool = nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME")
  return jnp.concatenate(
    [
      conv(x, 96, 1),
      conv(conv(x, 48, 1), 64, 5),
      conv(conv(conv(x, 64, 1), 96, 3), 96, 3),
      conv(pool, 64, 1),
    ],
    axis=-1,
  )


class InceptionResNetV2(nn.Module):
  """Inception-ResNet-V2.

  Attributes:
    num_classes: output logits.
    blocks: repeats of block35, block17 and block8 ((10, 20, 10) published).
    scales: residual scales of the three block types ((0.17, 0.1, 0.2) published).
    ghost_batch_size: examples per batch-norm ghost batch (the paper: 32 or 64).
    dtype: compute dtype (parameters stay float32).
  """

  num_classes: int
  blocks: Sequence[int] = (10, 20, 10)
  scales: Sequence[float] = (0.17, 0.1, 0.2)
  ghost_batch_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    cn = functools.partial(ConvNorm, ghost_batch_size=self.ghost_batch_size, dtype=self.dtype)

    def conv(y, filters, kernel, strides=1, padding="SAME"):
      size = (kernel, kernel) if isinstance(kernel, int) else kernel
      return cn(filters, size, strides, padding)(y, train)

    def residual(y, branches, scale, activate=True):
      mixed = jnp.concatenate(branches, axis=-1)
      up = nn.Conv(y.shape[-1], (1, 1), use_bias=True, dtype=self.dtype)(mixed)
      y = y + scale * up
      return nn.relu(y) if activate else y

    x = _stem(x.astype(self.dtype), conv)
    for _ in range(self.blocks[0]):  # block35
      branches = [
        conv(x, 32, 1),
        conv(conv(x, 32, 1), 32, 3),
        conv(conv(conv(x, 32, 1), 48, 3), 64, 3),
      ]
      x = residual(x, branches, self.scales[0])
    # reduction A: 1088 features
    x = jnp.concatenate(
      [
        conv(x, 384, 3, 2, "VALID"),
        conv(conv(conv(x, 256, 1), 256, 3), 384, 3, 2, "VALID"),
        _max_pool(x),
      ],
      axis=-1,
    )
    for _ in range(self.blocks[1]):  # block17
      branches = [conv(x, 192, 1), conv(conv(conv(x, 128, 1), 160, (1, 7)), 192, (7, 1))]
      x = residual(x, branches, self.scales[1])
    # reduction B: 2080 features
    x = jnp.concatenate(
      [
        conv(conv(x, 256, 1), 384, 3, 2, "VALID"),
        conv(conv(x, 256, 1), 288, 3, 2, "VALID"),
        conv(conv(conv(x, 256, 1), 288, 3), 320, 3, 2, "VALID"),
        _max_pool(x),
      ],
      axis=-1,
    )
    for i in range(self.blocks[2]):  # block8; the last is linear, unscaled
      last = i == self.blocks[2] - 1
      branches = [conv(x, 192, 1), conv(conv(conv(x, 192, 1), 224, (1, 3)), 256, (3, 1))]
      x = residual(x, branches, 1.0 if last else self.scales[2], activate=not last)
    x = conv(x, 1536, 1)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
