"""MNIST-1D, increasing batch: lr 0.1 fixed, batch 128 -> 640 -> 3200 -> 16000.

Updates: 4,688 + 938 + 125 + 25 = 5,776 (2.7x fewer than 15,625). Takes the
optimizer variants of `mnist1d_decay_lr.py`.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "mnist1d_base")
  config = base.with_variant(base.get_config(), variant)
  config.plan.strategy = "increase_batch"
  return config
