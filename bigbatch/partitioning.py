"""A model's own sharding annotations, mapped onto the mesh by rules.

A parameter may name each of its axes: a linen model writes the names with
`nn.with_logical_partitioning(init, ("embed", "mlp"))`, an NNX model in its
`nnx.Param`'s `sharding` metadata (flax's `ToLinen`, through which bigbatch
runs an NNX model, hands both over as boxes around the initial values).
Rules map each logical name to mesh axes, as flax's and MaxText's
`logical_axis_rules` do: a sequence of `(logical name, mesh axis | tuple of
mesh axes | None)`, read in order, where the first rule of a name whose mesh
axes are still free on that parameter wins. A name that no rule maps, but
that is itself a mesh axis (`nn.with_partitioning(init, (None, "tensor"))`),
is that axis; any other is not split. A dimension that its mesh axes do not
divide is not split either, and a rule's mesh axis that the mesh lacks (a
`tensor` rule on a mesh built by hand without one) is left out. A parameter
its model does not annotate keeps `sharding.param_sharding`'s rule.

The train state holds plain arrays (`unbox`); `placed` turns the abstract
boxed variables of a model's `init` into plain abstract ones placed on the
mesh, which is where the train state's, a restore target's and a snapshot's
shardings come from.

Activations: a model may also constrain its activations by logical names
(`nn.with_logical_constraint`), which flax reads from a context. `traced`
enters that context (the rules and the mesh) inside the traced function,
since the step may be traced on a background compile thread, where a
context entered by its caller would not be. Inside `jax.shard_map`, a
constraint may name only the axes left automatic, so `manual(axes)` takes
the manual ones out of the rules.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from flax.core import meta
from flax.core import spmd as flax_spmd
from flax.nnx.bridge.variables import NNXMeta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bigbatch import sharding as shd

__all__ = [
  "DEFAULT_RULES",
  "check_rules",
  "context",
  "logical_names",
  "manual",
  "mesh_rules",
  "placed",
  "traced",
  "unbox",
]

Rules = tuple[tuple[str, Any], ...]

# Names as flax's lm1b example and MaxText's base config use them: parameters by
# what their axes hold, activations by `activation_*`. A layer is split over
# `tensor` along its heads, hidden units and vocabulary (Megatron's split: each
# device computes whole heads and a slice of the MLP); parameters are also split
# along the model width over `fsdp`; the batch goes over `data` and `fsdp`.
DEFAULT_RULES: Rules = (
  ("batch", (shd.DATA, shd.FSDP)),
  ("activation_batch", (shd.DATA, shd.FSDP)),
  ("length", None),
  ("activation_length", None),
  ("vocab", shd.TENSOR),
  ("activation_vocab", shd.TENSOR),
  ("embed", shd.FSDP),
  ("activation_embed", None),
  ("mlp", shd.TENSOR),
  ("activation_mlp", shd.TENSOR),
  ("heads", shd.TENSOR),
  ("activation_heads", shd.TENSOR),
  ("kv", None),
  ("activation_kv", None),
  ("joined_kv", shd.TENSOR),
  ("norm", None),
)


def check_rules(rules: Any, field: str = "mesh.rules") -> Rules:
  """`rules` as a tuple of `(name, None | axis | tuple of axes)` pairs.

  Args:
    rules: a sequence of pairs, each a logical name and the mesh axes it maps
      to (a list where a config or a record gives one).
    field: the config field named in errors.

  Raises:
    ShardingError: naming `field`, for a rule that is not such a pair or names
      an axis the mesh does not have.
  """
  example = "e.g. (('embed', 'fsdp'), ('mlp', 'tensor'))"
  if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
    raise shd.ShardingError(
      f"{field}: must be a sequence of (logical name, mesh axes) pairs, {example}; got {rules!r}"
    )
  checked = []
  for number, rule in enumerate(rules, 1):
    pair = not isinstance(rule, str) and isinstance(rule, Sequence) and len(rule) == 2
    if not pair or not isinstance(rule[0], str) or not rule[0]:
      raise shd.ShardingError(
        f"{field}: rule {number} {rule!r} is not a (logical name, mesh axes) pair, {example}"
      )
    name, target = rule
    axes = (target,) if target is None or isinstance(target, str) else target
    if not isinstance(axes, Sequence) or not all(
      axis is None or axis in shd.MESH_AXES for axis in axes
    ):
      raise shd.ShardingError(
        f"{field}: rule {number} maps {name!r} to {target!r}; the mesh axes are "
        f"{', '.join(shd.MESH_AXES)} (a tuple of them, or None: not split)"
      )
    if isinstance(target, str) or target is None:
      checked.append((name, target))
    else:
      kept = tuple(axis for axis in target if axis is not None)
      checked.append((name, kept or None))
  return tuple(checked)


def mesh_rules(mesh: Mesh, rules: Sequence = DEFAULT_RULES) -> Rules:
  """`rules` as flax reads them on `mesh`: each rule's axes that `mesh` lacks left out
  (a rule left with none is dropped), then each mesh axis as a name of its own."""
  have = set(mesh.axis_names)
  out = []
  for name, target in check_rules(rules):
    if target is None or target in have:
      out.append((name, target))
    elif isinstance(target, tuple):
      kept = tuple(axis for axis in target if axis in have)
      if kept:
        out.append((name, kept))
  return (*out, *((axis, axis) for axis in mesh.axis_names))


def _is_box(x: Any) -> bool:
  return isinstance(x, meta.AxisMetadata)


def unbox(tree: Any) -> Any:
  """`tree` with every box (`nn.LogicallyPartitioned`, an NNX variable's metadata) replaced
  by the value it holds; nothing is constrained, whatever mesh is in context."""

  def value(x):
    if isinstance(x, meta.Partitioned):
      return x.unbox(apply_constraint=False)
    return x.unbox() if _is_box(x) else x

  return jax.tree.map(value, tree, is_leaf=_is_box)


def logical_names(leaf: Any) -> tuple | None:
  """The names a parameter's box gives its axes; None where it is not annotated."""
  if isinstance(leaf, meta.Partitioned):
    return tuple(leaf.names)
  if isinstance(leaf, NNXMeta):
    names = leaf.metadata.get("out_sharding")
    if isinstance(names, NamedSharding):
      names = names.spec
    return tuple(names) if names else None
  return None


def _annotated_spec(path: str, shape: tuple, names: tuple, mesh: Mesh, rules: Rules):
  if len(names) > len(shape):
    raise shd.ShardingError(
      f"model: {path} has {len(shape)} axes {shape} but its annotation names {len(names)}: {names}"
    )
  # Fewer names than axes name the leading ones, as a PartitionSpec does: flax's
  # DenseGeneral (attention's kernels) initialises a flat (in, out) kernel under the
  # annotation and reshapes it to (in, heads, head_dim), and lm1b names it ('embed', 'kv').
  names = tuple(names) + (None,) * (len(shape) - len(names))
  try:
    spec = nn.logical_to_mesh_axes(names, rules)
  except ValueError as error:  # a name given to two axes
    raise shd.ShardingError(f"model: {path}: {error}") from None
  parts = []
  for size, axes in zip(shape, spec):
    across = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    devices = math.prod(mesh.shape[axis] for axis in across)
    # an uneven split would need padding that the state's arrays cannot hold
    parts.append(axes if across and size % devices == 0 else None)
  return PartitionSpec(*parts)


def placed(
  variables: Any, mesh: Mesh, rules: Sequence = DEFAULT_RULES, *, min_size: int = 2**14
) -> dict[str, Any]:
  """A model's variables as plain `jax.ShapeDtypeStruct`s placed on `mesh`.

  Args:
    variables: what `jax.eval_shape` of a flax `init` gives, boxes and all.
    mesh: the device mesh.
    rules: logical name -> mesh axes (see the module's docstring).
    min_size: the smallest unannotated parameter split along `fsdp`.

  Returns:
    `variables` unboxed, each leaf a `jax.ShapeDtypeStruct` with its sharding:
    an annotated parameter's from its names and the rules, an unannotated one's
    from `sharding.param_sharding`; every other collection (`batch_stats`)
    replicated.

  Raises:
    ShardingError: for an annotation that does not fit its parameter.
  """
  rules = mesh_rules(mesh, rules)
  replicated = shd.replicated(mesh)

  def param(path, leaf):
    names, value = logical_names(leaf), unbox(leaf)
    if names is None:
      sharding = shd.param_sharding(value, mesh, min_size=min_size)
    else:
      where = "params/" + jax.tree_util.keystr(path, simple=True, separator="/")
      sharding = NamedSharding(mesh, _annotated_spec(where, value.shape, names, mesh, rules))
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)

  out = {}
  for collection, tree in variables.items():
    if collection == "params":
      out[collection] = jax.tree_util.tree_map_with_path(param, tree, is_leaf=_is_box)
    else:
      out[collection] = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), unbox(tree)
      )
  return out


@contextlib.contextmanager
def context(mesh: Mesh | None, rules: Sequence = DEFAULT_RULES) -> Iterator[None]:
  """What a model's annotations need while it is traced: `mesh` (abstract: nothing is
  placed) and the rules for `nn.with_logical_constraint`, and NNX variables built
  without placing themselves (bigbatch places the state; an NNX module is built
  afresh at every call). With `mesh` None, only the last."""
  with contextlib.ExitStack() as stack:
    stack.enter_context(nnx.use_eager_sharding(False))
    if mesh is not None:
      stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
      stack.enter_context(nn.logical_axis_rules(mesh_rules(mesh, rules)))
    yield


def traced(fn: Callable, mesh: Mesh, rules: Sequence = DEFAULT_RULES) -> Callable:
  """`fn` entering `context(mesh, rules)` each time it runs, so inside any trace of it."""
  rules = check_rules(rules)

  @functools.wraps(fn)
  def within(*args, **kwargs):
    with context(mesh, rules):
      return fn(*args, **kwargs)

  return within


@contextlib.contextmanager
def manual(axes: Sequence[str]) -> Iterator[None]:
  """The rules in context without the mesh axes `axes` (those a `jax.shard_map` makes
  manual): inside, the batch is each group's own, split over the axes left automatic."""
  current = flax_spmd.get_logical_axis_rules()
  if not current:
    yield
    return
  out = []
  for name, target in current:
    across = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    kept = tuple(axis for axis in across if axis not in axes)
    out.append((name, kept or None))
  with nn.logical_axis_rules(tuple(out)):
    yield
