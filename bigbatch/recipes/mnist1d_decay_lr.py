"""MNIST-1D, decaying learning rate at batch 128: 15,625 updates.

`--config=configs/mnist1d_decay_lr.py:nesterov` (or `:sgd`, `:adam`) selects
the optimizer variant, as in section 5.1.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "mnist1d_base")
  return base.with_variant(base.get_config(), variant)
