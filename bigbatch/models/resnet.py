"""ResNet-50 v1.5 (ImageNet) and Wide ResNet (CIFAR), with ghost batch norm."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigbatch.models.ghost_norm import GhostBatchNorm


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(self.norm, use_running_average=not train)
    y = nn.relu(norm()(self.conv(self.filters, (1, 1))(x)))
    y = nn.relu(norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    # zero-initialised last scale: each block starts as the identity (Goyal et al.)
    y = norm(scale_init=nn.initializers.zeros)(self.conv(self.filters * 4, (1, 1))(y))
    if x.shape != y.shape:
      x = norm()(self.conv(self.filters * 4, (1, 1), self.strides, name="projection")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet v1.5 (He et al. 2016; the stride-on-3x3 variant of the MLPerf reference).

  Attributes:
    stage_sizes: bottleneck blocks per stage ((3, 4, 6, 3) for ResNet-50).
    num_classes: output logits.
    width: filters of the first stage (doubling at each stage).
    ghost_batch_size: examples per batch-norm ghost batch (None: whole batch).
    dtype: compute dtype (parameters stay float32).
  """

  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  ghost_batch_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding="SAME")
    norm = functools.partial(GhostBatchNorm, ghost_size=self.ghost_batch_size, dtype=self.dtype)
    x = conv(self.width, (7, 7), (2, 2), name="stem")(x.astype(self.dtype))
    x = nn.relu(norm()(x, use_running_average=not train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(self.width * 2**stage, strides, conv, norm)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class WideBlock(nn.Module):
  """Pre-activation basic block of a Wide ResNet (BN-ReLU-conv twice)."""

  filters: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(self.norm(use_running_average=not train)(x))
    shortcut = x
    if x.shape[-1] != self.filters or self.strides != 1:
      shortcut = self.conv(self.filters, (1, 1), self.strides, name="projection")(y)
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = nn.relu(self.norm(use_running_average=not train)(y))
    y = self.conv(self.filters, (3, 3))(y)
    return shortcut + y


class WideResNet(nn.Module):
  """Wide ResNet-`depth`-`widen` (Zagoruyko & Komodakis 2016) for 32x32 images.

  Attributes:
    depth: 6n + 4 layers (16 for WRN-16-4: two blocks per group).
    widen: width multiplier of the groups' 16, 32, 64 filters.
    num_classes: output logits.
    ghost_batch_size: examples per batch-norm ghost batch (the paper: 128).
    dtype: compute dtype.
  """

  depth: int
  widen: int
  num_classes: int
  ghost_batch_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if (self.depth - 4) % 6:
      raise ValueError(f"model.depth: must be 6n + 4, got {self.depth}")
    blocks = (self.depth - 4) // 6
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding="SAME")
    norm = functools.partial(GhostBatchNorm, ghost_size=self.ghost_batch_size, dtype=self.dtype)
    x = conv(16, (3, 3), name="stem")(x.astype(self.dtype))
    for group, filters in enumerate((16, 32, 64)):
      for block in range(blocks):
        strides = 2 if group > 0 and block == 0 else 1
        x = WideBlock(filters * self.widen, strides, conv, norm)(x, train)
    x = nn.relu(norm(use_running_average=not train)(x))
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
