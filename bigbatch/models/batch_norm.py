"""Flax's own BatchNorm as its author meant it: over the axis it names, or a ghost batch.

A model written for `pmap` names the devices' axis in its batch norm
(`nn.BatchNorm(axis_name="batch")`, as flax's ImageNet example does): every
device normalises with statistics averaged over all devices, or over groups
of them (`axis_index_groups`). bigbatch's step is one program over the global
batch, where no such axis exists, so calling the model as written fails with
an unbound axis name. While the step calls a model, flax's `BatchNorm` (linen
and NNX) is therefore intercepted and takes the statistics its author meant
directly on the global batch:

- a named axis without groups: the whole batch;
- `axis_index_groups` naming R replicas: the batch split in R equal
  contiguous blocks, as pmap splits it over R devices, each group's blocks
  normalised together;
- the config's `ghost_batch_size`, on any flax BatchNorm: ghost batches of that
  many consecutive examples (`GhostBatchNorm`'s statistics).

What the statistics are thus depends on the global batch alone, never on
how many devices compute it. The running averages follow the mean of the
groups' statistics: what a pmap user's cross-replica mean of the batch
statistics gives. Evaluation (running averages) and a batch norm that names
no axis, without a ghost batch, are left exactly as flax computes them.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax


@dataclasses.dataclass(frozen=True)
class Grouping:
  """The examples a batch norm's statistics are taken over: `blocks` equal contiguous
  blocks of the batch, block r in group `member[r]`."""

  blocks: int
  member: tuple[int, ...]

  @property
  def matrix(self) -> np.ndarray:
    """[groups, blocks]: 1 where the block belongs to the group."""
    groups = max(self.member) + 1
    return np.eye(groups, dtype=np.float32)[:, list(self.member)]


def grouping(batch: int, ghost: int | None, axis_name, axis_index_groups) -> Grouping | None:
  """How a flax BatchNorm with `axis_name` and `axis_index_groups` normalises a batch of
  `batch` examples here (None: as flax does, untouched).

  Raises:
    ValueError: a batch that is not whole ghost batches or blocks, or groups that are
      not a partition of the replicas into equal groups.
  """
  if ghost:
    if batch % ghost:
      raise ValueError(
        f"ghost_batch_size: the batch ({batch} examples here) must be a multiple of the "
        f"ghost batch {ghost}"
      )
    return Grouping(batch // ghost, tuple(range(batch // ghost)))
  if axis_name is None:
    return None
  if axis_index_groups is None:
    return Grouping(1, (0,))
  groups = [list(g) for g in axis_index_groups]
  replicas = sorted(i for g in groups for i in g)
  if replicas != list(range(len(replicas))) or len({len(g) for g in groups}) != 1:
    raise ValueError(
      f"axis_index_groups: {groups} is not a partition of replicas 0..N-1 into equal groups"
    )
  if batch % len(replicas):
    raise ValueError(
      f"axis_index_groups: the batch ({batch} examples) does not split over the "
      f"{len(replicas)} replicas the groups name"
    )
  member = [0] * len(replicas)
  for index, group in enumerate(groups):
    for replica in group:
      member[replica] = index
  return Grouping(len(replicas), tuple(member))


def _feature_last(x, axis) -> tuple[jnp.ndarray, int]:
  """`x` with its one feature axis moved last, and where it was."""
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  if len(axes) != 1:
    raise ValueError(f"BatchNorm: axis={axis!r}; a ghost or grouped batch norm takes one axis")
  where = axes[0] % x.ndim
  if where == 0:
    raise ValueError("BatchNorm: axis=0 is the batch; the statistics reduce over it")
  return jnp.moveaxis(x, where, -1), where


def normalise(x, axis, grouping_: Grouping, epsilon: float):
  """`x` normalised by its groups' statistics (float32), and the mean of the groups'
  means and (biased) variances, for the running averages."""
  moved, where = _feature_last(x.astype(jnp.float32), axis)
  blocks = moved.reshape((grouping_.blocks, -1) + moved.shape[1:])
  within = tuple(range(1, blocks.ndim - 1))
  matrix = jnp.asarray(grouping_.matrix)
  count = np.prod([blocks.shape[i] for i in within]) * matrix.sum(1)[:, None]

  def per_block(sums):  # each block gets its group's statistic
    return (matrix.T @ ((matrix @ sums) / count)).reshape(
      (grouping_.blocks,) + (1,) * len(within) + sums.shape[-1:]
    )

  mean = per_block(blocks.sum(within))
  centred = blocks - mean
  var = per_block(jnp.square(centred).sum(within))
  y = (centred * lax.rsqrt(var + epsilon)).reshape(moved.shape)
  group_mean = (matrix @ blocks.sum(within)) / count
  group_var = (matrix @ jnp.square(centred).sum(within)) / count
  return jnp.moveaxis(y, -1, where), group_mean.mean(0), group_var.mean(0)


def _affine(y, scale, bias, where: int, dtype):
  shape = [1] * y.ndim
  shape[where] = -1
  if scale is not None:
    y = y * jnp.reshape(scale, shape)
  if bias is not None:
    y = y + jnp.reshape(bias, shape)
  return y.astype(dtype)


def _linen_batch_norm(module: nn.BatchNorm, grouping_: Grouping, x):
  """flax.linen.BatchNorm's training call with `grouping_`'s statistics: the same
  variables, initialisers and running-average update."""
  reduce_f32 = module.force_float32_reductions
  stat_dtype = jnp.float32 if reduce_f32 else module.param_dtype
  moved_shape = (x.shape[module.axis if isinstance(module.axis, int) else module.axis[0]],)
  ra_mean = module.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stat_dtype), moved_shape)
  ra_var = module.variable("batch_stats", "var", lambda s: jnp.ones(s, stat_dtype), moved_shape)
  y, mean, var = normalise(x, module.axis, grouping_, module.epsilon)
  ra_mean.value = module.momentum * ra_mean.value + (1 - module.momentum) * mean
  ra_var.value = module.momentum * ra_var.value + (1 - module.momentum) * var
  scale = (
    module.param("scale", module.scale_init, moved_shape, module.param_dtype)
    if module.use_scale
    else None
  )
  bias = (
    module.param("bias", module.bias_init, moved_shape, module.param_dtype)
    if module.use_bias
    else None
  )
  _, where = _feature_last(x, module.axis)
  return _affine(y, scale, bias, where, module.dtype or jnp.result_type(x, module.param_dtype))


def linen_interceptor(ghost: int | None):
  """A `flax.linen.intercept_methods` interceptor giving every linen BatchNorm's training
  call the statistics `grouping` chooses (see the module's docstring)."""

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.BatchNorm) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    x, *rest = args
    use_running = nn.merge_param(
      "use_running_average",
      module.use_running_average,
      rest[0] if rest else kwargs.get("use_running_average"),
    )
    if use_running or module.is_initializing():  # flax reads no axis then
      return next_fun(*args, **kwargs)
    choice = grouping(x.shape[0], ghost, module.axis_name, module.axis_index_groups)
    if choice is None:  # an axis-free norm without a ghost batch: flax's own
      return next_fun(*args, **kwargs)
    if kwargs.get("mask") is not None:
      raise ValueError("BatchNorm: a mask= call cannot be normalised over groups or ghost batches")
    return _linen_batch_norm(module, choice, x)

  return interceptor


@functools.cache
def _nnx_class(ghost: int | None) -> type:
  """An `nnx.BatchNorm` whose training call takes `grouping`'s statistics."""

  class IntendedBatchNorm(nnx.BatchNorm):
    def __call__(self, x, use_running_average=None, *, mask=None):
      use_running = (
        use_running_average if use_running_average is not None else self.use_running_average
      )
      if use_running:
        return super().__call__(x, use_running_average, mask=mask)
      choice = grouping(x.shape[0], ghost, self.axis_name, self.axis_index_groups)
      if choice is None:
        return super().__call__(x, use_running_average, mask=mask)
      if mask is not None:
        raise ValueError(
          "BatchNorm: a mask= call cannot be normalised over groups or ghost batches"
        )
      y, mean, var = normalise(x, self.axis, choice, self.epsilon)
      self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
      self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
      scale = self.scale[...] if self.scale is not None else None
      bias = self.bias[...] if self.bias is not None else None
      _, where = _feature_last(x, self.axis)
      return _affine(y, scale, bias, where, self.dtype or jnp.result_type(x, self.param_dtype))

  return IntendedBatchNorm


def intercept_nnx(module: nnx.Module, ghost: int | None) -> None:
  """Makes every `nnx.BatchNorm` in `module` (rebuilt for each call, so nothing outlasts
  it) take `grouping`'s statistics in its training calls."""
  for _, sub in nnx.iter_modules(module):
    if type(sub) is nnx.BatchNorm and (ghost or sub.axis_name is not None):
      sub.__class__ = _nnx_class(ghost)
