"""Section 5.2, original: lr 0.1, momentum 0.9, batch 128 fixed: 78,125 updates (94.3%)."""

from bigbatch.config import load_sibling


def get_config():
  return load_sibling(__file__, "cifar10_base").get_config()
