"""ResNet-50 with LARS, the batch growing from 8,192 to 65,536 in place of v0.7's decay.

As `imagenet_resnet50_lars_32k_increase_batch.py`, from the v0.7 recipe
(`imagenet_resnet50_lars_64k.py`): under the square-root rule, batch 8,192
takes every rate divided by sqrt(8), a peak of 23.08 / sqrt(8) = 8.16; where the baseline's decay has cut the rate
by a <= 8, the plan runs batch 8,192 a at lr 8.16 / sqrt(a); past 65,536 (the
cap) the rate takes the rest.
"""

import math

from bigbatch.config import load_sibling

TARGET = 65_536


def get_config():
  config = load_sibling(__file__, "imagenet_resnet50_lars_64k").get_config()
  k = TARGET / 8_192
  config.optimizer.learning_rate = config.optimizer.learning_rate / math.sqrt(k)
  config.batch_size = 8_192
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = TARGET
  config.plan.adam_rule = "sqrt"
  config.plan.min_phase_epochs = 4.0  # the continuous decay is cut into phases this long
  return config
