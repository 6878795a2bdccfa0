"""The config layer: a recipe's `ml_collections.ConfigDict`, read once into a `RunSpec`.

Configs are Python files with `get_config()` (the shipped recipes are in
`bigbatch/recipes/`; `bigbatch.recipe` has the blocks they are built from).
`read` turns one into the typed `bigbatch.spec.RunSpec`, every mistake a
`ConfigError` whose one-line message names the field and what is allowed,
before any long work starts. Below this layer nothing sees the ConfigDict:
`bigbatch.train.experiment.Experiment` is built from the spec, and each piece gets
its own block.

The `*_from_config` functions read a config and build one piece of it, for
scripts and tests that want that piece alone.
"""

from __future__ import annotations

import types
from typing import Any

import flax.linen as nn
import numpy as np
import optax
from jax.sharding import Mesh

from bigbatch.models import ModelAdapter
from bigbatch.plan.phases import Plan

# The blocks recipes are built from, and the config's error, where recipes and
# callers have always imported them.
from bigbatch.recipe import (  # noqa: F401  (re-exported)
  OPTIMIZER_VARIANTS,
  ConfigError,
  default_distributed_config,
  default_elastic_config,
  default_memory_config,
  default_mesh_config,
  default_noise_config,
  default_plan_config,
  default_schedule_config,
  load_sibling,
  optimizer_config,
  set_run_fields,
  with_optimizer_variant,
)
from bigbatch.schedules import Schedule
from bigbatch.spec import RunSpec
from bigbatch.train import build
from bigbatch.train.build import whole_batch_norm  # noqa: F401  (re-exported)
from bigbatch.train.experiment import Experiment


def read(config: Any) -> RunSpec:
  """The typed spec of `config` (a ConfigDict, or a record's nested dict).

  Raises:
    ConfigError: naming the first field that is unknown, missing, or out of range.
  """
  return RunSpec.read(config)


def experiment_from_config(config: Any, **options: Any) -> Experiment:
  """`Experiment.from_spec(read(config), **options)`."""
  return Experiment.from_spec(read(config), **options)


def momentum_of(config: Any) -> float:
  """The optimizer's momentum: `momentum` for SGD and LARS, `b1` for the Adam family, LAMB
  and Lion, `beta` for PowerSign, AddSign and Muon, a factory's momentum-like argument."""
  return read(config).optimizer.momentum


def schedule_from_config(config: Any) -> Schedule:
  """The baseline learning-rate schedule of `config.schedule`."""
  return build.schedule_of(read(config))


def plan_from_config(config: Any) -> Plan:
  """The phase plan of a config.

  Raises:
    ConfigError: naming the config field, for any value the planner refuses.
  """
  return build.plan_of(read(config))


def optimizer_from_config(config: Any, plan: Plan) -> optax.GradientTransformationExtraArgs:
  """The config's optimizer, its learning rate, momentum and decay following `plan`."""
  return build.optimizer_of(read(config), plan)


def model_from_config(config: Any, num_classes: int) -> ModelAdapter:
  """The config's `model`, with its `ghost_batch_size` and `compute_dtype`, as bigbatch
  calls it (`bigbatch.models.ModelAdapter`: `init` and `apply` as a linen module's)."""
  return build.model_of(read(config), num_classes)


def loss_from_config(config: Any, model: ModelAdapter, dataset: Any):
  """The config's `loss`, checked on the model's outputs (`build.loss_of`)."""
  return build.loss_of(read(config), model, dataset)


def check_plan_on_mesh(config: Any, plan: Plan, mesh: Mesh) -> None:
  """Refuses a plan whose batches the mesh cannot split (`build.check_plan_on_mesh`)."""
  build.check_plan_on_mesh(read(config), plan, mesh)


def train_step_from_config(
  config: Any,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  plan: Plan,
  mesh: Mesh,
  *,
  input_shape: tuple[int, ...],
  normalisation: Any = None,
) -> tuple[Any, bool]:
  """The config's train step on `mesh`, and whether it measures the noise scale."""
  dataset = types.SimpleNamespace(
    input_shape=input_shape,
    device_normalisation=normalisation,
    model_input_dtype=np.dtype(np.float32),
    bytes_per_token=None,
  )
  step = build.train_step_of(read(config), model, optimizer, plan, mesh, dataset)
  return step.fn, step.measures_noise
