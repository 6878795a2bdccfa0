"""The model checked before any long work: its steps traced, its causality probed.

A model error found in the first step comes after the plan is printed, the
data built and every phase compiled, as a traceback. So when an experiment
is built, its train step and eval step are traced abstractly
(`jax.eval_shape`, training and evaluation mode) on the first phase's batch
and the evaluation batch: nothing is compiled or allocated. Whatever the
model raises becomes one line naming `model.name` and the cause. A language
model of the user's own is then given the causal probe
(`bigbatch.models.causal`), once.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from bigbatch import data, partitioning
from bigbatch import sharding as shd
from bigbatch.models import causal, init_rngs
from bigbatch.spec import ConfigError, import_path
from bigbatch.step import losses

# a message that already names the config field it is about
_NAMES_A_FIELD = re.compile(r"^(model\.|ghost_batch_size|loss|micro_batch_size)")


def _abstract_batch(example: dict[str, Any], size: int) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct((size, *v.shape), v.dtype) for k, v in example.items()}


def _traceable(size: int, experiment: Any) -> int:
  """`size`, or where the mesh cannot split it (the command's own check says so, later)
  the smallest batch it can: the trace is about the model, not the batch."""
  ghost = experiment.spec.ghost_batch_size
  try:
    shd.check_batch_size(size, experiment.mesh, ghost_batch_size=ghost)
    return size
  except shd.ShardingError:
    return shd.data_parallel_size(experiment.mesh) * (ghost or 1) * 2


def _one_line(name: str, where: str, error: Exception) -> ConfigError:
  text = " ".join(str(error).split())
  if _NAMES_A_FIELD.match(text):
    return ConfigError(text)
  if len(text) > 400:
    text = text[:400] + " ..."
  return ConfigError(f"model.name: {name} fails in {where} ({type(error).__name__}: {text})")


def trace_steps(experiment: Any) -> None:
  """Traces the model as the train step calls it (training mode, the batch statistics
  updated, a dropout stream) on the first phase's batch, and as the eval step calls it
  on the evaluation batch, then the loss on its outputs.

  Tracing the model alone costs a fraction of tracing the whole step (the optimizer and
  the per-device gradients add nothing a model can get wrong), and the steps' own
  compile traces them again anyway.

  Raises:
    ConfigError: one line naming `model.name` (or the field) and the cause.
  """
  name = import_path(experiment.spec.model.name)
  model, dataset = experiment.model, experiment.dataset
  example = dict(data.example_batch(dataset))

  def abstract(size: int) -> tuple[jax.ShapeDtypeStruct, dict[str, jax.ShapeDtypeStruct]]:
    size = _traceable(size, experiment)
    inputs = jax.ShapeDtypeStruct((size, *dataset.input_shape), dataset.model_input_dtype)
    return inputs, _abstract_batch(example, size)

  def train(variables, inputs, batch):
    rngs = {"dropout": jax.random.key(0)}
    return model.apply(
      variables, inputs, train=True, rngs=rngs, mutable=["batch_stats"], batch=batch
    )

  def evaluate(variables, inputs, batch):
    return model.apply(variables, inputs, train=False, batch=batch)

  mesh, rules = experiment.mesh, experiment.spec.mesh.rules
  where = "init"
  try:
    inputs, _ = abstract(1)
    variables = jax.eval_shape(lambda x: model.init(init_rngs(jax.random.key(0)), x), inputs)
    variables = partitioning.unbox(variables)
    where = "training"
    jax.eval_shape(
      partitioning.traced(train, mesh, rules),
      variables,
      *abstract(experiment.plan.phases[0].batch_size),
    )
    where = "evaluation"
    inputs, batch = abstract(experiment.spec.eval.batch_size)
    outputs = jax.eval_shape(partitioning.traced(evaluate, mesh, rules), variables, inputs, batch)
  except ConfigError:
    raise
  except Exception as error:  # whatever the model raised while traced
    raise _one_line(name, where, error) from None
  try:
    losses.check(experiment.loss_fn, outputs, model.scored(batch))
  except ValueError as error:  # naming `loss`
    raise ConfigError(str(error)) from None


def probe_causality(experiment: Any) -> None:
  """The causal probe, for a language model that is not one of bigbatch's own.

  Raises:
    ConfigError: naming `model.call.targets` or `model.name` and what the probe saw.
  """
  model, dataset = experiment.model, experiment.dataset
  length = dataset.tokens_per_example
  if not length or model.builtin:
    return
  inputs = np.zeros((1, length), np.int32)
  variables = jax.jit(lambda x: model.init(init_rngs(jax.random.key(0)), x))(inputs)
  problem = causal.check(model, partitioning.unbox(variables), length, dataset.num_classes)
  if problem is not None:
    field = "model.call.targets" if "targets" in problem else "model.name"
    raise ConfigError(f"{field}: {import_path(experiment.spec.model.name)}: {problem}")
