"""The phase loop's choices that depend on the devices (`bigbatch.train.loop`)."""

import jax

from bigbatch import sharding
from bigbatch.train.loop import waits_for_each_step


def test_the_loop_waits_for_each_step_on_several_cpu_devices_only():
  """XLA's CPU collectives can stall with several steps queued (see waits_for_each_step)."""
  assert waits_for_each_step(sharding.make_mesh(devices=jax.devices()[:8]))
  assert waits_for_each_step(sharding.make_mesh(devices=jax.devices()[:2]))
  assert not waits_for_each_step(sharding.make_mesh(devices=jax.devices()[:1]))
