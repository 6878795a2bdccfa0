"""Every test sees 8 CPU devices: set before anything touches a JAX device."""

import jax
import numpy as np
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A tfds data dir for one test module: its small MNIST-1D is generated there once."""
  return str(tmp_path_factory.mktemp("tfds"))


CODE_WORDS = ["def", "return", "self", "x", "y", "import", "for", "in", "if", "else", "(", ")"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
  """40 files of generated, code-like text (about 120 KB): a language model's corpus."""
  directory = tmp_path_factory.mktemp("text")
  rng = np.random.default_rng(0)
  for i in range(40):
    lines = [" ".join(rng.choice(CODE_WORDS, size=8)) for _ in range(70)]
    (directory / f"doc{i:02d}.py").write_text("\n".join(lines) + "\n")
  return str(directory)
