"""A run read back from its workdir, for the commands that measure what it saved.

Every checkpoint and snapshot carries the config it was trained with in its
record, so `bigbatch ensemble` and `bigbatch sharpness` need only the workdir:
the dataset, the model and the mesh are built from that config as the trainer
built them, the arrays are restored onto the mesh (checked against the
checksums saved with them), and nothing is written into the workdir.

The mesh takes every device given (all by default) with the config's `fsdp`
split: a measurement does not have to run on the devices that trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bigbatch import config as bbconfig
from bigbatch import data
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import init_rngs


def _frozen(value: Any) -> Any:
  # JSON turned the config's tuples into lists; models are hashed (jit keys
  # on them), and a list field cannot be.
  if isinstance(value, Mapping):
    return {key: _frozen(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_frozen(item) for item in value)
  return value


def config_from_record(record: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config a checkpoint's or a snapshot's record was written with."""
  return ml_collections.ConfigDict(_frozen(record["config"]))


@dataclasses.dataclass
class Setup:
  """What a measurement needs of a run: its config, dataset, model and mesh."""

  config: ml_collections.ConfigDict
  spec: data.DatasetSpec
  model: Any
  mesh: Any

  @property
  def example_inputs(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *self.spec.input_shape), np.float32)

  @property
  def fsdp_min_size(self) -> int:
    return int((self.config.get("mesh") or {}).get("fsdp_min_size", 2**14))


def set_up(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Setup:
  """The dataset spec, model and mesh of `config`, on `devices` (default: all).

  Raises:
    ConfigError, DataError, ShardingError: naming the field.
  """
  spec = data.spec_for(config.dataset)
  model = bbconfig.model_from_config(config, spec.num_classes)
  mesh = shd.make_mesh(-1, int((config.get("mesh") or {}).get("fsdp", 1)), devices=devices)
  return Setup(config=config, spec=spec, model=model, mesh=mesh)


def state_target(setup: Setup) -> st.TrainState:
  """The train state's shapes and dtypes placed on the setup's mesh: a restore target."""
  config = setup.config
  plan = bbconfig.plan_from_config(config)
  optimizer = bbconfig.optimizer_from_config(config, plan)
  return st.abstract_train_state(
    setup.model, optimizer, setup.example_inputs, setup.mesh, fsdp_min_size=setup.fsdp_min_size
  )


def variables_target(setup: Setup) -> dict[str, Any]:
  """`{"params", "batch_stats"}` as a snapshot holds them, placed like the train state's."""
  abstract = jax.eval_shape(
    lambda: setup.model.init(init_rngs(jax.random.key(0)), _zeros(setup), train=False)
  )
  replicated = shd.replicated(setup.mesh)

  def place(leaf, sharding):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  params = jax.tree.map(
    lambda leaf: place(leaf, shd.param_sharding(leaf, setup.mesh, min_size=setup.fsdp_min_size)),
    abstract["params"],
  )
  stats = jax.tree.map(lambda leaf: place(leaf, replicated), abstract.get("batch_stats", {}))
  return {"params": params, "batch_stats": stats}


def _zeros(setup: Setup) -> jax.Array:
  inputs = setup.example_inputs
  return jax.numpy.zeros(inputs.shape, inputs.dtype)


def training_subset(setup: Setup, num_examples: int) -> dict[str, jax.Array]:
  """The first `num_examples` of the training split, unaugmented, as one sharded batch.

  The batch is padded to a multiple of the devices and `mask` marks the real
  examples, so the subset is the same on any number of devices.
  """
  devices = shd.data_parallel_size(setup.mesh)
  size = -(-num_examples // devices) * devices
  source = data.load_split(setup.config.dataset, "train")
  batches = data.eval_batches(
    source,
    setup.spec,
    batch_size=size,
    local=shd.process_batch_slice(setup.mesh, size),
    num_examples=num_examples,
  )
  (batch,) = list(batches)
  return shd.global_batch(setup.mesh, batch, size)
