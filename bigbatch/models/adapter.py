"""How bigbatch calls a model: the one boundary between the step and a model as written.

Models are written to their authors' conventions, not to bigbatch's. A
`ModelAdapter` is chosen once, when the experiment is built, and the step
only ever calls its `init` and `apply` (the signatures of a linen module's,
with `train=`), so the step never asks what kind of model it has. What the
adapter reads from the model:

- the mode: a linen `__call__` taking `train=`, `training=` or
  `deterministic=`; or, with no mode argument, a constructor field or factory
  parameter of one of those names (a train and an eval module are built, as
  flax's lm1b example builds its configs); or no mode at all. An NNX module is
  switched with `train()` / `eval()` and given `deterministic=` when its
  `__call__` takes it (`plugins.NNXModel`).
- call-time random streams: an NNX `__call__` taking `rngs` gets
  `nnx.Rngs(dropout=...)` from the step's per-example keys.
- other arguments of `__call__`: those with defaults are left alone; a
  required one is filled when bigbatch can (`positions`, `inputs_positions`
  and `position_ids`: each token's position; `cache`: None), or from the
  config's `model.call.inputs`; else it is one line naming it.
- outputs: a tuple's first element is the logits (Gemma returns
  `(logits, cache)`).
- flax's BatchNorm naming an axis, or a ghost batch for a model that takes
  none: `batch_norm.linen_interceptor` / `NNXModel`'s `ghost`.

What cannot be detected is the `model.call` block (`CallSpec`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from bigbatch.models import batch_norm

# the keyword a model's train/eval mode goes by, and its value in training
MODE_ARGS = {"train": True, "training": True, "is_training": True, "deterministic": False}
MODES = ("auto", "none", *MODE_ARGS, *(f"init:{name}" for name in MODE_ARGS))
# what bigbatch can give a call argument besides a batch key
DERIVED = ("positions", "causal_mask", "none")
# what a call argument of this name gets when the config does not say
AUTOMATIC_INPUTS = {
  "positions": "positions",
  "inputs_positions": "positions",
  "position_ids": "positions",
  "cache": "none",
}
TARGETS = ("next", "inputs")


@dataclasses.dataclass(frozen=True)
class CallSpec:
  """`model.call`: how the model is called, where bigbatch cannot tell by itself.

  Attributes:
    mode: `auto` (detect), `none` (the model has no train/eval mode), a call keyword
      (`train`, `training`, `is_training`, `deterministic`), or `init:NAME`: a
      constructor field or factory parameter that fixes the mode.
    inputs: call argument -> a batch key, or `positions`, `causal_mask` (True where a
      token may attend: `[B, T, T]`) or `none`.
    targets: `next` (the logits at position t predict token t+1, bigbatch's labels) or
      `inputs` (the model shifts its inputs itself: position t predicts token t).
  """

  mode: str = "auto"
  inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  targets: str = "next"

  def __post_init__(self) -> None:
    if self.mode not in MODES:
      raise ValueError(f"model.call.mode: {self.mode!r} is not one of {', '.join(MODES)}")
    if self.targets not in TARGETS:
      raise ValueError(f"model.call.targets: {self.targets!r} is not one of {', '.join(TARGETS)}")
    for name, source in self.inputs.items():
      if not isinstance(source, str) or not source:
        raise ValueError(
          f"model.call.inputs.{name}: {source!r} is not a batch key nor one of {', '.join(DERIVED)}"
        )
    object.__setattr__(self, "inputs", dict(self.inputs))

  def to_dict(self) -> dict[str, Any]:
    return {"mode": self.mode, "inputs": dict(self.inputs), "targets": self.targets}


def call_parameters(fn: Any) -> dict[str, inspect.Parameter]:
  """`fn`'s parameters after `self` and the input."""
  parameters = list(inspect.signature(fn).parameters.values())
  if parameters and parameters[0].name == "self":
    parameters = parameters[1:]
  return {p.name: p for p in parameters[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def mode_keyword(parameters: Mapping[str, inspect.Parameter]) -> str | None:
  """The mode keyword among a call's `parameters`, if it takes one."""
  return next((name for name in MODE_ARGS if name in parameters), None)


def mode_value(keyword: str, train: bool) -> bool:
  return train if MODE_ARGS[keyword] else not train


def _positions(inputs) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape[:2])


def _causal_mask(inputs) -> jax.Array:
  length = inputs.shape[1]
  mask = jnp.tril(jnp.ones((length, length), jnp.bool_))
  return jnp.broadcast_to(mask, (inputs.shape[0], length, length))


def extra_inputs(
  parameters: Mapping[str, inspect.Parameter], call: CallSpec, name: str, skip: set[str]
) -> dict[str, str]:
  """Call argument -> source, for the arguments of a call that bigbatch fills.

  Raises:
    ValueError: naming `model.call.inputs` and the argument bigbatch cannot fill.
  """
  for given in call.inputs:
    if given not in parameters:
      raise ValueError(
        f"model.call.inputs.{given}: {name}.__call__ takes no such argument; it takes "
        f"{', '.join(parameters) or 'only its input'}"
      )
  sources = {}
  for key, parameter in parameters.items():
    if key in skip:
      continue
    if key in call.inputs:
      sources[key] = call.inputs[key]
    elif parameter.default is inspect.Parameter.empty:
      if key not in AUTOMATIC_INPUTS:
        raise ValueError(
          f"model.call.inputs: {name}.__call__ needs `{key}`, which bigbatch cannot fill; "
          f"set model.call.inputs.{key} to a batch key or one of {', '.join(DERIVED)}"
        )
      sources[key] = AUTOMATIC_INPUTS[key]
  return sources


def check_sources(sources: Mapping[str, str], features: tuple = ()) -> None:
  """Every batch key among `sources` is one the batch will hold (its inputs, its labels or
  a feature of the dataset's, `(name, shape, dtype)`).

  Raises:
    ValueError: naming `model.call.inputs.ARG`, what the batch holds and the field that adds.
  """
  held = ("inputs", "labels", *(name for name, _, _ in features))
  for key, source in sources.items():
    if source not in DERIVED and source not in held:
      raise ValueError(
        f"model.call.inputs.{key}: the batch holds no {source!r}, only {', '.join(held)}; "
        "dataset.features adds a source's own"
      )


def fill(sources: Mapping[str, str], inputs, batch: Mapping[str, Any] | None) -> dict[str, Any]:
  """The extra call arguments for `inputs` from `batch` or derived from the inputs."""
  out = {}
  for key, source in sources.items():
    if source == "none":
      out[key] = None
    elif source == "positions":
      out[key] = _positions(inputs)
    elif source == "causal_mask":
      out[key] = _causal_mask(inputs)
    elif batch is not None and source in batch:
      out[key] = batch[source]
    else:
      raise ValueError(
        f"model.call.inputs.{key}: the batch has no {source!r}; it has "
        f"{', '.join(sorted(batch or {})) or 'only inputs and labels'} (dataset.features "
        "adds a source's own)"
      )
  return out


def logits_of(outputs: Any) -> Any:
  """The logits among a model's outputs: a tuple's first element (Gemma's `(logits, cache)`)."""
  return outputs[0] if isinstance(outputs, tuple | list) else outputs


@dataclasses.dataclass(frozen=True, eq=False)
class ModelAdapter:
  """A model as bigbatch calls it: `init` and `apply` as a linen module's with `train=`.

  Attributes:
    train_module, eval_module: the linen modules of each mode (the same module unless
      the mode is fixed when it is built; an NNX model is a `plugins.NNXModel`).
    name: `model.name`, for messages.
    mode: the call keyword the mode goes by (None: none, or fixed when built).
    inputs: extra call arguments -> their source (`fill`).
    targets: `next` or `inputs` (`CallSpec.targets`).
    ghost: the ghost batch intercepted flax BatchNorms take (None: their own axis).
    builtin: one of bigbatch's models (known causal: the probe is skipped).
    features: the batch's own features, `(name, one example's shape, dtype)`
      (`DatasetSpec.features`): zeros of these stand in for them in `init` without a batch.
  """

  train_module: nn.Module
  eval_module: nn.Module
  name: str
  mode: str | None = "train"
  inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  targets: str = "next"
  ghost: int | None = None
  builtin: bool = False
  features: tuple = ()

  @property
  def module(self) -> nn.Module:
    """The training module (its class and fields: FLOPs, a ghost batch field)."""
    return self.train_module

  def _kwargs(self, inputs, train: bool, batch) -> dict[str, Any]:
    if batch is None:
      # init (the variables depend on the features' shapes alone) and the causal probe
      # (which compares two calls on the same features) call the model without a batch
      batch = {n: jnp.zeros((inputs.shape[0], *shape), dtype) for n, shape, dtype in self.features}
    kwargs = fill(self.inputs, inputs, batch)
    if self.mode is not None:
      kwargs[self.mode] = mode_value(self.mode, train)
    return kwargs

  def init(self, rngs, inputs, *, train: bool = False, batch=None):
    """The model's variables, as `module.init` gives them (in eval mode by default)."""
    module = self.train_module if train else self.eval_module
    # an annotated NNX module would place its variables as it is built, and fail
    # outside a mesh: bigbatch places the state itself
    with nnx.use_eager_sharding(False):
      return module.init(rngs, inputs, **self._kwargs(inputs, train, batch))

  def apply(self, variables, inputs, *, train: bool, rngs=None, mutable=False, batch=None):
    """The model's logits (with the mutated collections when `mutable`), as
    `module.apply` gives them; in training flax's BatchNorms take the statistics their
    author meant (`batch_norm`)."""
    module = self.train_module if train else self.eval_module
    intercept = (
      nn.intercept_methods(batch_norm.linen_interceptor(self.ghost))
      if train
      else contextlib.nullcontext()
    )
    with intercept, nnx.use_eager_sharding(False):
      out = module.apply(
        variables, inputs, rngs=rngs, mutable=mutable, **self._kwargs(inputs, train, batch)
      )
    if mutable:
      return logits_of(out[0]), out[1]
    return logits_of(out)

  def targets_of(self, batch: Mapping[str, Any]) -> Any:
    """What the logits are scored against: the labels, or the inputs for a model that
    shifts them itself."""
    return batch["inputs"] if self.targets == "inputs" else batch["labels"]

  def scored(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch a loss function sees: the inputs, the targets (`targets_of`) as
    `labels`, and the dataset's own features (not the step's `rng` nor eval's `mask`)."""
    out = {key: value for key, value in batch.items() if key not in ("rng", "mask")}
    return out | {"labels": self.targets_of(batch)}


def as_adapter(model: Any) -> ModelAdapter:
  """`model` as an adapter: itself, or a linen module called as it was written."""
  if isinstance(model, ModelAdapter):
    return model
  if not isinstance(model, nn.Module):
    raise TypeError(f"model: a flax linen module or a ModelAdapter, got {type(model).__name__}")
  parameters = call_parameters(type(model).__call__)
  mode = mode_keyword(parameters)
  name = type(model).__qualname__
  inputs = extra_inputs(parameters, CallSpec(), name, skip={mode} if mode else set())
  return ModelAdapter(model, model, name, mode=mode, inputs=inputs)
