"""MNIST-1D, the classic ReduceLROnPlateau: the learning rate falls /5 when the loss stalls.

The same rule and settings as `mnist1d_plateau.py` (the baseline it is
compared with): the batch stays at 128.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  plateau = load_sibling(__file__, "mnist1d_plateau")
  return plateau.get_config(variant, strategy="plateau_lr")
