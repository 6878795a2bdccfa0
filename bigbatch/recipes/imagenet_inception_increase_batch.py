"""Inception-ResNet-V2, increasing batch: 8192 -> 81,920 at epoch 30, then lr decays.

Updates: 4,692 + 938 = 5,630 (paper: <6,000, similar accuracy).
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "imagenet_inception_base").get_config()
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 81920
  return config
