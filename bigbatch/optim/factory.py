"""Any optax optimizer under a plan: a factory, its learning rate and momentum injected.

An optimizer factory is any function that takes a `learning_rate` and returns
an `optax.GradientTransformation` (`optax.lion`, `optax.contrib.muon`, one of
your own). `plan_aware` builds it under `optax.inject_hyperparams` with the
learning rate and, where it has one, its momentum-like argument (`momentum`,
`b1` or `beta`, or one named) as schedules of a `Plan`: they live in the
optimizer's state, so a new phase never recompiles the update, and a
decision taken while training changes them with `set_hyperparams`. Every
other argument is static, given once (a number, a flag, a mask).

Every optimizer also has a family, which says how a batch change moves its
learning rate (`bigbatch.plan.adam_rules`):

* `sgd`: the step is proportional to the gradient (SGD, momentum SGD,
  PowerSign and AddSign, whose factor on `g` is bounded): the paper's g-rule.
* `adaptive`: the step's size does not follow the gradient's (Adam and its
  kin, LAMB, Lion and the sign methods, Muon, LARS): Adam's rules. A batch
  k times larger then acts like a learning rate about sqrt(k) smaller, not k.

LARS is `adaptive`: its per-layer step is `lr eta ||w|| (g + wd w) / (||g|| +
wd ||w||)`, a normalised SGD whose length does not scale with the gradient,
which is the case Seesaw's sqrt(k) argument is made for. MLPerf's two LARS
recipes agree: from batch 32,768 to 65,536, their `lr / (1 - m)` grew 1.22
times (sqrt(2) is 1.41; the g-rule's 2).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optax

from bigbatch.importing import import_object
from bigbatch.optim.hyperparams import Hyperparam, resolve

FAMILIES = ("sgd", "adaptive")
# The family of each built-in optimizer (`bigbatch.optim.OPTIMIZERS`).
FAMILY = {
  "sgd_momentum": "sgd",
  "power_sign": "sgd",
  "add_sign": "sgd",
  "adam": "adaptive",
  "adamw": "adaptive",
  "amsgrad": "adaptive",
  "lars": "adaptive",
  "lamb": "adaptive",
  "lion": "adaptive",
  "muon": "adaptive",
}
# optax's factories whose family is known, by their shortest public import path.
_KNOWN = {
  **dict.fromkeys(("optax:sgd", "optax:noisy_sgd"), "sgd"),
  **dict.fromkeys(
    [
      f"optax:{name}"
      for name in (
        "adabelief adadelta adafactor adagrad adam adamax adamaxw adamw adan amsgrad fromage "
        "lamb lars lion nadam nadamw novograd radam rmsprop signum sm3 yogi"
      ).split()
    ]
    + ["optax.contrib:muon"],
    "adaptive",
  ),
}
# The names a factory's momentum-like argument goes by, tried in this order.
MOMENTUM_ARGS = ("momentum", "b1", "beta")


def factory_path(factory: Any) -> str:
  """The shortest import path that names `factory` (`optax:lion`, not
  `optax._src.alias:lion`), or its `module:name` where none shorter does."""
  module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
  if not module or not name:
    return repr(factory)
  parts = module.split(".")
  for end in range(1, len(parts)):
    prefix = ".".join(parts[:end])
    try:
      if getattr(importlib.import_module(prefix), name, None) is factory:
        return f"{prefix}:{name}"
    except Exception:  # a package that fails to import names nothing
      continue
  return f"{module}:{name}"


def resolve_factory(name: Any, field: str = "optimizer.name") -> Callable[..., Any]:
  """The factory an import path (`optax:lion`) names, or `name` itself if callable.

  Raises:
    ValueError: naming `field`: a path that does not import, or no function.
  """
  factory = import_object(name, field) if isinstance(name, str) else name
  if not callable(factory):
    raise ValueError(f"{field}: {name!r} is not a function that returns an optimizer")
  return factory


def factory_family(factory: Callable[..., Any]) -> str | None:
  """The family of one of optax's factories (`_KNOWN`), else None."""
  return _KNOWN.get(factory_path(factory))


def _parameters(factory: Callable[..., Any], path: str) -> Mapping[str, inspect.Parameter]:
  try:
    return inspect.signature(factory).parameters
  except (TypeError, ValueError):
    raise ValueError(
      f"optimizer.name: {path} has no signature to read its arguments from"
    ) from None


def find_momentum_arg(factory: Callable[..., Any], named: str | None = None) -> str | None:
  """The argument a plan's momentum feeds: `named`, else the first of `MOMENTUM_ARGS`
  the factory takes (None: it has none)."""
  if named is not None:
    return named
  parameters = _parameters(factory, factory_path(factory))
  return next((arg for arg in MOMENTUM_ARGS if arg in parameters), None)


def check_factory(
  factory: Callable[..., Any],
  options: Mapping[str, Any],
  learning_rate: float,
  named_momentum: str | None = None,
) -> str | None:
  """Refuses a factory the plan cannot drive; returns its momentum argument (or None).

  Checks, before anything trains, that it takes a `learning_rate`, every
  option and the named momentum argument (by its signature), and that it
  returns an `optax.GradientTransformation` when built with them.

  Raises:
    ValueError: one line naming the config field (`optimizer.name`,
      `optimizer.<option>`, `optimizer.momentum_arg`) and what is allowed.
  """
  path = factory_path(factory)
  parameters = _parameters(factory, path)
  takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
  named = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
  if "learning_rate" not in parameters and not takes_any:
    raise ValueError(f"optimizer.name: {path} takes no learning_rate argument (the plan drives it)")
  takes = ", ".join(n for n in named if n != "learning_rate") or "nothing else"
  for key in options:
    if key not in parameters and not takes_any:
      raise ValueError(f"optimizer.{key}: {path} takes no argument {key!r}; it takes {takes}")
  if named_momentum is not None and named_momentum not in parameters and not takes_any:
    raise ValueError(
      f"optimizer.momentum_arg: {path} takes no argument {named_momentum!r}; it takes {takes}"
    )
  try:
    built = factory(learning_rate=learning_rate, **options)
  except Exception as error:  # whatever the factory says of its arguments, on one line
    text = " ".join(str(error).split())
    raise ValueError(
      f"optimizer.name: {path} refused its options ({type(error).__name__}: {text})"
    ) from None
  if not isinstance(built, optax.GradientTransformation):
    raise ValueError(
      f"optimizer.name: {path} returned {type(built).__name__}, not an optax.GradientTransformation"
    )
  return find_momentum_arg(factory, named_momentum)


def plan_aware(
  factory: Callable[..., optax.GradientTransformation],
  learning_rate: Hyperparam,
  momentum: Hyperparam | None = None,
  *,
  momentum_arg: str | None = None,
  options: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """`factory(learning_rate=..., **options)` with its rate (and momentum) in its state.

  Args:
    factory: returns an `optax.GradientTransformation`; takes `learning_rate`.
    learning_rate: float, optax schedule or `Plan`.
    momentum: float, schedule or `Plan` (its momentum), fed to `momentum_arg`;
      None: the factory's own.
    momentum_arg: the factory's momentum-like argument (default: the first of
      `momentum`, `b1`, `beta` it takes). In the state it keeps its name if it
      is one of those, and is called `momentum` otherwise, so that
      `current_hyperparams` reports it.
    options: the factory's other arguments (a mapping: they may be called
      `momentum`), static.

  Returns:
    An optax `GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a momentum with nowhere to go, or a value out of range.
  """
  arg = find_momentum_arg(factory, momentum_arg)
  hyper = {"learning_rate": resolve(learning_rate, "learning_rate", "learning_rate", low=0.0)}
  names = {}
  if momentum is not None:
    if arg is None:
      raise ValueError(f"momentum: {factory_path(factory)} takes no momentum-like argument")
    state_name = arg if arg in MOMENTUM_ARGS else "momentum"
    hyper[state_name] = resolve(momentum, arg, "momentum", low=0.0, high=1.0)
    names[state_name] = arg
  options = {k: v for k, v in (options or {}).items() if k != arg or momentum is None}

  def build(**values: Any) -> optax.GradientTransformation:
    return factory(**{names.get(k, k): v for k, v in values.items()})

  keyword = inspect.Parameter.KEYWORD_ONLY
  build.__signature__ = inspect.Signature(
    [inspect.Parameter(name, keyword) for name in (*hyper, *options)]
  )
  return optax.inject_hyperparams(build, static_args=tuple(options))(**hyper, **options)
