"""ResNet-50 with LARS, the batch growing from 8,192 to 65,536 in place of v0.7's decay.

As `imagenet_resnet50_lars_32k_increase_batch.py`, from the v0.7 recipe
(`imagenet_resnet50_lars_64k.py`): under the square-root rule, batch 8,192
takes every rate divided by sqrt(8), a peak of 23.08 / sqrt(8) = 8.16; where the baseline's decay has cut the rate
by a <= 8, the plan runs batch 8,192 a at lr 8.16 / sqrt(a); past 65,536 (the
cap) the rate takes the rest.
"""

from bigbatch.config import load_sibling
from bigbatch.recipe import lars_increasing_batch


def get_config():
  return lars_increasing_batch(load_sibling(__file__, "imagenet_resnet50_lars_64k").get_config())
