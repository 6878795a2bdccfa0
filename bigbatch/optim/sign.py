"""PowerSign and AddSign (Bello et al. 2017), schedule- and plan-aware.

Bello, Zoph, Vasudevan & Le, "Neural Optimizer Search with Reinforcement
Learning" (ICML 2017), found two update rules that scale the gradient up
where it agrees in sign with its moving average and down where it does not.
With `m <- beta m + (1 - beta) g` (the average includes the current gradient):

    PowerSign: w <- w - lr * alpha^(f(t) sign(g) sign(m)) * g      (alpha = e)
    AddSign:   w <- w - lr * (alpha + f(t) sign(g) sign(m)) * g    (alpha = 1)

`f(t)` is the paper's internal decay of the sign term over `T` steps
(`sign_decay`): 1, or linear, cyclical or restart. As the other bigbatch
optimizers, each is an optax chain under `optax.inject_hyperparams`, so the
learning rate, `beta` (a plan's momentum feeds it, as it feeds Adam's `b1`)
and the weight decay may follow a schedule or a `Plan` without recompiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigbatch.optim import masks
from bigbatch.optim.hyperparams import Hyperparam, is_zero, resolve

SIGN_DECAYS = ("none", "linear", "cyclical", "restart")


def sign_decay(
  kind: str, decay_steps: int | None = None, num_periods: float = 1.0
) -> Callable[[jax.Array], jax.Array]:
  """The internal decay `f(t)` of Bello et al. (2017), as a function of the step.

  With `T = decay_steps` and `n = num_periods`: `none` is 1; `linear` is
  `1 - t/T`; `cyclical` is `0.5 (1 + cos(2 pi n t / T))`; `restart` is
  `0.5 (1 + cos(pi (t mod (T/n)) / (T/n)))`. The paper defines them for
  `t <= T`; past `T` each keeps its value at `T`, so a linear decay never
  turns the sign term around.

  Args:
    kind: one of `SIGN_DECAYS`.
    decay_steps: `T`, the steps the decay spans (the whole run in the paper).
    num_periods: `n`, the periods of `cyclical` and `restart`.

  Returns:
    A jit-compatible function of the step (an optax schedule).

  Raises:
    ValueError: naming the argument, for an unknown kind or a bad value.
  """
  if kind not in SIGN_DECAYS:
    raise ValueError(f"decay: {kind!r} is not one of {', '.join(SIGN_DECAYS)}")
  if kind == "none":
    return lambda step: jnp.ones([], jnp.float32)
  if decay_steps is None or decay_steps <= 0:
    raise ValueError(f"decay_steps: the {kind} decay needs T > 0 steps, got {decay_steps}")
  if num_periods <= 0:
    raise ValueError(f"num_periods: must be positive, got {num_periods}")
  total, periods = float(decay_steps), float(num_periods)

  def decay(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), total)
    if kind == "linear":
      return 1.0 - t / total
    if kind == "cyclical":
      return 0.5 * (1.0 + jnp.cos(2.0 * math.pi * periods * t / total))
    period = total / periods
    return 0.5 * (1.0 + jnp.cos(math.pi * jnp.mod(t, period) / period))

  return decay


class ScaleBySignState(NamedTuple):
  """State of `scale_by_power_sign` and `scale_by_add_sign`."""

  count: jax.Array  # int32, the step `t` of `f(t)`
  m: optax.Updates  # the moving average of the gradients


def _scale_by_sign(beta, internal_decay, gain) -> optax.GradientTransformation:
  """Multiplies each gradient by `gain(f(t) sign(g) sign(m))`, elementwise."""
  decay_fn = internal_decay if callable(internal_decay) else (lambda _: internal_decay)

  def init_fn(params):
    return ScaleBySignState(count=jnp.zeros([], jnp.int32), m=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    # a scheduled beta is a float32 array: keep m in its own dtype, or the state changes type
    m = optax.tree.cast_like(optax.tree.update_moment(updates, state.m, beta, order=1), state.m)
    f = decay_fn(state.count)

    def scale(g, m):
      agreement = f * jnp.sign(g) * jnp.sign(m)
      return (gain(agreement) * g).astype(g.dtype)

    updates = jax.tree.map(scale, updates, m)
    return updates, ScaleBySignState(count=optax.safe_increment(state.count), m=m)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_power_sign(
  beta: float | jax.Array = 0.9,
  alpha: float = math.e,
  internal_decay: float | optax.Schedule = 1.0,
) -> optax.GradientTransformation:
  """PowerSign's scaling, `alpha^(f(t) sign(g) sign(m)) g` (Bello et al. 2017).

  Args:
    beta: decay of the moving average `m` of the gradients.
    alpha: the base (e in the paper).
    internal_decay: `f(t)`, a number or a function of the step (`sign_decay`).
  """
  return _scale_by_sign(beta, internal_decay, lambda agreement: alpha**agreement)


def scale_by_add_sign(
  beta: float | jax.Array = 0.9,
  alpha: float = 1.0,
  internal_decay: float | optax.Schedule = 1.0,
) -> optax.GradientTransformation:
  """AddSign's scaling, `(alpha + f(t) sign(g) sign(m)) g` (Bello et al. 2017).

  Args:
    beta: decay of the moving average `m` of the gradients.
    alpha: the offset (1 in the paper).
    internal_decay: `f(t)`, a number or a function of the step (`sign_decay`).
  """
  return _scale_by_sign(beta, internal_decay, lambda agreement: alpha + agreement)


_SCALES = {"power_sign": scale_by_power_sign, "add_sign": scale_by_add_sign}
_STATIC = ("kind", "alpha", "decay", "decay_steps", "num_periods", "mask", "use_decay")


def _sign_family(
  learning_rate,
  beta,
  weight_decay,
  *,
  kind,
  alpha,
  decay,
  decay_steps,
  num_periods,
  mask,
  use_decay,
):
  parts = [_SCALES[kind](beta, alpha, sign_decay(decay, decay_steps, num_periods))]
  if use_decay:
    parts.append(masks.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def _build(
  kind, learning_rate, beta, weight_decay, *, alpha, decay, decay_steps, num_periods, mask
):
  if not alpha >= 1.0:
    # below 1, PowerSign steps further where g and m disagree, AddSign up the gradient
    raise ValueError(f"alpha: must be >= 1, got {alpha}")
  sign_decay(decay, decay_steps, num_periods)  # refuse bad values now, not inside the update
  return optax.inject_hyperparams(_sign_family, static_args=_STATIC)(
    learning_rate=resolve(learning_rate, "learning_rate", "learning_rate", low=0.0),
    beta=resolve(beta, "beta", "momentum", low=0.0, high=1.0),
    weight_decay=resolve(weight_decay, "weight_decay", "weight_decay", low=0.0),
    kind=kind,
    alpha=float(alpha),
    decay=decay,
    decay_steps=decay_steps,
    num_periods=float(num_periods),
    mask=mask,
    use_decay=not is_zero(weight_decay),
  )


def power_sign(
  learning_rate: Hyperparam,
  beta: Hyperparam = 0.9,
  *,
  alpha: float = math.e,
  decay: str = "none",
  decay_steps: int | None = None,
  num_periods: float = 1.0,
  weight_decay: Hyperparam = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """PowerSign (Bello et al. 2017): `w <- w - lr * alpha^(f(t) sign(g) sign(m)) * g`.

  Args:
    learning_rate: `lr`; float, optax schedule or `Plan`.
    beta: decay of `m <- beta m + (1 - beta) g`, in [0, 1); float, schedule
      or `Plan` (its momentum).
    alpha: the base, >= 1 (e in the paper).
    decay: `f(t)`, one of `SIGN_DECAYS` (see `sign_decay`).
    decay_steps: `T` of the decay (needed unless `decay` is `none`).
    num_periods: `n` of the `cyclical` and `restart` decays.
    weight_decay: decoupled weight decay `wd`, multiplied by the learning
      rate as in `optax.adamw`: `w <- w - lr*(update + wd*w)` (0: none).
    mask: which parameters are decayed, as in `optax.add_decayed_weights`.

  Returns:
    An optax `GradientTransformationExtraArgs`.

  Raises:
    ValueError: naming the argument, for a value outside its range.
  """
  return _build(
    "power_sign",
    learning_rate,
    beta,
    weight_decay,
    alpha=alpha,
    decay=decay,
    decay_steps=decay_steps,
    num_periods=num_periods,
    mask=mask,
  )


def add_sign(
  learning_rate: Hyperparam,
  beta: Hyperparam = 0.9,
  *,
  alpha: float = 1.0,
  decay: str = "none",
  decay_steps: int | None = None,
  num_periods: float = 1.0,
  weight_decay: Hyperparam = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AddSign (Bello et al. 2017): `w <- w - lr * (alpha + f(t) sign(g) sign(m)) * g`.

  Args:
    learning_rate, beta, decay, decay_steps, num_periods, weight_decay, mask:
      as in `power_sign`.
    alpha: the offset, >= 1 (1 in the paper: the step is 0 or 2g with f = 1).

  Returns:
    An optax `GradientTransformationExtraArgs`.

  Raises:
    ValueError: naming the argument, for a value outside its range.
  """
  return _build(
    "add_sign",
    learning_rate,
    beta,
    weight_decay,
    alpha=alpha,
    decay=decay,
    decay_steps=decay_steps,
    num_periods=num_periods,
    mask=mask,
  )
