"""Global-norm gradient clipping that counts what it clipped.

The update is `optax.clip_by_global_norm`'s, bit for bit (it is called):
`g <- g * max_norm / ||g||` where `||g|| > max_norm`. A trainer wants to see
how often that happens, and only sees the steps it logs, so the state keeps
two counts, the updates and the clipped ones; `clip_metrics` reads from them
whether the last update was clipped and the fraction clipped since the start.
The gradient's norm itself is the step's `grad_norm` (taken before clipping).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ClipState(NamedTuple):
  """The updates so far and how many of them were clipped (int32 each)."""

  count: jax.Array
  clipped: jax.Array
  last_clipped: jax.Array  # 1 if the last update was clipped, else 0


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm(max_norm)`, counting the updates it clipped.

  Args:
    max_norm: the largest global norm an update keeps (> 0).

  Raises:
    ValueError: for a `max_norm` that is not positive.
  """
  if not max_norm > 0:
    raise ValueError(f"clip_norm: must be positive, got {max_norm}")
  inner = optax.clip_by_global_norm(max_norm)

  def init_fn(params):
    del params
    zero = jnp.zeros([], jnp.int32)
    return ClipState(count=zero, clipped=zero, last_clipped=zero)

  def update_fn(updates, state, params=None):
    # optax clips where the norm is not below max_norm (`select(norm < max_norm, ...)`)
    clipped = (optax.tree.norm(updates) >= max_norm).astype(jnp.int32)
    updates, _ = inner.update(updates, optax.EmptyState(), params)
    return updates, ClipState(
      count=optax.safe_increment(state.count),
      clipped=state.clipped + clipped,
      last_clipped=clipped,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def clip_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """`clipped` (the last update: 1 or 0) and `clipped_fraction` (of every update so far)
  from the first `ClipState` in `opt_state`; {} where there is none."""
  is_clip = lambda node: isinstance(node, ClipState)  # noqa: E731
  for node in jax.tree.leaves(opt_state, is_leaf=is_clip):
    if is_clip(node):
      count = jnp.maximum(node.count, 1).astype(jnp.float32)
      return {
        "clipped": node.last_clipped.astype(jnp.float32),
        "clipped_fraction": node.clipped.astype(jnp.float32) / count,
      }
  return {}
