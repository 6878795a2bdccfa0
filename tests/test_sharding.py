"""The mesh, the shardings of batch and parameters, and batch-size checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from bigbatch import sharding as shd


def test_mesh_defaults_to_a_data_axis_over_all_devices():
  mesh = shd.make_mesh()
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert dict(shd.make_mesh(fsdp=2).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert dict(shd.make_mesh(2, 4).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert dict(shd.make_mesh(fsdp=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert shd.data_parallel_size(shd.make_mesh(fsdp=2)) == 8
  assert shd.data_parallel_size(shd.make_mesh(fsdp=2, tensor=2)) == 4  # tensor shares examples
  one = shd.make_mesh(devices=jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
  "data, fsdp, message",
  [(-1, 3, "mesh.fsdp: must divide the 8 devices"), (3, 2, "mesh.data: data x fsdp")],
)
def test_bad_mesh_names_the_field(data, fsdp, message):
  with pytest.raises(shd.ShardingError, match=message):
    shd.make_mesh(data, fsdp)


def test_parameters_shard_along_fsdp_on_their_largest_divisible_axis():
  mesh = shd.make_mesh(fsdp=4)
  leaf = jax.ShapeDtypeStruct((6, 3, 64, 256), jnp.float32)
  assert shd.param_sharding(leaf, mesh).spec == PartitionSpec(None, None, None, "fsdp")
  odd = jax.ShapeDtypeStruct((4097, 12), jnp.float32)  # 4097 is not a multiple of 4
  assert shd.param_sharding(odd, mesh).spec == PartitionSpec(None, "fsdp")
  small = jax.ShapeDtypeStruct((256,), jnp.float32)
  assert shd.param_sharding(small, mesh).spec == PartitionSpec()
  assert shd.param_sharding(leaf, shd.make_mesh()).spec == PartitionSpec()


def test_batch_sizes_must_split_into_whole_ghost_batches_per_device():
  mesh = shd.make_mesh()
  assert shd.check_batch_size(64, mesh, ghost_batch_size=4) == 8
  assert shd.check_batch_size(8, mesh) == 1
  with pytest.raises(shd.ShardingError, match=r"batch_size: 48 must be a positive multiple of 32 "):
    shd.check_batch_size(48, mesh, ghost_batch_size=4)
  with pytest.raises(shd.ShardingError, match=r"plan.batch_multiple: 12 .* \(8 devices\)"):
    shd.check_batch_size(12, mesh, field="plan.batch_multiple")


def test_global_batch_puts_contiguous_blocks_on_the_devices():
  mesh = shd.make_mesh(fsdp=2)
  local = {"inputs": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "labels": np.arange(16)}
  batch = shd.global_batch(mesh, local, 16)
  assert batch["inputs"].sharding == shd.batch_sharding(mesh)
  np.testing.assert_array_equal(np.asarray(batch["inputs"]), local["inputs"])
  for shard in batch["labels"].addressable_shards:
    start = shard.index[0].start
    np.testing.assert_array_equal(np.asarray(shard.data), np.arange(start, start + 2))
  # one process feeds the whole batch
  assert shd.process_batch_slice(mesh, 16) == slice(0, 16)


def test_distributed_is_off_unless_asked_for(monkeypatch):
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  assert shd.initialize_distributed({"enabled": "auto"}) is False
  assert shd.initialize_distributed({"enabled": False}) is False
  assert shd.initialize_distributed(None) is False
  with pytest.raises(
    shd.ShardingError, match=r"distributed\.enabled: must be true, false or 'auto'"
  ):
    shd.initialize_distributed({"enabled": "yes"})
