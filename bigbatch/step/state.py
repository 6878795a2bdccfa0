"""The train state: what a step changes, made in place on the mesh or read back.

`create_train_state` initialises it directly in its shardings (parameters
where their annotations and the mesh's rules put them, or split along
`fsdp`; the rest replicated); `abstract_train_state` gives its shapes and
shardings with nothing allocated, a restore or compile target. The state
holds plain arrays: a model's annotations (`bigbatch.partitioning`) decide
where they live, and are not kept.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bigbatch import partitioning
from bigbatch import sharding as shd
from bigbatch.models import as_adapter, init_rngs
from bigbatch.optim import state_shardings
from bigbatch.step import gradients as gn
from bigbatch.step.compiled import abstract_state


class TrainState(flax.struct.PyTreeNode):
  """Everything a train step changes: one small pytree, `step` its clock.

  Attributes:
    step: updates done so far (int32).
    params: the model's parameters (float32 whatever the compute dtype).
    batch_stats: batch-norm running averages ({} for a model without).
    opt_state: the optimizer's state.
    noise: the smoothed gradient-noise estimates (`gradients.GradientNoise`;
      zeros while the noise scale is not measured).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  noise: gn.GradientNoise


# The train state's layout in a checkpoint's record (`state_format`). 2: the
# gradient noise keeps its second moments (`gradients.GradientNoise`); a
# checkpoint without the field holds format 1, the means alone.
STATE_FORMAT = 2


def restore_train_state(checkpoints: Any, step: int, target: TrainState) -> TrainState:
  """Checkpoint `step`'s train state, placed like `target`, from any state format.

  A format-1 checkpoint restores as it was written and gets a fresh gradient
  noise smoothing: its means have no second moments to give them bounds, so
  the measurement starts again (within a horizon of examples) and everything
  else resumes as saved. `checkpoints` is a `checkpoint.Checkpoints`.
  """
  if checkpoints.record(step).get("state_format", 1) >= STATE_FORMAT:
    return checkpoints.restore(step, target)
  noise = target.noise
  legacy = target.replace(noise=gn.GradientNoiseFormat1(noise.sq_norm, noise.trace, noise.weight))
  state = checkpoints.restore(step, legacy)
  shardings = jax.tree.map(lambda leaf: leaf.sharding, noise)
  return state.replace(noise=jax.device_put(gn.GradientNoise.zeros(), shardings))


def init_train_state(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  example_inputs: jax.ShapeDtypeStruct,
  rng: jax.Array,
) -> TrainState:
  """A fresh train state (pure: use under `jax.eval_shape` or `jax.jit`).

  `example_inputs` gives only the input's shape and dtype.
  """
  variables = partitioning.unbox(_init_variables(model, example_inputs, rng))
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=optimizer.init(params),
    noise=gn.GradientNoise.zeros(),
  )


def _init_variables(model: Any, example_inputs: jax.ShapeDtypeStruct, rng: jax.Array) -> Any:
  """The model's variables as its `init` gives them: annotated parameters boxed."""
  inputs = jnp.zeros(example_inputs.shape, example_inputs.dtype)
  with partitioning.context(None):  # an NNX parameter is not placed as it is built
    return as_adapter(model).init(init_rngs(rng), inputs, train=False)


def train_state_shardings(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  example_inputs: jax.ShapeDtypeStruct,
  mesh: Mesh,
  *,
  fsdp_min_size: int = 2**14,
  rules: Any = partitioning.DEFAULT_RULES,
) -> TrainState:
  """Where each leaf of the train state lives, derived from `jax.eval_shape` of init.

  A parameter its model annotates lives where its logical axis names and
  `rules` put it; the others follow `sharding.param_sharding` (replicated, or
  split along `fsdp`) (`partitioning.placed`). Each optimizer moment is
  sharded as its parameter; the step, batch-norm statistics and scalars are
  replicated.
  """
  boxed = jax.eval_shape(lambda: _init_variables(model, example_inputs, jax.random.key(0)))
  variables = partitioning.placed(boxed, mesh, rules, min_size=fsdp_min_size)
  params, replicated = variables["params"], shd.replicated(mesh)
  return TrainState(
    step=replicated,
    params=jax.tree.map(lambda leaf: leaf.sharding, params),
    batch_stats=jax.tree.map(lambda leaf: leaf.sharding, variables.get("batch_stats", {})),
    opt_state=state_shardings(optimizer, params),
    noise=jax.tree.map(lambda _: replicated, jax.eval_shape(gn.GradientNoise.zeros)),
  )


def abstract_train_state(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  example_inputs: jax.ShapeDtypeStruct,
  mesh: Mesh,
  *,
  fsdp_min_size: int = 2**14,
  rules: Any = partitioning.DEFAULT_RULES,
) -> TrainState:
  """A fresh train state's shapes, dtypes and shardings, nothing allocated (a restore target)."""
  shardings = train_state_shardings(
    model, optimizer, example_inputs, mesh, fsdp_min_size=fsdp_min_size, rules=rules
  )
  init = lambda: init_train_state(model, optimizer, example_inputs, jax.random.key(0))  # noqa: E731
  return abstract_state(shardings, jax.eval_shape(init))


def create_train_state(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  example_inputs: jax.ShapeDtypeStruct,
  mesh: Mesh,
  *,
  seed: int = 0,
  fsdp_min_size: int = 2**14,
  rules: Any = partitioning.DEFAULT_RULES,
) -> TrainState:
  """Initialises the train state directly in place on `mesh` (no host copy).

  `example_inputs` is the shape and dtype of the model's input, e.g.
  `jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)`; `seed` seeds the
  parameters; `fsdp_min_size` is the smallest unannotated parameter split along
  `fsdp`; `rules` map an annotated parameter's logical axis names to mesh axes
  (`bigbatch.partitioning`).
  """
  shardings = train_state_shardings(
    model, optimizer, example_inputs, mesh, fsdp_min_size=fsdp_min_size, rules=rules
  )
  init = jax.jit(
    lambda rng: init_train_state(model, optimizer, example_inputs, rng), out_shardings=shardings
  )
  return init(jax.random.key(seed))
