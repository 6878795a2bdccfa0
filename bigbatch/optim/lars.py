"""LARS (You, Gitman & Ginsburg 2017), as MLPerf's ResNet-50 uses it, schedule- and plan-aware.

"Large Batch Training of Convolutional Networks" gives each layer its own
rate, the trust ratio `eta ||w|| / (||g|| + wd ||w||)` (eta, the trust
coefficient, 0.001), applied to `g + wd w`. MLPerf's reference (and every
LARS ResNet-50 submission) leaves biases and batch-norm parameters out of
both the decay and the ratio: they take plain momentum SGD. Per layer:

    d = ratio * (g + wd w)      (d = g where neither applies)
    A <- m A + d
    w <- w - lr A

Momentum is in the accumulation form, as bigbatch's SGD (`sgd_momentum`):
the learning rate multiplies the whole buffer, so a cut of the rate (a
schedule's step, a plan's phase, a decision taken while training) acts at
once, and the paper's g-rule reasoning about `lr / (1 - m)` holds.
`optax.lars`, like MLPerf's TensorFlow reference, puts the rate inside the
buffer (`A <- m A + lr d; w <- w - A`): both are the same update while the
rate is constant, but there a new rate reaches the step only as old terms
decay, over about 1 / (1 - m) steps (14 steps at MLPerf's m = 0.929).

`trust_ratio="optax"` takes optax's ratio instead, `eta ||w|| / ||g + wd w||`.
A ratio whose norms are zero is 1, as in both references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bigbatch.optim import masks
from bigbatch.optim.hyperparams import Hyperparam, resolve

TRUST_RATIOS = ("mlperf", "optax")

Mask = Any | Callable[[optax.Params], Any] | None


def _norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def scale_by_lars(
  weight_decay: float | jax.Array = 0.0,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
  *,
  weight_decay_mask: Mask = None,
  trust_mask: Mask = None,
  trust_ratio: str = "mlperf",
) -> optax.GradientTransformation:
  """Each leaf's `ratio * (g + wd w)`, LARS's direction before momentum and rate.

  Args:
    weight_decay: `wd`, added to the gradient where `weight_decay_mask` says.
    trust_coefficient: `eta`.
    eps: added to the ratio's denominator (0 in MLPerf).
    weight_decay_mask, trust_mask: optax masks (None: every leaf).
    trust_ratio: `mlperf` (`eta ||w|| / (||g|| + wd ||w||)`) or `optax`
      (`eta ||w|| / ||g + wd w||`).

  Raises:
    ValueError: for an unknown `trust_ratio`.
  """
  if trust_ratio not in TRUST_RATIOS:
    raise ValueError(f"trust_ratio: {trust_ratio!r} is not one of {', '.join(TRUST_RATIOS)}")

  def leaf(g, w, decayed, trusted):
    wd = weight_decay if decayed else 0.0
    step = g + wd * w if decayed else g
    if not trusted:
      return step
    w_norm, g_norm = _norm(w), _norm(g)
    if trust_ratio == "mlperf":
      denominator, known = g_norm + wd * w_norm, g_norm > 0
    else:
      denominator = _norm(step)
      known = denominator > 0
    ratio = jnp.where((w_norm > 0) & known, trust_coefficient * w_norm / (denominator + eps), 1.0)
    return (ratio * step).astype(g.dtype)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_lars: needs the parameters (`update(grads, state, params)`)")
    decayed = masks.full_mask(weight_decay_mask, params)
    trusted = masks.full_mask(trust_mask, params)
    return jax.tree.map(leaf, updates, params, decayed, trusted), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _lars(
  learning_rate,
  momentum,
  weight_decay,
  *,
  trust_coefficient,
  eps,
  nesterov,
  weight_decay_mask,
  trust_mask,
  trust_ratio,
):
  return optax.chain(
    scale_by_lars(
      weight_decay,
      trust_coefficient,
      eps,
      weight_decay_mask=weight_decay_mask,
      trust_mask=trust_mask,
      trust_ratio=trust_ratio,
    ),
    optax.trace(decay=momentum, nesterov=nesterov),
    optax.scale_by_learning_rate(learning_rate),
  )


def lars(
  learning_rate: Hyperparam,
  momentum: Hyperparam = 0.9,
  *,
  weight_decay: Hyperparam = 0.0,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
  nesterov: bool = False,
  weight_decay_mask: Mask = masks.kernels,
  trust_mask: Mask = masks.matrices,
  trust_ratio: str = "mlperf",
) -> optax.GradientTransformationExtraArgs:
  """LARS (You et al. 2017) with momentum in the accumulation form (see the module).

  Args:
    learning_rate: `lr`; float, optax schedule or `Plan`.
    momentum: `m` in [0, 1); float, schedule or `Plan` (its momentum).
    weight_decay: `wd`; float, schedule or `Plan`.
    trust_coefficient: `eta` (0.001 in the paper and MLPerf).
    eps: added to the ratio's denominator.
    nesterov: Nesterov momentum (`w <- w - lr (d + m A)`).
    weight_decay_mask: which parameters are decayed (default `masks.kernels`:
      no biases, normalization parameters or embeddings).
    trust_mask: which take the trust ratio (default `masks.matrices`: no biases
      or normalization parameters, as MLPerf); the others take `g` (+ decay) as it is.
    trust_ratio: `mlperf` or `optax` (see `scale_by_lars`).

  Returns:
    An optax `GradientTransformationExtraArgs`; `lr`, `m` and `wd` live in its state.

  Raises:
    ValueError: naming the argument, for a value outside its range.
  """
  if trust_ratio not in TRUST_RATIOS:
    raise ValueError(f"trust_ratio: {trust_ratio!r} is not one of {', '.join(TRUST_RATIOS)}")
  if not trust_coefficient > 0:
    raise ValueError(f"trust_coefficient: must be positive, got {trust_coefficient}")
  static = (
    "trust_coefficient",
    "eps",
    "nesterov",
    "weight_decay_mask",
    "trust_mask",
    "trust_ratio",
  )
  return optax.inject_hyperparams(_lars, static_args=static)(
    learning_rate=resolve(learning_rate, "learning_rate", "learning_rate", low=0.0),
    momentum=resolve(momentum, "momentum", "momentum", low=0.0, high=1.0),
    weight_decay=resolve(weight_decay, "weight_decay", "weight_decay", low=0.0),
    trust_coefficient=float(trust_coefficient),
    eps=float(eps),
    nesterov=nesterov,
    weight_decay_mask=weight_decay_mask,
    trust_mask=trust_mask,
    trust_ratio=trust_ratio,
  )
