"""ResNet-50 with LARS, the batch growing from 8,192 to 32,768 in place of v1.0's decay.

LARS is of the `adaptive` family (its per-layer step keeps its length
whatever the gradient's size), so its rule is Adam's square-root rule
(`plan.adam_rule: sqrt`, Seesaw): a batch x k acts like the rate / sqrt(k).
The baseline is v1.0's schedule (`imagenet_resnet50_lars_32k.py`) at batch
8,192, every rate divided by sqrt(4) as that rule says: a peak of 14.5. Where the
baseline's (1 - t)^2 decay has cut the rate by a <= 4, the plan runs batch
8,192 a at lr 14.5 / sqrt(a) instead; past 32,768 (the cap) the rate takes
the rest. `bigbatch plan --config imagenet_resnet50_lars_32k_increase_batch`
prints the phases.
"""

from bigbatch.config import load_sibling
from bigbatch.recipe import lars_increasing_batch


def get_config():
  return lars_increasing_batch(load_sibling(__file__, "imagenet_resnet50_lars_32k").get_config())
