"""The spec of a whole run, and the reader of a config into it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from bigbatch.models import COMPUTE_DTYPES
from bigbatch.spec import fields, system, task
from bigbatch.spec.block import Block, import_path, is_block, thaw
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
}
_GROUPS = {
  "eval": system.EvalSpec,
  "checkpoints": system.CheckpointSpec,
}  # their fields are top-level


@dataclasses.dataclass(frozen=True)
class RunSpec(Block):
  """A whole run: its top-level fields and one spec per block (docs/CONFIGS.md)."""

  num_epochs: float
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

  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "num_epochs": positive,
    "batch_size": integer(1),
    "seed": integer(0),
    "ghost_batch_size": integer(1, optional=True),
    "compute_dtype": one_of(*COMPUTE_DTYPES),
    "label_smoothing": real(0.0, 1.0),
    "log_every_steps": integer(1),
    "snapshots": one_of("auto", "on", "off"),
    "background_compile": one_of("auto", "on", "off", True, False),
  }

  @classmethod
  def read(cls, config: Any) -> RunSpec:
    """The spec of a whole config (a `ConfigDict`, or a record's nested dict).

    Raises:
      ConfigError: naming the first field that is unknown, missing, not finite, or out
        of range, and what it accepts.
    """
    if not is_block(config):
      raise ConfigError(f"config: must be a block of fields, got {type(config).__name__}")
    _check_finite(config, "")
    top = {f.name for f in dataclasses.fields(cls)} - set(_GROUPS)
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
    for name in ("num_epochs", "batch_size"):
      if values.get(name) is None:
        raise ConfigError(f"{name}: missing from the config")
    for name, spec in _BLOCKS.items():
      values[name] = spec.read(values.get(name))
    for group, spec in _GROUPS.items():
      values[group] = spec.read({k: v for k, v in groups[group].items() if v is not None})
    return cls(**{k: v for k, v in values.items() if v is not None or k in _BLOCKS})

  def to_dict(self) -> dict[str, Any]:
    """The config's own layout, every default filled in (what a checkpoint records)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in _GROUPS:
        out |= {value.field(k): v for k, v in value.to_dict().items()}
      else:
        out[f.name] = thaw(value)
    out["loss"] = import_path(self.loss)
    return out

  def replace(self, **changes: Any) -> RunSpec:
    """A copy with `changes`, each checked again."""
    return dataclasses.replace(self, **changes)


def _check_finite(block: Any, prefix: str) -> None:
  for key in block.keys():
    value = block[key]
    if is_block(value) and not isinstance(value, type):
      _check_finite(value, f"{prefix}{key}.")
    elif fields.non_finite(value):
      raise ConfigError(f"{prefix}{key}: must be a finite number, got {value!r}")
