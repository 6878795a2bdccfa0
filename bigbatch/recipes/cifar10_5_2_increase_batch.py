"""Section 5.2, increasing batch with the cap B_max = 5120.

Batch 128 -> 640 -> 3200 -> 5120 (16,000 capped; lr 0.1 * 5120/16000 = 0.032).
Updates: 23,438 + 4,688 + 625 + 391 = 29,142 (paper: ~29,000, 94.4%).
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "cifar10_base").get_config()
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 5120
  return config
