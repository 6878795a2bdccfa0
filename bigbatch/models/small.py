"""Small models for CPU: a 1-D CNN for MNIST-1D and a tiny 2-D CNN for tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigbatch.models.ghost_norm import GhostBatchNorm


class ConvNet(nn.Module):
  """Convolutions (each conv-norm-ReLU), global average pooling, a linear head.

  Works on 1-D signals `(batch, length, channels)` and on images
  `(batch, height, width, channels)`: `kernel` has one entry per spatial axis.

  Attributes:
    channels: filters of each convolution.
    kernel: the kernel shape.
    strides: the stride of each convolution (one entry per convolution).
    num_classes: output logits.
    ghost_batch_size: examples per batch-norm ghost batch; None: whole batch.
    dtype: compute dtype.
  """

  channels: Sequence[int]
  kernel: Sequence[int]
  strides: Sequence[int]
  num_classes: int
  ghost_batch_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if len(self.strides) != len(self.channels):
      raise ValueError("model.strides: needs one stride per entry of model.channels")
    x = x.astype(self.dtype)
    if x.ndim == len(self.kernel) + 1:  # no channel axis: add one
      x = x[..., None]
    for filters, stride in zip(self.channels, self.strides):
      x = nn.Conv(
        filters, tuple(self.kernel), (stride,) * len(self.kernel), use_bias=False, dtype=self.dtype
      )(x)
      x = GhostBatchNorm(self.ghost_batch_size, dtype=self.dtype)(x, not train)
      x = nn.relu(x)
    x = x.mean(axis=tuple(range(1, x.ndim - 1)))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class MLP(nn.Module):
  """A multilayer perceptron without normalisation (flattens its input).

  Attributes:
    features: width of each hidden layer.
    num_classes: output logits.
    dtype: compute dtype.
  """

  features: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # no batch norm, no dropout: training and evaluation agree
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.features:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
