"""SGD with momentum in accumulation form, schedule- and plan-aware."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from bigbatch.optim import masks
from bigbatch.optim.hyperparams import Hyperparam, is_zero, resolve


def _sgd_momentum(learning_rate, momentum, weight_decay, *, nesterov, mask, use_decay):
  parts = [optax.trace(decay=momentum, nesterov=nesterov)]
  if use_decay:
    parts.append(masks.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def sgd_momentum(
  learning_rate: Hyperparam,
  momentum: Hyperparam = 0.9,
  *,
  nesterov: bool = False,
  weight_decay: Hyperparam = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SGD with heavy-ball or Nesterov momentum and optional decoupled weight decay.

  The momentum is in the accumulation form that Smith et al. (2018) assume
  and `optax.sgd` uses: `A <- m*A + g; w <- w - lr*A` (Nesterov:
  `w <- w - lr*(g + m*A)`), so a cut of the learning rate acts at once and no
  "momentum correction" is needed when it changes. Weight decay is decoupled
  from the momentum (SGDW, Loshchilov & Hutter 2019): `w <- w - lr*(A + wd*w)`;
  as in `optax.adamw` it is multiplied by the learning rate.

  Every hyperparameter may be a float, an optax schedule or a `Plan`, whose
  value at a step is that of the phase containing it. They live in the
  optimizer state (`optax.inject_hyperparams`), so a change between phases
  never recompiles the update; `current_hyperparams(state)` reads them.

  Args:
    learning_rate: `lr`.
    momentum: `m` in [0, 1); 0 gives plain SGD.
    nesterov: use Nesterov momentum.
    weight_decay: decoupled weight decay `wd` (0: none).
    mask: which parameters are decayed, as in `optax.add_decayed_weights`
      (e.g. not batch-norm scales and biases, as Goyal et al. 2017).

  Returns:
    An optax `GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a constant momentum outside [0, 1) or a negative rate.
  """
  return optax.inject_hyperparams(_sgd_momentum, static_args=("nesterov", "mask", "use_decay"))(
    learning_rate=resolve(learning_rate, "learning_rate", "learning_rate", low=0.0),
    momentum=resolve(momentum, "momentum", "momentum", low=0.0, high=1.0),
    weight_decay=resolve(weight_decay, "weight_decay", "weight_decay", low=0.0),
    nesterov=nesterov,
    mask=mask,
    use_decay=not is_zero(weight_decay),
  )
