"""ResNet-50 with LARS at batch 65,536: MLPerf Training v0.7 (JAX), 76.1% at epoch 92.

Batch arithmetic: N = 1,281,167; batch 65,536 -> 19.5 steps per epoch; 92
epochs -> 1,799 updates. The v1.0 recipe (`imagenet_resnet50_lars_32k.py`)
with lr 23.08, momentum 0.95372 and 33 warm-up epochs. Doubling the batch
from 32,768 saved about 23% of the steps to the target, and `lr / (1 - m)`
grew 1.22 times: nearer sqrt(2) (Adam's square-root rule, LARS's family's)
than 2 (SGD's g-rule).
"""

from bigbatch.config import load_sibling

PEAK, FINAL = 23.08, 1e-4


def get_config():
  config = load_sibling(__file__, "imagenet_resnet50_lars_32k").get_config()
  config.batch_size = 65_536
  config.num_epochs = 92
  config.optimizer.learning_rate = PEAK
  config.optimizer.momentum = 0.95372
  config.schedule.final_fraction = FINAL / PEAK
  config.schedule.warmup_epochs = 33.0
  return config
