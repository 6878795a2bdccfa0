"""Which array of the train state went non-finite first.

A checkpoint is only as good as every array it saves. The loss and the
parameters' norm can stay finite for dozens of steps while a batch-norm
variance or a noise accumulator has already overflowed, and a run resumed
from such a checkpoint resumes from garbage. So the trainer's step reduces
every floating array of the new state to one flag each, and returns the index
of the first that holds a NaN or an infinity (-1: none) beside its metrics
(`steps.packed_metrics`): one number fetched with the metrics vector it
already fetches, and a checkpoint is saved only after its step's index has
been read as -1. `leaf_names` turns the index back into the array's path.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["first_nonfinite", "leaf_names", "nonfinite_leaf", "path_name"]


def _floating(leaf: Any) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def path_name(path: tuple) -> str:
  """A pytree path as `params/Conv_0/kernel` (attribute, key or index, joined by /)."""
  parts = []
  for key in path:
    for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def leaf_names(tree: Any) -> list[str]:
  """The paths of `tree`'s floating arrays (`params/Dense_0/kernel`), in the order that
  `first_nonfinite` counts them."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_name(path) for path, leaf in flat if _floating(leaf)]


def first_nonfinite(tree: Any) -> jax.Array:
  """The index (in `leaf_names` order) of the first floating array of `tree` holding a NaN
  or an infinity, as int32; -1 when every one is finite.

  Traceable: one boolean reduction per array, which XLA fuses with the
  computation that produced the array where it can.
  """
  leaves = [leaf for leaf in jax.tree.leaves(tree) if _floating(leaf)]
  if not leaves:
    return jnp.asarray(-1, jnp.int32)
  bad = jnp.stack([jnp.logical_not(jnp.all(jnp.isfinite(leaf))) for leaf in leaves])
  return jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32)


def nonfinite_leaf(tree: Any) -> tuple[str, int, int] | None:
  """The first non-finite floating array of a (concrete) `tree`: its path, how many of its
  elements are not finite, and its size; None when every array is finite."""
  index = int(jax.device_get(jax.jit(first_nonfinite)(tree)))
  if index < 0:
    return None
  leaf = [leaf for leaf in jax.tree.leaves(tree) if _floating(leaf)][index]
  # counted on the devices: on several hosts no one process holds the whole array
  count = jax.jit(lambda x: jnp.sum(jnp.logical_not(jnp.isfinite(x)), dtype=jnp.int32))(leaf)
  return leaf_names(tree)[index], int(jax.device_get(count)), int(leaf.size)
