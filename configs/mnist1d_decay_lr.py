"""MNIST-1D, decaying learning rate at batch 128: 15,625 updates."""

from bigbatch.config import load_sibling


def get_config():
  return load_sibling(__file__, "mnist1d_base").get_config()
