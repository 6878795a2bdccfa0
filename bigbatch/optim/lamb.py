"""LAMB (You et al. 2019), as BERT's large-batch recipes use it, schedule- and plan-aware.

"Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
Algorithm 2: Adam's step with its bias correction, plus the decoupled decay,
scaled per layer by the trust ratio `||w|| / ||r + wd w||` (1 where a norm is 0):

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    w <- w - lr ||w|| / ||r + wd w|| (r + wd w)

Google's BERT LAMB leaves LayerNorm parameters and biases out of both the
decay and the ratio; so does this by default (`weight_decay_mask`,
`trust_mask`). `optax.lamb` decays and scales every leaf (its `mask` is the
decay's only). The chain is optax's own pieces (`scale_by_adam`,
`add_decayed_weights`, `masked(scale_by_trust_ratio())`,
`scale_by_learning_rate`) under `optax.inject_hyperparams`: with both masks
every leaf it is `optax.lamb`. A plan's momentum feeds `b1`, as Adam's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from bigbatch.optim import masks
from bigbatch.optim.hyperparams import Hyperparam, is_zero, resolve

Mask = Any | Callable[[optax.Params], Any] | None


def _lamb(
  learning_rate, b1, weight_decay, *, b2, eps, eps_root, weight_decay_mask, trust_mask, use_decay
):
  parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)]
  if use_decay:
    parts.append(masks.add_decayed_weights(weight_decay, weight_decay_mask))
  trust = optax.scale_by_trust_ratio()
  parts.append(trust if trust_mask is None else optax.masked(trust, trust_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def lamb(
  learning_rate: Hyperparam,
  b1: Hyperparam = 0.9,
  b2: Hyperparam = 0.999,
  eps: Hyperparam = 1e-6,
  *,
  eps_root: float = 0.0,
  weight_decay: Hyperparam = 0.0,
  weight_decay_mask: Mask = masks.kernels,
  trust_mask: Mask = masks.matrices,
) -> optax.GradientTransformationExtraArgs:
  """LAMB (You et al. 2019, Algorithm 2) with bias correction (see the module).

  Args:
    learning_rate, b1: float, optax schedule or `Plan` (`b1`: its momentum).
    b2, eps: as in `optax.lamb`; a schedule or a `Plan` whose Adam rule moves
      them keeps them in the optimizer's state (`bigbatch.plan.adam_rules`).
    eps_root: as in `optax.lamb`.
    weight_decay: `wd`; float, schedule or `Plan`.
    weight_decay_mask: which parameters are decayed (default `masks.kernels`:
      no biases, normalization parameters or embeddings).
    trust_mask: which take the trust ratio (default `masks.matrices`: no biases or
      normalization parameters); None: every leaf, as `optax.lamb`.

  Returns:
    An optax `GradientTransformationExtraArgs`.

  Raises:
    ValueError: naming the argument, for a value outside its range.
  """
  if isinstance(b2, int | float) and not 0.0 <= b2 < 1.0:
    raise ValueError(f"b2: must be in [0, 1), got {b2}")
  # as Adam's: b2 and eps that are numbers stay static; a plan of them lives in the state
  moving = {
    name: resolve(value, name, name)
    for name, value in (("b2", b2), ("eps", eps))
    if not isinstance(value, int | float)
  }
  fixed = {name: float(value) for name, value in (("b2", b2), ("eps", eps)) if name not in moving}
  static = [k for k in ("b2", "eps") if k in fixed]
  static += ["eps_root", "weight_decay_mask", "trust_mask", "use_decay"]
  return optax.inject_hyperparams(_lamb, static_args=tuple(static))(
    learning_rate=resolve(learning_rate, "learning_rate", "learning_rate", low=0.0),
    b1=resolve(b1, "b1", "momentum", low=0.0, high=1.0),
    weight_decay=resolve(weight_decay, "weight_decay", "weight_decay", low=0.0),
    eps_root=float(eps_root),
    weight_decay_mask=weight_decay_mask,
    trust_mask=trust_mask,
    use_decay=not is_zero(weight_decay),
    **moving,
    **fixed,
  )
