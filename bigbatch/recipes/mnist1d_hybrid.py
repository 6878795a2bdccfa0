"""MNIST-1D, hybrid: batch 128 -> 640 at epoch 12, then lr /5 at 24, 32.

Updates: 4,688 + 28 epochs x 78.1 steps = 6,875. Takes the optimizer
variants of `mnist1d_decay_lr.py`.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "mnist1d_base")
  config = base.with_variant(base.get_config(), variant)
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 640
  return config
