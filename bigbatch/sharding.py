"""The device mesh, and where the batch, parameters and optimizer state live on it.

The mesh has three axes. `data` splits the batch; `fsdp` (size 1 by default)
additionally shards parameters and optimizer state, for models too large to
replicate on every device (fully-sharded data parallelism); `tensor` (size 1
by default) splits single layers, where a model's own annotations say how
(`bigbatch.partitioning`). The batch is split over `data` and `fsdp`, so
every data-parallel group of `tensor` devices holds its own contiguous slice
of `batch / (data x fsdp)` examples, and a ghost batch never straddles
devices as long as that slice is a multiple of the ghost batch.

Multi-host: call `initialize_distributed` first (before anything touches a
device); then each process builds the same mesh over all devices and feeds
only its own slice of the global batch through `global_batch`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
BATCH_AXES = (DATA, FSDP)
MESH_AXES = (DATA, FSDP, TENSOR)

# Environment variables that ask for `jax.distributed.initialize` (with the
# values it would otherwise take from the config).
_COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
_NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
_PROCESS_ID_ENV = "JAX_PROCESS_ID"


class ShardingError(ValueError):
  """A mesh or batch size the devices cannot hold; the message names the field."""


def make_mesh(
  data: int = -1,
  fsdp: int = 1,
  tensor: int = 1,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A `(data, fsdp, tensor)` mesh over `devices` (default: all devices of all processes).

  Args:
    data: devices along the batch axis; -1 takes all that `fsdp` and `tensor` leave.
    fsdp: devices that shard parameters and optimizer state (1: replicate them).
    tensor: devices that split a layer's parameters as its annotations say (1: none);
      the last axis, so that its devices are neighbours (the fastest links).
    devices: the devices to use, in order.

  Raises:
    ShardingError: naming `mesh.tensor`, `mesh.fsdp` or `mesh.data` when the sizes
      do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  if tensor < 1 or count % tensor:
    raise ShardingError(f"mesh.tensor: must divide the {count} devices, got {tensor}")
  if fsdp < 1 or (count // tensor) % fsdp:
    left = "" if tensor == 1 else f" (the {count // tensor} that mesh.tensor={tensor} leaves)"
    raise ShardingError(f"mesh.fsdp: must divide the {count} devices{left}, got {fsdp}")
  if data == -1:
    data = count // (fsdp * tensor)
  if data < 1 or data * fsdp * tensor != count:
    raise ShardingError(
      f"mesh.data: data x fsdp x tensor must equal the {count} devices (or data = -1), "
      f"got {data} x {fsdp} x {tensor}"
    )
  # Auto axes: XLA propagates shardings through the model (no per-op annotations)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=auto, devices=devices)


def initialize_distributed(distributed: Any = None) -> bool:
  """Starts multi-host JAX when the `distributed` block or the environment asks for it.

  `distributed` is a `spec.DistributedSpec` or a mapping of its fields (None:
  the defaults). Asked for by its `enabled` (True, or "auto" on a TPU pod
  or a cluster `jax.distributed` detects), or by the environment variable
  `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`).
  Must run before anything touches a device; a second call is a no-op.

  Returns:
    True if this process is now part of a multi-process run.
  """
  if distributed is None:
    block = {}
  elif isinstance(distributed, Mapping):
    block = dict(distributed)
  else:  # a DistributedSpec
    block = distributed.to_dict()
  address = block.get("coordinator_address") or os.environ.get(_COORDINATOR_ENV)
  num_processes = block.get("num_processes") or os.environ.get(_NUM_PROCESSES_ENV)
  process_id = block.get("process_id")
  if process_id is None:
    process_id = os.environ.get(_PROCESS_ID_ENV)
  enabled = block.get("enabled", "auto")
  if isinstance(enabled, str):  # from a command line: --config.distributed.enabled=true
    enabled = {"true": True, "false": False}.get(enabled.lower(), enabled)
  if enabled not in (True, False, "auto"):
    raise ShardingError(f"distributed.enabled: must be true, false or 'auto', got {enabled!r}")
  if enabled is False or (enabled == "auto" and not address and not _on_tpu_pod()):
    return False
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  try:
    jax.distributed.initialize(
      coordinator_address=address,
      num_processes=None if num_processes is None else int(num_processes),
      process_id=None if process_id is None else int(process_id),
    )
  except (RuntimeError, ValueError) as error:  # e.g. no coordinator answered in time
    reason = " ".join(str(error).split())[:300]
    where = f"cannot join {address}" if address else "not set and not found in the environment"
    raise ShardingError(
      f"distributed.coordinator_address: {where} ({reason}); set it (or "
      f"{_COORDINATOR_ENV}, {_NUM_PROCESSES_ENV}, {_PROCESS_ID_ENV}), or "
      "distributed.enabled=false for one process"
    ) from None
  return jax.process_count() > 1


def _on_tpu_pod() -> bool:
  # A multi-worker TPU VM names its peers; jax.distributed finds the rest itself.
  hostnames = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hostnames


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that puts a full copy on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


@functools.lru_cache(maxsize=64)
def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (example) axis split over the `data` and `fsdp` devices, in contiguous
  blocks (the `tensor` devices of a group share theirs).

  Cached: the trainer asks for it at every step.
  """
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """How many slices the batch is split into: the devices along `data` and `fsdp`."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def param_sharding(leaf: Any, mesh: Mesh, *, min_size: int = 2**14) -> NamedSharding:
  """Where a parameter (or a moment shaped like one) lives.

  Replicated when the mesh's `fsdp` axis has size 1. Otherwise its largest
  axis that `fsdp` divides is split along `fsdp`; leaves smaller than
  `min_size` elements (biases, norms) stay replicated, since splitting them
  saves little memory and costs a gather each. This is the rule for a
  parameter its model does not annotate (`partitioning.placed` reads the
  annotations).
  """
  shards = mesh.shape[FSDP]
  if shards == 1 or math.prod(leaf.shape) < min_size:
    return replicated(mesh)
  for axis in sorted(range(len(leaf.shape)), key=lambda a: -leaf.shape[a]):
    if leaf.shape[axis] % shards == 0:
      spec = [None] * len(leaf.shape)
      spec[axis] = FSDP
      return NamedSharding(mesh, PartitionSpec(*spec))
  return replicated(mesh)


def check_batch_size(
  batch_size: int, mesh: Mesh, *, ghost_batch_size: int | None = None, field: str = "batch_size"
) -> int:
  """The per-device batch of `batch_size`, or a `ShardingError` naming `field`.

  The batch must split into equal per-device slices, each a whole number of
  ghost batches (so that none straddles two devices), and into equal
  per-process slices.
  """
  devices = data_parallel_size(mesh)
  unit = devices * (ghost_batch_size or 1)
  if batch_size < 1 or batch_size % unit:
    ghost = f" x ghost batch {ghost_batch_size}" if ghost_batch_size else ""
    hint = f"; set plan.batch_multiple to a multiple of {unit}" if "batch_multiple" in field else ""
    raise ShardingError(
      f"{field}: {batch_size} must be a positive multiple of {unit} ({devices} devices{ghost}){hint}"
    )
  return batch_size // devices


def global_batch(mesh: Mesh, local_batch: Any, global_batch_size: int) -> Any:
  """Assembles the global batch from this process's slice of it.

  Args:
    mesh: the mesh the step runs on.
    local_batch: a pytree of NumPy arrays, this process's consecutive
      `global_batch_size / process_count` examples (process `i` holds the
      `i`-th block, the examples its own devices train on).
    global_batch_size: examples in the step's batch, over all processes.

  Returns:
    The same pytree of `jax.Array`s of `global_batch_size` examples, split
    over the mesh's devices along the leading axis.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    # the local batch is the global one: `make_array_from_process_local_data`
    # would spend twice `device_put`'s time in Python
    return jax.device_put(local_batch, sharding)

  def assemble(local):
    local = np.asarray(local)
    shape = (global_batch_size,) + local.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local, shape)

  return jax.tree.map(assemble, local_batch)


def step_batch(mesh: Mesh, local_batch: Any, global_batch_size: int) -> Any:
  """A batch as a compiled step (`CompiledSteps`) takes it, from this process's slice.

  With one process, the NumPy arrays themselves: the executable copies them onto
  the mesh's devices in C++, in about a tenth of the time `jax.device_put` takes
  (24 us against 240 us for a batch of 128 MNIST-1D examples on a CPU, where
  that was a tenth of the step). With several, the global array (`global_batch`).
  """
  if jax.process_count() == 1:
    return local_batch
  return global_batch(mesh, local_batch, global_batch_size)


def process_batch_slice(mesh: Mesh, global_batch_size: int) -> slice:
  """The examples of a global batch that this process feeds (see `global_batch`).

  Raises:
    ShardingError: when the batch does not divide over the processes.
  """
  sharding = batch_sharding(mesh)
  index = sharding.addressable_devices_indices_map((global_batch_size,))
  starts = sorted({idx[0].start or 0 for idx in index.values()})
  stops = sorted({idx[0].stop or global_batch_size for idx in index.values()})
  start, stop = starts[0], stops[-1]
  local = global_batch_size * jax.local_device_count() // jax.device_count()
  if stop - start != local:
    raise ShardingError(
      f"batch_size: {global_batch_size} examples do not split into one contiguous "
      f"block per process over this mesh"
    )
  return slice(start, stop)
