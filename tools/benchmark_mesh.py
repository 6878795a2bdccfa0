"""Row 6 of tools/benchmark.py: the Transformer's train step on a three-axis mesh
(data, fsdp, tensor) against the same devices as a two-axis one, side by side.

Imported by tools/benchmark.py (which sets the fake CPU devices first); the step is the
trainer's own (`make_train_step`, noise measured, the model's activation constraints in
context, `CompiledSteps`), the parameters placed by the model's annotations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from timing import compare  # tools/timing.py

from bigbatch import optim, partitioning
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import create_model


def mesh_shapes(devices: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """Row 6's meshes on `devices`: (data, fsdp, 2) and (data x 2, fsdp, 1), `fsdp` 2 where
  the devices allow it."""
  fsdp = 2 if devices % 4 == 0 else 1
  return (devices // (2 * fsdp), fsdp, 2), (devices // fsdp, fsdp, 1)


def transformer_step(mesh, model, tx, batch):
  """The Transformer's train step on `mesh` (noise measured, the model's activation
  constraints in context), compiled; `train()` runs one step on `batch`."""
  state = st.create_train_state(
    model, tx, jax.ShapeDtypeStruct((1, batch["inputs"].shape[1]), jnp.int32), mesh
  )
  fn = st.make_train_step(model, tx, mesh=mesh, measure_noise=True, noise_horizon=1e5)
  example = {key: jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for key, x in batch.items()}
  steps = st.CompiledSteps(partitioning.traced(fn, mesh), state, example, mesh)
  placed = shd.global_batch(mesh, batch, len(batch["labels"]))
  holder = {"state": state}

  def train():
    holder["state"], metrics = steps(holder["state"], placed)
    return metrics

  return train, steps


def bench_mesh(repeats: int, count: int, batch_size: int = 32, length: int = 64) -> dict:
  """Row 6: the Transformer's step on a three-axis mesh over the two-axis one."""
  three, two = mesh_shapes(jax.device_count())
  model = create_model(
    "transformer", num_classes=256, num_layers=2, width=128, num_heads=4, context_length=length
  )
  tx = optim.adamw(1e-3)
  tokens = np.random.default_rng(0).integers(0, 256, (batch_size, length + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "labels": tokens[:, 1:]}
  ours, ours_steps = transformer_step(shd.make_mesh(*three), model, tx, batch)
  theirs, theirs_steps = transformer_step(shd.make_mesh(*two), model, tx, batch)
  jax.block_until_ready(ours())
  jax.block_until_ready(theirs())
  result = compare(ours, theirs, repeats, count)
  result["throughput_ratio"] = result.pop("ratio")  # three axes / two, in examples per second
  result.update(three_axes=list(three), two_axes=list(two), batch=batch_size, length=length)
  ours_steps.close()
  theirs_steps.close()
  return result
