"""Adam, AdamW and AMSGrad, schedule- and plan-aware.

Each is the optax chain of the same name under `optax.inject_hyperparams`,
so `b1` (the momentum of Adam; a plan's momentum feeds it), the learning rate
and the weight decay may follow a schedule or a `Plan` without recompiling.
When `b1` changes between phases the bias correction uses the current `b1`
(`1 - b1**t`), as optax does for a scheduled `b1`; after a few hundred
steps the correction is 1 either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from bigbatch.optim import masks
from bigbatch.optim.hyperparams import Hyperparam, is_zero, resolve

_STATIC = (
  "b2",
  "eps",
  "eps_root",
  "mu_dtype",
  "nesterov",
  "mask",
  "bias_correction",
  "kind",
  "use_decay",
)


def _adam_family(
  learning_rate,
  b1,
  weight_decay,
  *,
  b2,
  eps,
  eps_root,
  mu_dtype,
  nesterov,
  mask,
  bias_correction,
  kind,
  use_decay,
):
  if kind == "amsgrad":
    scale = optax.scale_by_amsgrad(
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=eps_root,
      mu_dtype=mu_dtype,
      bias_correction_mu=bias_correction,
      bias_correction_nu=bias_correction,
    )
  else:
    scale = optax.scale_by_adam(
      b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
    )
  parts = [scale]
  if use_decay:
    parts.append(masks.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def _build(kind, learning_rate, b1, weight_decay, *, b2, eps, **static):
  # b2 and eps that are numbers stay static, as in optax; a plan or a schedule of
  # them (an Adam rule that moves them with the batch) lives in the state
  moving = {
    name: resolve(value, name, name)
    for name, value in (("b2", b2), ("eps", eps))
    if not isinstance(value, int | float)
  }
  fixed = {name: value for name, value in (("b2", b2), ("eps", eps)) if name not in moving}
  return optax.inject_hyperparams(
    _adam_family, static_args=tuple(k for k in _STATIC if k not in moving)
  )(
    learning_rate=resolve(learning_rate, "learning_rate", "learning_rate", low=0.0),
    b1=resolve(b1, "b1", "momentum", low=0.0, high=1.0),
    weight_decay=resolve(weight_decay, "weight_decay", "weight_decay", low=0.0),
    kind=kind,
    use_decay=not is_zero(weight_decay),
    **moving,
    **fixed,
    **static,
  )


def _check_b2(b2: Hyperparam) -> None:
  if isinstance(b2, int | float) and not 0.0 <= b2 < 1.0:
    raise ValueError(f"b2: must be in [0, 1), got {b2}")


def adam(
  learning_rate: Hyperparam,
  b1: Hyperparam = 0.9,
  b2: Hyperparam = 0.999,
  eps: Hyperparam = 1e-8,
  *,
  eps_root: float = 0.0,
  mu_dtype: Any | None = None,
  nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Adam (Kingma & Ba 2015), as `optax.adam`, with plan-aware `lr` and `b1`.

  Args:
    learning_rate: float, optax schedule or `Plan`.
    b1: first-moment decay; float, schedule or `Plan` (its momentum).
    b2, eps: as in `optax.adam`; a schedule or a `Plan` whose Adam rule moves them
      (`bigbatch.plan.adam_rules`) keeps them in the optimizer's state.
    eps_root, mu_dtype, nesterov: as in `optax.adam`.
  """
  _check_b2(b2)
  return _build(
    "adam",
    learning_rate,
    b1,
    0.0,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    nesterov=nesterov,
    mask=None,
    bias_correction=True,
  )


def adamw(
  learning_rate: Hyperparam,
  b1: Hyperparam = 0.9,
  b2: Hyperparam = 0.999,
  eps: Hyperparam = 1e-8,
  *,
  weight_decay: Hyperparam = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  eps_root: float = 0.0,
  mu_dtype: Any | None = None,
  nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """AdamW (Loshchilov & Hutter 2019), as `optax.adamw`: decay decoupled from Adam.

  The decay is multiplied by the learning rate: `w <- w - lr*(adam + wd*w)`.

  Args:
    learning_rate, b1: float, optax schedule or `Plan`.
    weight_decay: float, schedule or `Plan`.
    mask: which parameters are decayed, as in `optax.adamw`.
    b2, eps: as in `optax.adamw`; also a schedule or a `Plan` (see `adam`).
    eps_root, mu_dtype, nesterov: as in `optax.adamw`.
  """
  _check_b2(b2)
  return _build(
    "adam",
    learning_rate,
    b1,
    weight_decay,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    nesterov=nesterov,
    mask=mask,
    bias_correction=True,
  )


def amsgrad(
  learning_rate: Hyperparam,
  b1: Hyperparam = 0.9,
  b2: Hyperparam = 0.999,
  eps: Hyperparam = 1e-8,
  *,
  bias_correction: bool = True,
  eps_root: float = 0.0,
  mu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AMSGrad (Reddi et al. 2018): Adam with the running maximum of the second moment.

  Args:
    learning_rate, b1: float, optax schedule or `Plan`.
    bias_correction: True matches `optax.amsgrad` (moments bias-corrected
      before the maximum); False is the paper's algorithm,
      `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; vmax = max(vmax, v);
      w -= lr m / (sqrt(vmax) + eps)`.
    b2, eps: as in `optax.amsgrad`; also a schedule or a `Plan` (see `adam`).
    eps_root, mu_dtype: as in `optax.amsgrad`.
  """
  _check_b2(b2)
  return _build(
    "amsgrad",
    learning_rate,
    b1,
    0.0,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    nesterov=False,
    mask=None,
    bias_correction=bias_correction,
  )
