"""Section 5.1, increasing batch: lr 0.1 fixed, batch 128 -> 640 -> 3200 -> 16000.

Updates: 23,438 + 4,688 + 625 + 125 = 28,876 (2.7x fewer than 78,125).
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "cifar10_base")
  config = base.with_variant(base.get_config(), variant)
  config.plan.strategy = "increase_batch"
  return config
