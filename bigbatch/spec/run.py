"""The spec of a whole run, and the reader of a config into it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from bigbatch import optim
from bigbatch.models import COMPUTE_DTYPES
from bigbatch.plan import adam_rules
from bigbatch.plan.adaptive import default_config as adaptive_defaults
from bigbatch.spec import clock, fields, system, task
from bigbatch.spec.block import Block, freeze, import_path, is_block, thaw
from bigbatch.spec.fields import ConfigError, integer, one_of, positive, real

_BLOCKS = {
  "schedule": task.ScheduleSpec,
  "optimizer": task.OptimizerSpec,
  "plan": task.PlanSpec,
  "model": task.ModelSpec,
  "dataset": task.DataSpec,
  "mesh": system.MeshSpec,
  "noise": system.NoiseSpec,
  "memory": system.MemorySpec,
  "distributed": system.DistributedSpec,
  "elastic": system.ElasticSpec,
}
# The built-in optimizers `plan.adam_rule` is for (`bigbatch.optim.FAMILY`).
_ADAPTIVE = tuple(name for name, family in optim.FAMILY.items() if family == "adaptive")
_GROUPS = {
  "eval": system.EvalSpec,
  "checkpoints": system.CheckpointSpec,
}  # their fields are top-level


@dataclasses.dataclass(frozen=True)
class RunSpec(Block):
  """A whole run: its top-level fields and one spec per block (docs/CONFIGS.md)."""

  num_epochs: float | None  # None: a language model's, until its clock is resolved
  batch_size: int
  optimizer: task.OptimizerSpec
  schedule: task.ScheduleSpec
  model: task.ModelSpec
  dataset: task.DataSpec
  plan: task.PlanSpec = dataclasses.field(default_factory=task.PlanSpec)
  seed: int = 0
  ghost_batch_size: int | None = None
  compute_dtype: str = "auto"
  loss: Any = "cross_entropy"
  label_smoothing: float = 0.0
  log_every_steps: int = 50
  snapshots: str = "auto"
  background_compile: Any = "auto"
  compilation_cache_dir: str | None = None
  eval: system.EvalSpec = dataclasses.field(default_factory=system.EvalSpec)
  checkpoints: system.CheckpointSpec = dataclasses.field(default_factory=system.CheckpointSpec)
  mesh: system.MeshSpec = dataclasses.field(default_factory=system.MeshSpec)
  noise: system.NoiseSpec = dataclasses.field(default_factory=system.NoiseSpec)
  memory: system.MemorySpec = dataclasses.field(default_factory=system.MemorySpec)
  distributed: system.DistributedSpec = dataclasses.field(default_factory=system.DistributedSpec)
  elastic: system.ElasticSpec = dataclasses.field(default_factory=system.ElasticSpec)
  # a language model's token fields as given (`bigbatch.spec.clock`; dotted names)
  token_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "num_epochs": lambda field, value: None if value is None else positive(field, value),
    "batch_size": integer(1),
    "seed": integer(0),
    "ghost_batch_size": integer(1, optional=True),
    "compute_dtype": one_of(*COMPUTE_DTYPES),
    "label_smoothing": real(0.0, 1.0),
    "log_every_steps": integer(1),
    "snapshots": one_of("auto", "on", "off"),
    "background_compile": one_of("auto", "on", "off", True, False),
  }

  def __post_init__(self) -> None:
    super().__post_init__()
    object.__setattr__(self, "token_fields", freeze(dict(self.token_fields)))
    if self.num_epochs is None and not self.token_fields:
      raise ConfigError("num_epochs: missing from the config")
    self._check_rule()

  def _check_rule(self) -> None:
    """`plan.adam_rule` is the `adaptive` family's rule; `sde` and `beta2_halflife` move b2
    and eps, which only the optimizers holding them can follow."""
    rule, optimizer = self.plan.adam_rule, self.optimizer
    if rule is None:
      return
    name = optimizer.display_name
    if optimizer.family != "adaptive":
      raise ConfigError(
        f"plan.adam_rule: only for the adaptive family ({', '.join(_ADAPTIVE)}, or a factory "
        f"with optimizer.family adaptive); {name} is of the {optimizer.family} family and "
        "keeps the paper's g-rule (unset it)"
      )
    if adam_rules.rule(rule).moves_betas and not optimizer.holds_betas:
      raise ConfigError(
        f"plan.adam_rule: {rule} moves b2 and eps, which {name} does not hold in its state "
        f"({', '.join(task.HOLD_BETAS)} do); allowed for {name}: paper, sqrt"
      )

  @classmethod
  def read(cls, config: Any) -> RunSpec:
    """The spec of a whole config (a `ConfigDict`, or a record's nested dict).

    A language model's config counts in tokens (`bigbatch.spec.clock`): its
    batches are read into sequences here, its durations stay in tokens
    (`token_fields`) until `resolve` knows the training split's size.

    Raises:
      ConfigError: naming the first field that is unknown, missing, not finite, or out
        of range (or on the wrong clock), and what it accepts.
    """
    if not is_block(config):
      raise ConfigError(f"config: must be a block of fields, got {type(config).__name__}")
    _check_finite(config, "")
    nested, tokens = clock.split(_nested(config), _example_defaults())
    if tokens:
      for name in ("num_tokens", "batch_tokens"):
        if tokens.get(name) is None:
          raise ConfigError(f"{name}: missing from the config (a language model counts in tokens)")
    required = ("batch_size",) if tokens else ("num_epochs", "batch_size")
    return cls._from_nested(nested, required, tokens)

  @classmethod
  def _from_nested(
    cls, config: Mapping[str, Any], required: tuple[str, ...], tokens: Mapping[str, Any]
  ) -> RunSpec:
    top = {f.name for f in dataclasses.fields(cls)} - set(_GROUPS) - {"token_fields"}
    grouped = {spec.field(f.name): (group, f.name) for group, spec in _GROUPS.items()
               for f in dataclasses.fields(spec)}  # fmt: skip
    values: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for key in config.keys():
      if key in grouped:
        group, name = grouped[key]
        groups[group][name] = config[key]
      elif key in top:
        values[key] = config[key]
      else:
        allowed = ", ".join(sorted(top | set(grouped)))
        raise ConfigError(f"{key}: unknown field; allowed: {allowed}")
    for name in required:
      if values.get(name) is None:
        raise ConfigError(f"{name}: missing from the config")
    for name, spec in _BLOCKS.items():
      values[name] = spec.read(values.get(name))
    for group, spec in _GROUPS.items():
      values[group] = spec.read({k: v for k, v in groups[group].items() if v is not None})
    values = {k: v for k, v in values.items() if v is not None or k in _BLOCKS}
    return cls(**{"num_epochs": None, **values}, token_fields=tokens)

  @property
  def resolved(self) -> bool:
    """Whether every duration is in epochs (always, but for a language model's spec
    before `resolve`)."""
    return self.num_epochs is not None

  def resolve(self, train_examples: int) -> RunSpec:
    """This spec with a language model's durations in epochs of its `train_examples`
    sequences (each `dataset.sequence_length` tokens); any other spec as it is."""
    if not self.token_fields:
      return self
    length = self.dataset.sequence_length
    config = clock.resolve(self._example_dict(), self.token_fields, train_examples * length)
    if config["dataset"].get("num_train_examples") is None:  # the corpus's, from now on
      config["dataset"]["num_train_examples"] = int(train_examples)
    return self._from_nested(config, ("num_epochs", "batch_size"), self.token_fields)

  def _example_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in _GROUPS:
        out |= {value.field(k): v for k, v in value.to_dict().items()}
      elif f.name != "token_fields":
        out[f.name] = thaw(value)
    out["loss"] = import_path(self.loss)
    return out

  def to_dict(self) -> dict[str, Any]:
    """The config's own layout, every default filled in (what a checkpoint records); a
    language model's token fields as given, in place of the fields they stand for."""
    out = self._example_dict()
    for name, value in self.token_fields.items():
      clock.replace_twin(out, name, thaw(value))
    return out

  def replace(self, **changes: Any) -> RunSpec:
    """A copy with `changes`, each checked again."""
    return dataclasses.replace(self, **changes)


def _nested(config: Any) -> dict[str, Any]:
  """A config's blocks as nested dicts (a `ConfigDict`'s too), its values as they are."""
  return {
    key: _nested(config[key]) if is_block(config[key]) and not isinstance(config[key], type)
    else config[key]
    for key in config.keys()
  }  # fmt: skip


def _example_defaults() -> dict[str, Any]:
  """The default of each field a token field stands for (dotted names)."""
  defaults = {"plan.adapt.monitor_horizon_epochs": adaptive_defaults()["monitor_horizon_epochs"]}
  for dotted, _ in clock.TOKEN_FIELDS.values():
    block, _, name = dotted.rpartition(".")
    if block == "schedule":
      defaults[dotted] = task.schedule_defaults()[name]
    elif block in ("plan", "noise"):
      spec = {"plan": task.PlanSpec, "noise": system.NoiseSpec}[block]
      defaults[dotted] = {f.name: f.default for f in dataclasses.fields(spec)}[name]
    elif dotted == "eval_every_epochs":
      defaults[dotted] = system.EvalSpec().every_epochs
  return defaults


def _check_finite(block: Any, prefix: str) -> None:
  for key in block.keys():
    value = block[key]
    if is_block(value) and not isinstance(value, type):
      _check_finite(value, f"{prefix}{key}.")
    elif fields.non_finite(value):
      raise ConfigError(f"{prefix}{key}: must be a finite number, got {value!r}")


def nullable(field: str) -> bool | None:
  """Whether the config field `field` (dotted) may be None, that is, unset.

  A field may be unset where its default is None (`ghost_batch_size`,
  `plan.max_batch_size`, `optimizer.clip_norm`, ...) or its check takes None. A field
  without a default (`batch_size`) or with another (`log_every_steps`) may not: read
  from a config, such a field set to None would take its default or be missing, never
  mean what None says. A token field answers for the field it stands for.

  Returns:
    True or False; None where no spec types the field (a model's own fields, a factory
    optimizer's arguments), for the caller to judge.
  """
  field = clock.TOKEN_FIELDS.get(field, (field,))[0]
  block, _, name = field.rpartition(".")
  if not block:
    specs = [RunSpec, *_GROUPS.values()]
  else:
    specs = [_BLOCKS[block]] if block in _BLOCKS else []
  for spec in specs:
    for f in dataclasses.fields(spec):
      if f.init and _config_name(spec, block, f.name) == field:
        return _may_be_none(spec, f, field)
  defaults = {"plan.adapt": adaptive_defaults, "schedule": task.schedule_defaults}.get(block)
  if defaults is not None:
    return name in defaults() and defaults()[name] is None
  if block == "optimizer":  # a built-in's own field: None where some built-in's default is
    options = [o for o in task.OPTIMIZERS.values() if name in o]
    return any(o[name] is None for o in options) if options else None
  return None


def _config_name(spec: type, block: str, name: str) -> str:
  """The config field that holds the spec's field `name`."""
  return spec.field(name) if issubclass(spec, Block) else f"{block}.{name}".lstrip(".")


def _may_be_none(spec: type, f: dataclasses.Field, field: str) -> bool:
  if f.default is dataclasses.MISSING:  # required, or a block of fields
    return False
  if f.default is None:
    return True
  check = getattr(spec, "_CHECKS", {}).get(f.name)
  try:
    return check is not None and check(field, None) is None
  except (ConfigError, TypeError, ValueError):  # a check that does not take None
    return False
