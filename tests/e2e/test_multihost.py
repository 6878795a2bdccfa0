"""Two processes on 127.0.0.1 (jax.distributed, gloo) train as one process does."""

import os
import pathlib
import subprocess
import sys

import numpy as np
from multihost_common import BATCH_SIZES, free_port, train
from xla_env import xla_flags

from bigbatch import sharding

HERE = pathlib.Path(__file__).parents[1]  # the helper scripts beside conftest.py


def test_two_processes_feeding_their_own_slices_equal_one_process(tmp_path):
  address = f"127.0.0.1:{free_port()}"
  out = tmp_path / "params.npz"
  env = {**os.environ, "PYTHONPATH": str(HERE), "XLA_FLAGS": xla_flags()}
  workers = [
    subprocess.Popen(
      [sys.executable, str(HERE / "multihost_step.py"), address, "2", str(i), str(out)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for worker in workers:
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output[-3000:]
  two = np.load(out)
  one = train(sharding.make_mesh(), BATCH_SIZES)
  assert set(two.files) == set(one)
  for key, value in one.items():
    np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
