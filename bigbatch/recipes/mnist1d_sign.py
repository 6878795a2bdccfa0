"""MNIST-1D, PowerSign or AddSign (Bello et al. 2017) on the decaying schedule.

`--config=configs/mnist1d_sign.py:power_sign` (the default) or `:add_sign`.
The update is `lr * alpha^(f(t) sign(g) sign(m)) * g` (PowerSign, alpha = e)
or `lr * (1 + f(t) sign(g) sign(m)) * g` (AddSign), with `m` an average of
gradients (beta 0.9) and `f(t) = 1` (decay `none`). The learning rate is 0.5:
half of momentum SGD's effective rate 0.1 / (1 - 0.9), because when the
signs agree (the common case while the loss falls) both step 2 to 2.7 times
the gradient. The schedule, batch and weight decay are the decaying
baseline's (`mnist1d_decay_lr.py`); `--config.plan.strategy=increase_batch`
gives the increasing-batch plan with the same optimizer.
"""

import math

from bigbatch.config import load_sibling, optimizer_config

VARIANTS = ("power_sign", "add_sign")


def get_config(variant=None):
  variant = variant or "power_sign"
  if variant not in VARIANTS:
    raise ValueError(f"config variant: {variant!r} is not one of {', '.join(VARIANTS)}")
  base = load_sibling(__file__, "mnist1d_base")
  config = base.get_config()
  config.plan.strategy = "decay_lr"
  config.optimizer = optimizer_config(
    {
      "name": variant,
      "learning_rate": 0.5,
      "beta": 0.9,
      "alpha": math.e if variant == "power_sign" else 1.0,
      "decay": "none",
      "weight_decay": config.optimizer.weight_decay,
    }
  )
  return config
