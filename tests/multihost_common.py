"""The run that test_multihost.py does in one process and in two."""

import socket

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bigbatch import optim, sharding, step
from bigbatch.models import create_model

BATCH_SIZES = (16, 16, 32, 32)


def free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def make_batch(batch_size, seed):
  rng = np.random.default_rng(seed)
  return {
    "inputs": rng.normal(size=(batch_size, 6, 6, 3)).astype(np.float32),
    "labels": rng.integers(0, 10, batch_size).astype(np.int32),
  }


def train(mesh, batch_sizes):
  """Trains tiny_cnn (ghost batch 2) with Adam; returns flat float64 params and stats."""
  model = create_model("tiny_cnn", num_classes=10, ghost_batch_size=2)
  optimizer = optim.adam(1e-2)
  inputs = jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32)
  state = step.create_train_state(model, optimizer, inputs, mesh)
  example = {
    "inputs": jax.ShapeDtypeStruct((6, 6, 3), jnp.float32),
    "labels": jax.ShapeDtypeStruct((), jnp.int32),
  }
  steps = step.CompiledSteps(
    step.make_train_step(model, optimizer), state, example, mesh, ghost_batch_size=2
  )
  for i, batch_size in enumerate(batch_sizes):
    whole = make_batch(batch_size, i)
    mine = sharding.process_batch_slice(mesh, batch_size)  # this process's examples only
    local = {key: value[mine] for key, value in whole.items()}
    state, _ = steps(state, sharding.global_batch(mesh, local, batch_size))
  # replicated leaves: this process's first shard holds the whole value
  host = jax.tree.map(lambda leaf: np.asarray(leaf.addressable_shards[0].data), state)
  flat = traverse_util.flatten_dict({"params": host.params, "batch_stats": host.batch_stats})
  return {"/".join(key): value for key, value in flat.items()}
