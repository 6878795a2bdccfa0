"""What a trainer reads from, and needs to place, an optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding
from optax.transforms import MaskedNode

# The hyperparameters that a plan's momentum feeds, by their names in each optimizer.
_MOMENTUM_NAMES = ("b1", "beta")


def _inject_states(opt_state: Any) -> list[optax.InjectStatefulHyperparamsState]:
  def is_inject(node):
    return isinstance(node, optax.InjectStatefulHyperparamsState)

  return [node for node in jax.tree.leaves(opt_state, is_leaf=is_inject) if is_inject(node)]


def current_hyperparams(opt_state: Any) -> dict[str, jax.Array]:
  """The learning rate and momentum an optimizer used at its last update.

  Works on the state of any bigbatch optimizer (or any
  `optax.inject_hyperparams` one), also inside `optax.chain` or other
  wrappers; the first such state found wins. Adam's `b1` and
  PowerSign/AddSign's `beta` are reported as `momentum` (a plan's momentum
  feeds them), so a trainer logs one key whatever the optimizer. Before the
  first update the values are those of step 0.

  Returns:
    A dict with `learning_rate` and `momentum` (and `weight_decay` where the
    optimizer has it); hyperparameters the state does not hold are left out.
  """
  found: dict[str, jax.Array] = {}
  for state in _inject_states(opt_state):
    for key, value in state.hyperparams.items():
      found.setdefault("momentum" if key in _MOMENTUM_NAMES else key, value)
    if found:
      break
  return found


def set_hyperparams(opt_state: Any, **values: float) -> Any:
  """`opt_state` with hyperparameters (`learning_rate`, ...) of its first
  `inject_hyperparams` state replaced, each placed and typed as the value it replaces.

  The optimizer must hold them as numbers, not schedules (a schedule would
  overwrite them at the next update).
  """
  done = []

  def replace(node):
    if not isinstance(node, optax.InjectStatefulHyperparamsState) or done:
      return node
    done.append(True)
    hyper = dict(node.hyperparams)
    for key, value in values.items():
      if key not in hyper:
        raise KeyError(f"{key}: not a hyperparameter of this optimizer ({', '.join(hyper)})")
      old = hyper[key]
      hyper[key] = jax.device_put(jax.numpy.asarray(value, old.dtype), old.sharding)
    return node._replace(hyperparams=hyper)

  is_inject = lambda node: isinstance(node, optax.InjectStatefulHyperparamsState)  # noqa: E731
  return jax.tree.map(replace, opt_state, is_leaf=is_inject)


def state_shardings(optimizer: optax.GradientTransformation, params: Any) -> Any:
  """Shardings for `optimizer.init(params)`: each moment sharded as its parameter.

  `jax.jit(optimizer.init)` alone leaves moments that start at zero on one
  device (nothing ties them to the inputs); pass this as `out_shardings`:

      shardings = state_shardings(opt, params)
      opt_state = jax.jit(opt.init, out_shardings=shardings)(params)

  Args:
    optimizer: any optax transformation.
    params: the parameters, placed (arrays with `NamedSharding`s) or abstract
      (`jax.ShapeDtypeStruct`s with a `sharding`).

  Returns:
    A pytree of `Sharding`s with the structure of the optimizer state; leaves
    that are not per-parameter (counts, hyperparameters) are replicated.
  """
  param_shardings = jax.tree.map(lambda leaf: leaf.sharding, params)
  named = [s for s in jax.tree.leaves(param_shardings) if isinstance(s, NamedSharding)]
  if named:
    replicated: Sharding = NamedSharding(named[0].mesh, PartitionSpec())
  else:
    replicated = jax.tree.leaves(param_shardings)[0]
  abstract = jax.eval_shape(optimizer.init, params)
  # a partitioned optimizer (`optax.partition`: Muon's matrices and the rest) keeps a
  # moment per parameter with `MaskedNode`s where the other part's leaves are
  is_masked = lambda node: isinstance(node, MaskedNode)  # noqa: E731
  return optax.tree_map_params(
    optimizer,
    lambda value, sharding: value if is_masked(value) else sharding,
    abstract,
    param_shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=is_masked,
  )
