"""Every test sees 8 CPU devices: set before anything touches a JAX device."""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A tfds data dir for one test module: its small MNIST-1D is generated there once."""
  return str(tmp_path_factory.mktemp("tfds"))
