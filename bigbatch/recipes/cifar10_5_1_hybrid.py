"""Section 5.1, hybrid: batch 128 -> 640 at epoch 60, then lr /5 at 120, 160.

The cap of 640 makes the first drop a batch increase and the later two
learning-rate drops: 23,438 + 140 epochs x 78.1 steps = 34,375 updates.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "cifar10_base")
  config = base.with_variant(base.get_config(), variant)
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 640
  return config
