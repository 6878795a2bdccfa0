"""The specs of what a run trains: data, model, schedule, optimizer and plan."""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Mapping
from typing import Any, ClassVar

from bigbatch.models.adapter import CallSpec
from bigbatch.plan import adam_rules, adaptive
from bigbatch.plan.checks import STRATEGIES as PLANNED
from bigbatch.schedules import SCHEDULES, make_schedule
from bigbatch.spec import fields
from bigbatch.spec.block import Block, freeze, import_path, is_block, thaw
from bigbatch.spec.fields import ConfigError, integer, one_of, text
from bigbatch.spec.optimizer import HOLD_BETAS, OPTIMIZERS, OptimizerSpec  # noqa: F401  (re-exported)

# `plan.max_batch_size` measured by the memory probe (`auto` on the command line).
AUTO = -1
_SCHEDULE_FIELDS = tuple(p for p in inspect.signature(make_schedule).parameters if p != "epochs")


def schedule_defaults() -> dict[str, Any]:
  """Each `schedule` field's default (`make_schedule`'s)."""
  parameters = inspect.signature(make_schedule).parameters
  return {name: parameters[name].default for name in _SCHEDULE_FIELDS if name != "name"}


@dataclasses.dataclass(frozen=True)
class DataSpec(Block):
  """`dataset`: a built-in dataset or any tfds dataset by `name` (read from its
  `builder.info`), or a Python data `source` (an import path or an object); see
  docs/MODELS.md for each field. The text datasets (`python_stdlib`, or `text` with
  `text_dir`) take `sequence_length` and `tokenizer` (and `separator`), and derive
  `num_train_examples` from the corpus; so do token files (`tokens` with `token_dir`,
  `token_dtype`, `separator` and `vocab_size`; docs/LANGUAGE_MODELS.md). `features`
  names what each batch carries besides inputs and labels, for `model.call.inputs`."""

  num_train_examples: int | None = None
  name: str | None = None
  source: Any = None
  generator_seed: int = 42
  image_size: int | None = None
  data_dir: str | None = None
  input_key: str | None = None
  label_key: str | None = None
  train_split: str | None = None
  eval_split: str | None = None
  preprocess: str | None = None
  num_classes: int | None = None
  text_dir: str | None = None
  sequence_length: int | None = None
  tokenizer: str | None = None
  token_dir: str | None = None
  token_dtype: str | None = None
  separator: int | None = None
  vocab_size: int | None = None
  features: tuple[str, ...] | None = None

  # `bigbatch.data.TEXT_DATASETS` and `TOKEN_FILES`, named here so that reading a config
  # imports no TensorFlow
  TEXT_DATASETS: ClassVar[tuple[str, ...]] = ("python_stdlib", "text")
  TOKEN_FILES: ClassVar[str] = "tokens"
  _PREFIX = "dataset."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    # unset only for text (checked below); the message otherwise is `integer(1)`'s
    "num_train_examples": lambda field, value: None if value is None else integer(1)(field, value),
    "generator_seed": integer(0),
    "image_size": integer(1, optional=True),
    "name": text(optional=True),
    "text_dir": text(optional=True),
    "sequence_length": integer(1, optional=True),
    "tokenizer": text(optional=True),
    "token_dir": text(optional=True),
    "token_dtype": lambda field, value: (
      None if value is None else one_of("uint16", "uint32")(field, value)
    ),
    "separator": integer(0, optional=True),
    "vocab_size": integer(1, optional=True),
    "features": fields.names("inputs", "labels", "mask", "rng", "index"),
  }

  def __post_init__(self) -> None:
    super().__post_init__()
    is_text = self.source is None and self.name in (*self.TEXT_DATASETS, self.TOKEN_FILES)
    if self.num_train_examples is None and not is_text:
      raise ConfigError("dataset.num_train_examples: missing from the config")
    if self.name is None and self.source is None:
      raise ConfigError("dataset.name: missing from the config (or set dataset.source)")
    which = repr(self.name) if self.source is None else "a dataset.source"
    if is_text and self.sequence_length is None:
      raise ConfigError(f"dataset.sequence_length: missing from the config ({self.name} needs it)")
    if not is_text and self.sequence_length is not None:
      raise ConfigError(
        f"dataset.sequence_length: only python_stdlib, text and tokens take one, not {which}"
      )
    if self.text_dir is not None and (self.source is not None or self.name != "text"):
      raise ConfigError(f"dataset.text_dir: only dataset.name 'text' takes one, not {which}")
    for name in ("tokenizer", "separator"):
      if getattr(self, name) is not None and not is_text:
        raise ConfigError(
          f"dataset.{name}: only python_stdlib, text and tokens take one, not {which}"
        )
    tokens = self.source is None and self.name == self.TOKEN_FILES
    for name in ("token_dir", "token_dtype", "vocab_size"):
      if getattr(self, name) is not None and not tokens:
        raise ConfigError(f"dataset.{name}: only dataset.name 'tokens' takes one, not {which}")

  def block(self) -> dict[str, Any]:
    """The fields that are set, as the data layer reads them (`bigbatch.data.spec_for`)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}  # fmt: skip

  def to_dict(self) -> dict[str, Any]:
    return {**super().to_dict(), "source": import_path(self.source)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """`model`: a name of `bigbatch.models.MODELS`, a name added with `models.register`, an
  import path, or (in Python) the class or factory itself; `fields` are its settings."""

  name: Any
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  call: CallSpec = dataclasses.field(default_factory=CallSpec)

  def __post_init__(self) -> None:
    if self.name is None or self.name == "":
      raise ConfigError("model.name: missing from the config")
    object.__setattr__(self, "fields", freeze(dict(self.fields)))

  @classmethod
  def read(cls, block: Any) -> ModelSpec:
    if not is_block(block):
      raise ConfigError(f"model: missing from the config, got {block!r}")
    values = {k: block[k] for k in block.keys()}
    return cls(values.pop("name", None), values, _call(values.pop("call", None)))

  def to_dict(self) -> dict[str, Any]:
    out = {"name": import_path(self.name), **thaw(self.fields)}
    if self.call != CallSpec():  # a record without the block reads as the default
      out["call"] = self.call.to_dict()
    return out


def _call(block: Any) -> CallSpec:
  """`model.call` (unset: detect everything), one line naming the field if bad."""
  if block is None:
    return CallSpec()
  if not is_block(block):
    raise ConfigError(f"model.call: a block of mode, inputs, targets; got {block!r}")
  values = thaw({k: block[k] for k in block.keys()})
  unknown = sorted(set(values) - {"mode", "inputs", "targets"})
  if unknown:
    raise ConfigError(f"model.call.{unknown[0]}: unknown field; allowed: inputs, mode, targets")
  inputs = values.get("inputs") or {}
  if not isinstance(inputs, Mapping):
    raise ConfigError(f"model.call.inputs: a mapping of call argument to source, got {inputs!r}")
  try:
    return CallSpec(values.get("mode") or "auto", dict(inputs), values.get("targets") or "next")
  except ValueError as error:
    raise ConfigError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """`schedule`: the baseline learning-rate schedule, a name of `SCHEDULES` and the fields
  of `bigbatch.schedules.make_schedule` (unset ones at its defaults)."""

  name: str
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    if self.name not in SCHEDULES:
      raise ConfigError(f"schedule.name: {self.name!r} is not one of {', '.join(SCHEDULES)}")
    allowed = sorted(set(_SCHEDULE_FIELDS) - {"name"})
    for key, value in self.fields.items():
      if key not in allowed:
        raise ConfigError(f"schedule.{key}: unknown field; allowed: {', '.join(allowed)}")
      fields.numbers(f"schedule.{key}", value)
    object.__setattr__(self, "fields", freeze(dict(self.fields)))

  @classmethod
  def read(cls, block: Any) -> ScheduleSpec:
    if not is_block(block):
      raise ConfigError("schedule: missing from the config")
    values = {k: block[k] for k in block.keys()}
    return cls(values.pop("name", None), values)

  def set_fields(self) -> dict[str, Any]:
    """The fields that are set (an unset field takes `make_schedule`'s default)."""
    return {k: thaw(v) for k, v in self.fields.items() if v is not None}

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, **thaw(self.fields)}


def _pairs(field: str, value: Any) -> tuple:
  """(epoch, batch) pairs of numbers (a flat list of an even length reads as pairs)."""
  values = tuple(value or ())
  if values and not isinstance(values[0], list | tuple):
    values = tuple(zip(values[::2], values[1::2])) if len(values) % 2 == 0 else ((),)
  for pair in values:
    if not (isinstance(pair, list | tuple) and len(pair) == 2) or fields.non_finite(tuple(pair)):
      raise ConfigError(f"{field}: must be (epoch, batch) pairs of numbers, got {value!r}")
    fields.numbers(field, tuple(pair))
  return tuple(tuple(pair) for pair in values)


# The Adam family (`bigbatch.optim.adam`); `plan.adam_rule` is for every optimizer of the
# `adaptive` family (`bigbatch.optim.FAMILY`), these among them.
ADAM_FAMILY = ("adam", "adamw", "amsgrad")


def _adam_rule(field: str, value: Any) -> str | None:
  if value is not None and value not in adam_rules.ADAM_RULES:
    names = ", ".join(adam_rules.ADAM_RULES)
    raise ConfigError(f"{field}: {value!r} is not one of {names} (or unset: paper)")
  return value


@dataclasses.dataclass(frozen=True)
class PlanSpec(Block):
  """`plan`: how batch sizes follow the schedule. `strategy` (decay_lr, increase_batch,
  hybrid, accumulate, or decided while training: plateau, plateau_lr, noise, with their
  fields in `adapt`), `max_batch_size` (the cap; `AUTO`: probed), `batch_multiple`,
  `noise_rule` (approx | exact), `min_phase_epochs`, `adam_rule` (the rule of the
  optimizer's family when it is `adaptive`: paper | sqrt, and sde | beta2_halflife for those
  holding b2 and eps; unset: paper; see `bigbatch.optim.FAMILY`), and `ramp` (strategy
  `ramp`: (epoch, batch) pairs, the batch from each epoch on)."""

  strategy: str = "decay_lr"
  max_batch_size: int | None = None
  batch_multiple: int = 1
  noise_rule: str = "approx"
  min_phase_epochs: float | None = None
  adam_rule: str | None = None
  ramp: tuple = ()
  adapt: Mapping[str, Any] = dataclasses.field(default_factory=adaptive.default_config)

  _PREFIX = "plan."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "strategy": one_of(*PLANNED, *adaptive.STRATEGIES),
    "max_batch_size": integer(AUTO, optional=True),
    "adam_rule": lambda field, value: _adam_rule(field, value),
    "ramp": lambda field, value: _pairs(field, value),
  }  # the rest the planner checks, naming the same fields (`build.plan_of`)

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.max_batch_size == 0:
      raise ConfigError("plan.max_batch_size: must be a whole number >= 1 (or -1: auto), got 0")
    defaults = adaptive.default_config()
    for key in self.adapt:
      if key not in defaults:
        raise ConfigError(f"plan.adapt.{key}: unknown field; allowed: {', '.join(defaults)}")
    adapt = {**defaults, **{k: v for k, v in self.adapt.items() if v is not None}}
    object.__setattr__(self, "adapt", types.MappingProxyType(adapt))
    if self.strategy in adaptive.STRATEGIES:
      try:
        self.settings().check()
      except ValueError as error:
        raise ConfigError(str(error)) from None

  @property
  def adaptive(self) -> bool:
    """Whether the phases are decided while training."""
    return self.strategy in adaptive.STRATEGIES

  def settings(self) -> adaptive.Settings:
    """The settings of an adaptive strategy (`bigbatch.plan.adaptive`)."""
    return adaptive.Settings.from_config({**self.to_dict(), "adapt": dict(self.adapt)})
