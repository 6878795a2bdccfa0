"""Section 5.1, decaying learning rate: lr 0.1 /5 at 60, 120, 160; batch 128.

78,125 updates. `--config=configs/cifar10_5_1_decay_lr.py:nesterov` (or
`:sgd`, `:adam`) selects the optimizer variant.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "cifar10_base")
  return base.with_variant(base.get_config(), variant)
