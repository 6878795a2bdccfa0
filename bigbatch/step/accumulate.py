"""Gradient accumulation: one update from k micro-batches, as from the whole batch.

Past the largest batch that fits on the devices, the batch can keep growing
if each update sums the gradients of k micro-batches (a `lax.scan`, so only
one micro-batch's activations are alive at a time).

The micro-batches are cut so that nothing moves between devices and ghost
batch norm sees exactly the ghost batches it would see without accumulation:
device d holds examples [d B/D, (d+1) B/D) of the batch, and micro-batch j
takes the j-th consecutive block of B/(D k) of them on every device. Each
micro-batch normalises its ghost batches (consecutive examples on one
device) as the whole batch would, and the running averages are updated once,
with the mean of the micro-batches' statistics, as the whole batch updates
them.

`optax.MultiSteps` accumulates across calls of the step instead (one
optimizer update every k steps); it cannot average batch-norm statistics
per update, and the plan counts one step per update, so the scan lives
inside the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp


def micro_batches(batch: Mapping[str, jax.Array], count: int, shards: int) -> dict[str, jax.Array]:
  """Reshapes a batch of B examples to `count` micro-batches of B / count.

  Args:
    batch: arrays with the examples on the leading axis, split over
      `shards` devices in contiguous blocks.
    count: micro-batches k.
    shards: devices the batch is split over (D).

  Returns:
    The arrays reshaped to (k, B/k, ...); micro-batch j holds the j-th block of
    B/(D k) examples of every device's slice, in device order.
  """

  def split(x):
    per = x.shape[0] // (shards * count)
    x = x.reshape((shards, count, per) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((count, shards * per) + x.shape[3:])

  return {key: split(value) for key, value in batch.items()}


def accumulate(
  grad_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[tuple[jax.Array, Any], Any]],
  params: Any,
  batch: Mapping[str, jax.Array],
  count: int,
  shards: int,
) -> tuple[tuple[jax.Array, Any], Any]:
  """`grad_fn` over `count` micro-batches, averaged as if over the whole batch.

  Args:
    grad_fn: `grad_fn(params, micro_batch) -> ((loss, aux), grads)` where
      `aux` is a pytree of per-micro-batch values to average (the mean loss's
      companions: correct-prediction counts, new batch-norm statistics).
    params: the parameters.
    batch: the whole batch.
    count: micro-batches k (1: one call on the whole batch).
    shards: devices the batch is split over.

  Returns:
    `((loss, aux), grads)`, each the mean over the micro-batches, which equals
    the whole batch's for equal-sized micro-batches.
  """
  if count == 1:
    return grad_fn(params, batch)
  micro = micro_batches(batch, count, shards)
  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first)
  )

  def body(total, piece):
    result = grad_fn(params, piece)
    return jax.tree.map(jnp.add, total, result), None

  total, _ = jax.lax.scan(body, zeros, micro)
  return jax.tree.map(lambda x: x / count, total)
