"""One process of a two-process train-step run (see test_multihost.py).

usage: python multihost_step.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT.npz
Each process has 4 CPU devices and feeds only its own slice of each batch.
"""

import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from bigbatch import sharding  # noqa: E402

sharding.initialize_distributed(
  {
    "enabled": True,
    "coordinator_address": sys.argv[1],
    "num_processes": int(sys.argv[2]),
    "process_id": int(sys.argv[3]),
  }
)

import numpy as np  # noqa: E402
from multihost_common import BATCH_SIZES, train  # noqa: E402

params = train(sharding.make_mesh(), BATCH_SIZES)
if jax.process_index() == 0:
  np.savez(sys.argv[4], **params)
