"""Every test sees 8 CPU devices: set before anything touches a JAX device.

The suite compiles the same programs many times (every end-to-end run of the small
MNIST-1D recipe, every resume after a kill), mostly in processes of their own. One
persistent compilation cache for the whole session, which those processes inherit through
the environment, compiles each once. It starts empty at every session, and an executable
loaded from it is the one compiled, so no result depends on it. A size limit makes JAX lock
the cache's files, as two processes write it at once. XLA compiles with the flags of
`xla_env`, here and in every process a test starts.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="bigbatch-tests-xla-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)

from xla_env import FAST_COMPILE

os.environ["XLA_FLAGS"] = f"{FAST_COMPILE} {os.environ.get('XLA_FLAGS', '')}".strip()

import jax  # after the settings: it reads them from the environment as it is imported
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
