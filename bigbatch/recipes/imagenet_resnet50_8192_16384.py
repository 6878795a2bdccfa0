"""ResNet-50, batch 8192 for 30 epochs, then 16384 for 60: 9,384 updates.

The drop at epoch 30 (/10) would take the batch to 81,920; the cap of 16,384
(what half a TPU v2 pod holds) takes x2 of it and the learning rate the rest
(3.2 -> 0.64). Updates: 4,692 + 4,692 = 9,384 (76.1% in under 30 minutes).
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "imagenet_resnet50_base").get_config()
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 16384
  return config
