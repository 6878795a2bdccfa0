"""Lion and Muon: optax's own, under a plan.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") steps
along the sign of an interpolation of the momentum and the gradient:
`w <- w - lr (sign(b1 m + (1 - b1) g) + wd w)`, `m <- b2 m + (1 - b2) g`.
Muon (Jordan et al. 2024, `optax.contrib.muon`) orthogonalises the momentum
of each matrix by Newton-Schulz iterations (coefficients 3.4445, -4.7750,
2.0315; 5 steps; beta 0.95) and steps the other leaves with AdamW.

Both are optax's functions, built by `plan_aware`: the learning rate (Muon's
AdamW path takes the same one) and the momentum (Lion's `b1`, Muon's `beta`)
live in the state and may follow a `Plan`; every other argument is optax's,
static. Both are of the `adaptive` family: their step's size does not follow
the gradient's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from optax import contrib

from bigbatch.optim.factory import plan_aware
from bigbatch.optim.hyperparams import Hyperparam

Mask = Any | Callable[[optax.Params], Any] | None


def lion(
  learning_rate: Hyperparam,
  b1: Hyperparam = 0.9,
  b2: float = 0.99,
  *,
  weight_decay: float = 1e-3,
  mask: Mask = None,
  mu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """`optax.lion`, its learning rate and `b1` (a plan's momentum) in its state.

  Args:
    learning_rate, b1: float, optax schedule or `Plan`.
    b2, weight_decay, mask, mu_dtype: as in `optax.lion`.
  """
  options = {"b2": b2, "weight_decay": weight_decay, "mask": mask, "mu_dtype": mu_dtype}
  return plan_aware(optax.lion, learning_rate, b1, options=options)


def muon(
  learning_rate: Hyperparam,
  beta: Hyperparam = 0.95,
  *,
  ns_steps: int = 5,
  nesterov: bool = True,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  weight_decay_mask: Mask = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.999,
  adam_weight_decay: float = 0.0,
  **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """`optax.contrib.muon`, its learning rate and `beta` (a plan's momentum) in its state.

  Matrices (2-D leaves) take Muon's orthogonalised momentum, the other leaves
  AdamW (`adam_b1`, `adam_b2`, `adam_weight_decay`) at the same learning rate.

  Args:
    learning_rate, beta: float, optax schedule or `Plan`.
    ns_steps, nesterov, eps, weight_decay, weight_decay_mask: as in `optax.contrib.muon`
      (the decay and its mask apply to the matrices).
    adam_b1, adam_b2, adam_weight_decay: the AdamW path's.
    **options: any other argument of `optax.contrib.muon`.
  """
  own = {
    "ns_steps": ns_steps,
    "nesterov": nesterov,
    "eps": eps,
    "weight_decay": weight_decay,
    "weight_decay_mask": weight_decay_mask,
    "adam_b1": adam_b1,
    "adam_b2": adam_b2,
    "adam_weight_decay": adam_weight_decay,
  }
  return plan_aware(contrib.muon, learning_rate, beta, options={**own, **options})
