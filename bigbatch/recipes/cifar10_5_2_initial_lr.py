"""Section 5.2, increased initial learning rate: lr 0.5, batch 640 (B ∝ lr), cap 5120.

Batch 640 -> 3200 -> 5120 -> 5120 with lr 0.5, 0.5, 0.16, 0.032.
Updates: 4,688 + 938 + 391 + 390 = 6,407 (paper: <6,500, 94.5%).
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "cifar10_base").get_config()
  config.optimizer.learning_rate = 0.5
  config.batch_size = 640
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 5120
  return config
