"""Inception-ResNet-V2 with the cap B_max = 65,536 and ghost batch 64.

`--config=configs/imagenet_inception_capped.py:M` with M one of:
  0.9   (B0 8192):  4,692 + 1,173 = 5,865 updates (paper: just under 6,000, 78.8%)
  0.95  (B0 16384): 2,346 + 1,173 = 3,519 updates (paper: ~3,500, ~78%)
  0.975 (B0 32768): 1,173 + 1,173 = 2,346 updates (paper: <2,500, ~77%)
B ∝ 1/(1-m): each halving of 1 - m doubles the initial batch at lr 3.0.
"""

from bigbatch.config import load_sibling

INITIAL_BATCH = {"0.9": 8192, "0.95": 16384, "0.975": 32768}


def get_config(momentum="0.9"):
  if momentum not in INITIAL_BATCH:
    raise ValueError(f"config variant: {momentum!r} is not one of {', '.join(INITIAL_BATCH)}")
  config = load_sibling(__file__, "imagenet_inception_base").get_config()
  config.optimizer.momentum = float(momentum)
  config.batch_size = INITIAL_BATCH[momentum]
  config.ghost_batch_size = 64
  config.plan.batch_multiple = 512  # 8 devices x ghost batch 64
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = 65536
  return config
