"""Models from outside the package: an import path, or a name given to `register`.

`model.name` may be `"my_pkg.models:Net"`: a flax linen module class, a flax
NNX module class, or a factory function. Its parameters come from the
config's `model` block; `num_classes` (as `vocab_size` too, for a language
model), `dtype` and `ghost_batch_size` are passed when it takes them and the
block does not set them. How it is called (its mode, call-time random
streams, extra inputs) is read from it and its `model.call` block
(`adapter.CallSpec`); `build` returns the `adapter.ModelAdapter`.

An NNX module runs through `NNXModel`, flax's `nnx.bridge.ToLinen`: the
module's `nnx.Param`s become the `params` collection and its
`nnx.BatchStat`s `batch_stats`, so the train state, its shardings, the
donation, the checkpoints and the one compile per batch size are the same
as for a linen model. Inside the jitted step the module is rebuilt from that
state (an `nnx.merge`) and called in `train()` or `eval()` mode, with
`deterministic=` and call-time `rngs` where its `__call__` takes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

from bigbatch.importing import import_object
from bigbatch.models import adapter as ad
from bigbatch.models import batch_norm

# what the trainer passes when a model takes it and the config does not set it
AUTOMATIC = ("num_classes", "vocab_size", "dtype", "ghost_batch_size")


class NNXModel(bridge.ToLinen):
  """An NNX module as a linen module called `model(x, train=..., **extras)`.

  Attributes (besides `ToLinen`'s):
    mode_at_call: a keyword of the module's `__call__` that takes the mode
      (`deterministic`, `train`, ...); None: `train()` / `eval()` alone.
    rngs_at_call: the module's `__call__` takes `rngs`: it gets
      `nnx.Rngs(dropout=...)`, drawn from the step's `dropout` stream.
    ghost: the ghost batch its `nnx.BatchNorm`s take in training (None: the
      axis they name, if any; `batch_norm`).
  """

  mode_at_call: str | None = None
  rngs_at_call: bool = False
  ghost: int | None = None

  def __call__(self, x, train: bool = True, **extras):
    # without a dropout stream (evaluation) a fixed key: a model in eval() draws nothing
    key = self.make_rng("dropout") if self.has_rng("dropout") else jax.random.key(0)
    mode, rngs_at_call, ghost = self.mode_at_call, self.rngs_at_call, self.ghost

    def method(module: nnx.Module, x, **extras):
      # Dropout samples, BatchNorm uses and updates the batch's statistics, or not
      module.train() if train else module.eval()
      if train:
        batch_norm.intercept_nnx(module, ghost)
      if rngs_at_call:
        extras["rngs"] = nnx.Rngs(dropout=key)
      if mode is not None:
        extras[mode] = ad.mode_value(mode, train)
      return module(x, **extras)

    return super().__call__(x, nnx_method=method, **extras)


def import_model(path: str) -> Any:
  """The object `"package.module:Name"` names; a ValueError naming `model.name` else."""
  return import_object(path, "model.name")


def _kind(model: Any, name: str) -> str:
  """`linen`, `nnx` or `factory`, or a ValueError saying why `model` is none of them."""
  if inspect.isclass(model) and issubclass(model, nn.Module):
    return "linen"
  if inspect.isclass(model) and issubclass(model, nnx.Module):
    if not _takes(model.__init__, "rngs"):
      raise ValueError(
        f"model.name: {name}.__init__ takes no `rngs` argument; an NNX module is built "
        "with rngs=nnx.Rngs(...)"
      )
    return "nnx"
  if callable(model) and not inspect.isclass(model):
    return "factory"
  raise ValueError(
    f"model.name: {name} is a {type(model).__name__}, not a flax linen or NNX module class "
    "or a function that builds one"
  )


def _takes(function: Callable, parameter: str) -> bool:
  parameters = inspect.signature(function).parameters
  return parameter in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _parameters(model: Any, kind: str) -> set[str] | None:
  """The names `model` can be given (None: any, it takes **kwargs)."""
  if kind == "linen":
    return set(model.__dataclass_fields__) - {"parent", "name"}
  parameters = inspect.signature(model.__init__ if kind == "nnx" else model).parameters
  if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
    return None
  return set(parameters) - {"self", "rngs"}


def _checked_kwargs(model, kind, name, automatic, fields) -> dict[str, Any]:
  """The config's `fields` (each one the model takes) and the `automatic` values it takes."""
  known = _parameters(model, kind)
  if known is not None:
    for key in fields:
      if key not in known:
        allowed = ", ".join(sorted(known)) or "none"
        word = "field" if kind == "linen" else "parameter"
        raise ValueError(f"model.{key}: not a {word} of {name}; allowed: {allowed}")
  given = {k: v for k, v in automatic.items() if (known is None or k in known) and k not in fields}
  return {**given, **fields}


def _construct(model: Any, kind: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
  built = model(**kwargs)
  if isinstance(built, nn.Module):
    return built
  raise ValueError(
    f"model.name: {name}() returned a {type(built).__name__}, not a flax linen module "
    "(a function that builds an NNX module must take `rngs`)"
  )


def _init_mode(model, kind: str, name: str, call: ad.CallSpec, fields) -> str | None:
  """The constructor field or factory parameter that fixes the mode, if the model's
  mode is given when it is built (lm1b's `deterministic`)."""
  known = _parameters(model, kind) or set()
  if call.mode.startswith("init:"):
    field = call.mode.removeprefix("init:")
    if field not in known:
      raise ValueError(f"model.call.mode: {name} takes no `{field}` when it is built")
    return field
  if call.mode != "auto":
    return None
  if kind == "linen" and ad.mode_keyword(ad.call_parameters(model.__call__)):
    return None  # the call takes the mode
  return next((f for f in ad.MODE_ARGS if f in known and f not in fields), None)


def _call_mode(parameters, name: str, call: ad.CallSpec) -> str | None:
  """The keyword among a call's `parameters` that takes the mode (None: it takes none)."""
  if call.mode in ad.MODE_ARGS:
    if call.mode not in parameters:
      raise ValueError(f"model.call.mode: {name}.__call__ takes no `{call.mode}` argument")
    return call.mode
  return ad.mode_keyword(parameters) if call.mode == "auto" else None


def _linen(model, kind, name, kwargs, call, ghost, fields) -> ad.ModelAdapter:
  field = _init_mode(model, kind, name, call, fields)
  if field is None:
    train_module = eval_module = _construct(model, kind, name, kwargs)
    mode = _call_mode(ad.call_parameters(type(train_module).__call__), name, call)
  else:  # built once per mode, as flax's lm1b builds a train and an eval config
    train_module = _construct(model, kind, name, {**kwargs, field: ad.mode_value(field, True)})
    eval_module = _construct(model, kind, name, {**kwargs, field: ad.mode_value(field, False)})
    mode = None
  parameters = ad.call_parameters(type(train_module).__call__)
  inputs = ad.extra_inputs(parameters, call, name, skip={mode} if mode else set())
  return ad.ModelAdapter(train_module, eval_module, name, mode, inputs, call.targets, ghost)


def _nnx(model, kind, name, kwargs, call, ghost) -> ad.ModelAdapter:
  if call.mode.startswith("init:"):
    raise ValueError(
      f"model.call.mode: {name} is an NNX module, switched by train() and eval(); "
      "init:NAME is for a linen module or factory"
    )
  cls = model if kind == "nnx" else type(nnx.eval_shape(lambda: model(**kwargs, rngs=nnx.Rngs(0))))
  parameters = ad.call_parameters(cls.__call__)
  mode = _call_mode(parameters, name, call)
  inputs = ad.extra_inputs(parameters, call, name, skip={"rngs", mode})
  module = NNXModel(
    model,
    kwargs=FrozenDict(kwargs),
    mode_at_call=mode,
    rngs_at_call="rngs" in parameters,
    ghost=ghost,
  )
  return ad.ModelAdapter(module, module, name, "train", inputs, call.targets, ghost)


def build(
  model: Any,
  name: str,
  automatic: dict[str, Any],
  fields: dict[str, Any],
  call: ad.CallSpec | None = None,
) -> ad.ModelAdapter:
  """`model` (a class or factory) built with the config's `fields` and the `automatic`
  values it takes, and how bigbatch calls it.

  Raises:
    ValueError: naming `model.FIELD`, `model.call.FIELD` or `model.name`.
  """
  call = call or ad.CallSpec()
  kind = _kind(model, name)
  kwargs = _checked_kwargs(model, kind, name, automatic, fields)
  ghost = automatic.get("ghost_batch_size")
  if kind == "nnx" or (kind == "factory" and _takes(model, "rngs")):
    return _nnx(model, kind, name, kwargs, call, ghost)
  return _linen(model, kind, name, kwargs, call, ghost, fields)


def flax_batch_norms(model: ad.ModelAdapter, inputs: jax.ShapeDtypeStruct) -> tuple[Any, list]:
  """The model's abstract variables and the axis name (None: none) of each flax
  BatchNorm, linen or NNX, that it calls, from one `jax.eval_shape` of its init (nothing
  is allocated)."""
  key = jax.random.key(0)
  module = model.eval_module
  if isinstance(module, NNXModel):

    def construct():
      return module.nnx_class(*module.args, **module.kwargs, rngs=nnx.Rngs(0))

    built = nnx.eval_shape(construct)
    norms = [m.axis_name for _, m in nnx.iter_modules(built) if isinstance(m, nnx.BatchNorm)]
    return jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x), inputs), norms
  seen: list[Any] = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      seen.append(context.module.axis_name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x), inputs)
  return variables, seen


def takes_ghost_batch(model: ad.ModelAdapter) -> bool:
  """Whether the model was built with a `ghost_batch_size` of its own."""
  module = model.module
  if isinstance(module, NNXModel):
    return "ghost_batch_size" in module.kwargs
  return "ghost_batch_size" in getattr(module, "__dataclass_fields__", {})
