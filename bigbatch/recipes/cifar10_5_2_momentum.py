"""Section 5.2, increased momentum: lr 0.5, momentum 0.98, batch 3200, cap 5120.

B ∝ 1/(1-m): 1 - m from 0.1 to 0.02 takes the batch from 640 to 3200 at the
same noise scale. Updates: 938 + 586 + 391 + 390 = 2,305 (paper: <2,500,
93.3%: the accumulator needs ~3 epochs to settle after each change).
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "cifar10_base").get_config()
  config.optimizer.learning_rate = 0.5
  config.optimizer.momentum = 0.98
  config.batch_size = 3200
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 5120
  return config
