"""The paper's models in flax linen, every batch norm a ghost batch norm, and your own.

`create_model(name, num_classes=..., ghost_batch_size=..., **fields)` builds
one by name; the defaults below are the published architectures, and any
field can be overridden from a config's `model` block. A name added with
`register`, or an import path (`"my_pkg.models:Net"`: a linen or NNX module
class, or a factory; see `bigbatch.models.plugins`), builds a model of yours.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigbatch.models.adapter import CallSpec, ModelAdapter, as_adapter
from bigbatch.models.ghost_norm import GhostBatchNorm
from bigbatch.models.inception import InceptionResNetV2
from bigbatch.models.plugins import NNXModel, build, import_model
from bigbatch.models.resnet import ResNet, WideResNet
from bigbatch.models.small import MLP, ConvNet
from bigbatch.models.transformer import PRESETS, Transformer

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def compute_dtype(name: str = "auto") -> Any:
  """The dtype activations are computed in: `auto` is bfloat16 on GPU/TPU, float32 on CPU."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype: {name!r} is not one of {', '.join(COMPUTE_DTYPES)}")
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def init_rngs(rng: jax.Array) -> dict[str, jax.Array]:
  """The random streams a model's `init` gets: `params`, and `dropout` for an NNX
  module whose `nnx.Dropout` takes its stream when it is built. The `params` stream
  alone decides the parameters, so a linen model's are what `init(rng, ...)` gives."""
  return {"params": rng, "dropout": jax.random.fold_in(rng, 1)}


# name -> (class, default fields)
MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
  "resnet50": (ResNet, {"stage_sizes": (3, 4, 6, 3), "width": 64}),
  "wrn16_4": (WideResNet, {"depth": 16, "widen": 4}),
  "inception_resnet_v2": (InceptionResNetV2, {"blocks": (10, 20, 10), "scales": (0.17, 0.1, 0.2)}),
  # MNIST-1D: 40 samples per signal; three stride-2 convolutions as the
  # dataset's reference CNN, with ghost batch norm.
  "cnn1d": (ConvNet, {"channels": (32, 32, 32), "kernel": (5,), "strides": (2, 2, 2)}),
  "tiny_cnn": (ConvNet, {"channels": (8, 16), "kernel": (3, 3), "strides": (1, 2)}),
  # no batch norm: for checks that must not depend on how the batch is split
  "mlp": (MLP, {"features": (32, 32)}),
  # a byte-level language model; vocab_size is the dataset's classes
  "transformer": (Transformer, {k: v for k, v in PRESETS["lm_tiny"].items() if k != "vocab_size"}),
}


_BUILTIN = frozenset(MODELS)


def register(name: str, model: Any, **defaults: Any) -> None:
  """Makes `model.name: NAME` build `model` (a linen or NNX module class, or a factory),
  with `defaults` under the config's `model` fields.

  Raises:
    ValueError: if `name` is taken or has a colon (the mark of an import path).
  """
  if name in MODELS or ":" in name:
    raise ValueError(f"models.register: {name!r} is taken or has a ':'; taken: {', '.join(MODELS)}")
  MODELS[name] = (model, dict(defaults))


def create_adapter(
  name: Any,
  *,
  num_classes: int,
  ghost_batch_size: int | None = None,
  dtype: Any = jnp.float32,
  call: CallSpec | None = None,
  **fields: Any,
) -> ModelAdapter:
  """Builds a model by name or import path, and how bigbatch calls it.

  Args:
    name: one of `MODELS` (the paper's and those given to `register`), an
      import path `"package.module:Name"`, or the class or factory itself.
    num_classes: output logits.
    ghost_batch_size: examples per batch-norm ghost batch (None: whole batch,
      or the axis a flax BatchNorm names; `bigbatch.models.batch_norm`).
    dtype: compute dtype; parameters are float32 either way.
    call: the config's `model.call` (`adapter.CallSpec`; None: detect everything).
    **fields: overrides of the model's default fields.

  Raises:
    ValueError: naming `model.name`, `model.call.FIELD` or the unknown `model.FIELD`.
  """
  # a language model's classes are its vocabulary
  automatic = {
    "num_classes": num_classes,
    "vocab_size": num_classes,
    "ghost_batch_size": ghost_batch_size,
    "dtype": dtype,
  }
  if not isinstance(name, str):  # the class or factory itself, from Python
    return build(name, getattr(name, "__qualname__", repr(name)), automatic, fields, call)
  if ":" in name:
    return build(import_model(name), name, automatic, fields, call)
  if name not in MODELS:
    raise ValueError(
      f"model.name: {name!r} is not one of {', '.join(MODELS)}, nor an import path "
      "'package.module:Name'"
    )
  cls, defaults = MODELS[name]
  adapter = build(cls, name, automatic, {**defaults, **fields}, call)
  # the paper's models and the Transformer are known causal: no probe needed
  return dataclasses.replace(adapter, builtin=name in _BUILTIN)


def create_model(name: Any, **options: Any) -> nn.Module:
  """The linen module of `create_adapter(name, **options)` (a model whose mode is fixed
  when it is built: the training one). Takes `create_adapter`'s arguments."""
  return create_adapter(name, **options).module


__all__ = [
  "MLP",
  "MODELS",
  "CallSpec",
  "ConvNet",
  "GhostBatchNorm",
  "InceptionResNetV2",
  "ModelAdapter",
  "NNXModel",
  "ResNet",
  "Transformer",
  "WideResNet",
  "as_adapter",
  "create_adapter",
  "create_model",
  "init_rngs",
  "register",
]
