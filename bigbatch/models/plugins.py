"""Models from outside the package: an import path, or a name given to `register`.

`model.name` may be `"my_pkg.models:Net"`: a flax linen module class, a flax
NNX module class, or a factory function. Its parameters come from the
config's `model` block; `num_classes` (as `vocab_size` too, for a language
model), `dtype` and `ghost_batch_size` are passed when it takes them and the
block does not set them.

An NNX module runs through `NNXModel`, flax's `nnx.bridge.ToLinen`: the
module's `nnx.Param`s become the `params` collection and its
`nnx.BatchStat`s `batch_stats`, so the train state, its shardings, the
donation, the checkpoints and the one compile per batch size are the same
as for a linen model. Inside the jitted step the module is rebuilt from that
state (an `nnx.merge`) and called in `train()` or `eval()` mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

from bigbatch.importing import import_object

# what the trainer passes when a model takes it and the config does not set it
AUTOMATIC = ("num_classes", "vocab_size", "dtype", "ghost_batch_size")


def _train_call(module: nnx.Module, x):
  module.train()  # Dropout samples, BatchNorm uses and updates the batch's statistics
  return module(x)


def _eval_call(module: nnx.Module, x):
  module.eval()
  return module(x)


class NNXModel(bridge.ToLinen):
  """An NNX module as a linen module called `model(x, train=...)`, as bigbatch calls one."""

  def __call__(self, x, train: bool = True):
    return super().__call__(x, nnx_method=_train_call if train else _eval_call)


def import_model(path: str) -> Any:
  """The object `"package.module:Name"` names; a ValueError naming `model.name` else."""
  return import_object(path, "model.name")


def _kind(model: Any, name: str) -> str:
  """`linen`, `nnx` or `factory`, or a ValueError saying why `model` is none of them."""
  if inspect.isclass(model) and issubclass(model, nn.Module):
    if not _takes(model.__call__, "train"):
      raise ValueError(
        f"model.name: {name}.__call__ takes no `train` argument; bigbatch calls "
        "model.apply(variables, x, train=True|False)"
      )
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


def build(model: Any, name: str, automatic: dict[str, Any], fields: dict[str, Any]) -> nn.Module:
  """`model` (a class or factory) built with the config's `fields` and the `automatic`
  values it takes, as a linen module.

  Raises:
    ValueError: naming `model.FIELD` or `model.name`.
  """
  kind = _kind(model, name)
  known = _parameters(model, kind)
  if known is not None:
    for key in fields:
      if key not in known:
        allowed = ", ".join(sorted(known)) or "none"
        word = "field" if kind == "linen" else "parameter"
        raise ValueError(f"model.{key}: not a {word} of {name}; allowed: {allowed}")
  given = {k: v for k, v in automatic.items() if (known is None or k in known) and k not in fields}
  kwargs = {**given, **fields}
  if kind == "linen":
    return model(**kwargs)
  if kind == "nnx" or _takes(model, "rngs"):
    return NNXModel(model, kwargs=FrozenDict(kwargs))
  built = model(**kwargs)
  if isinstance(built, nn.Module):
    return built
  raise ValueError(
    f"model.name: {name}() returned a {type(built).__name__}, not a flax linen module "
    "(a function that builds an NNX module must take `rngs`)"
  )
