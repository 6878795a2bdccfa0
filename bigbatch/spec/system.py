"""The specs of where and how a run runs: mesh, noise measurement, memory probe,
multi-host, evaluation and checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from bigbatch import partitioning
from bigbatch.sharding import ShardingError
from bigbatch.spec import fields
from bigbatch.spec.block import Block
from bigbatch.spec.fields import ConfigError, boolean, integer, positive, real


def _rules(field: str, value: Any) -> partitioning.Rules:
  try:
    return partitioning.check_rules(value, field)
  except ShardingError as error:
    raise ConfigError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class MeshSpec(Block):
  """`mesh`: `data` devices split the batch (-1: all), `fsdp` devices shard parameters
  and optimizer state (1: replicate them), `fsdp_min_size` is the smallest unannotated
  parameter (in elements) worth sharding, `tensor` devices split a layer as its
  annotations say (1: none), and `rules` map the annotations' logical axis names to
  mesh axes (`partitioning.DEFAULT_RULES`; a sequence of `(name, axis | (axes) |
  None)` pairs replaces them all)."""

  data: int = -1
  fsdp: int = 1
  fsdp_min_size: int = 2**14
  tensor: int = 1
  rules: tuple = partitioning.DEFAULT_RULES

  _PREFIX = "mesh."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "data": integer(-1),
    "fsdp": integer(1),
    "fsdp_min_size": integer(0),
    "tensor": integer(1),
    "rules": _rules,
  }

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.data == 0:
      raise ConfigError("mesh.data: must be -1 (all devices) or a positive number, got 0")


@dataclasses.dataclass(frozen=True)
class NoiseSpec(Block):
  """`noise`: the gradient noise scale measured in the train step (`measure`), its
  smoothing horizon as a fraction of an epoch of examples, the two-sided `confidence` of
  B_simple's interval, how far a batch must exceed its upper bound to be warned of, and
  `every`: where measuring costs a second pass (one device, or one data-parallel group,
  without accumulation), only the steps whose number is a multiple of it measure."""

  measure: bool = True
  horizon_epochs: float = 0.1
  confidence: float = 0.95
  warn_ratio: float = 8.0
  every: int = 1

  _PREFIX = "noise."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "measure": boolean,
    "every": integer(1),
    "horizon_epochs": positive,
    "confidence": real(0.5, 1.0),
    "warn_ratio": real(1.0),
  }


def _slice_sizes(field: str, value: Any) -> tuple[int, ...] | None:
  """Device counts a phase may run on: whole numbers >= 1, ascending, each dividing the
  largest (a slice is a part of the largest one; 3 of 8 devices cannot be formed)."""
  if value is None:
    return None
  if not isinstance(value, tuple | list) or not value:
    raise ConfigError(f"{field}: must be a tuple of device counts, e.g. (2, 4, 8), got {value!r}")
  sizes = tuple(integer(1)(field, size) for size in value)
  if list(sizes) != sorted(set(sizes)):
    raise ConfigError(f"{field}: must be ascending, each once, got {sizes}")
  for size in sizes:
    if sizes[-1] % size:
      raise ConfigError(
        f"{field}: {size} does not divide the largest slice, {sizes[-1]}: the devices "
        "cannot form it"
      )
  return sizes


@dataclasses.dataclass(frozen=True)
class ElasticSpec(Block):
  """`elastic`: each phase on the devices it needs (`bigbatch.plan.elastic`). On when
  `slice_sizes` is set: the device counts a phase may run on. A phase takes its batch /
  `per_device_batch` devices, rounded up to one of them (unset: the plan's
  `max_batch_size` over this run's devices). `example_seconds` and `step_seconds`
  model a step's time on a device (`step_seconds + per-device batch x
  example_seconds`) for the device-hours `bigbatch plan` shows. `until_phase_end`
  (`bigbatch train --until_phase_end`): a fixed plan's run stops, checkpointed, at the
  end of the first phase whose next wants more devices than it has (exit status 75),
  to resume on them."""

  slice_sizes: tuple | None = None
  per_device_batch: int | None = None
  example_seconds: float | None = None
  step_seconds: float = 0.0
  until_phase_end: bool = False

  _PREFIX = "elastic."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "slice_sizes": _slice_sizes,
    "per_device_batch": integer(1, optional=True),
    "example_seconds": real(0.0, optional=True),
    "step_seconds": real(0.0),
    "until_phase_end": boolean,
  }

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.until_phase_end and self.slice_sizes is None:
      raise ConfigError(
        "elastic.until_phase_end: needs elastic.slice_sizes (the devices a phase may want)"
      )

  @property
  def enabled(self) -> bool:
    return self.slice_sizes is not None


@dataclasses.dataclass(frozen=True)
class MemorySpec(Block):
  """`memory`: the batch-size probe's budget per CPU device (`budget_bytes`; unset: a
  `cpu_fraction` of the RAM; GPU/TPU report their own) and the `margin` kept free."""

  budget_bytes: int | None = None
  cpu_fraction: float = 0.5
  margin: float = 0.1

  _PREFIX = "memory."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "budget_bytes": integer(1, optional=True),
    "cpu_fraction": real(0.0, 1.0, closed_high=True),
    "margin": real(0.0, 1.0),
  }


@dataclasses.dataclass(frozen=True)
class DistributedSpec(Block):
  """`distributed`: multi-host JAX. `enabled` is "auto" (on a TPU pod, or when
  `JAX_COORDINATOR_ADDRESS` is set), True or False; the other fields default to the
  environment's `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`."""

  enabled: Any = "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  _PREFIX = "distributed."
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "num_processes": integer(1, optional=True),
    "process_id": integer(0, optional=True),
  }

  def __post_init__(self) -> None:
    super().__post_init__()
    processes, process = self.num_processes, self.process_id
    if processes is not None and process is not None and process >= processes:
      raise ConfigError(
        f"distributed.process_id: must be below distributed.num_processes ({processes}), "
        f"got {process}"
      )


@dataclasses.dataclass(frozen=True)
class EvalSpec(Block):
  """Evaluation: every `every_epochs` (`eval_every_epochs`) over the test split in
  batches of `batch_size` (`eval_batch_size`): the whole split, or its first `examples`
  (`eval_examples` > 0: a fixed held-out subset, where the whole split would cost more
  than the training between evaluations); `train_examples` > 0 (`eval_train_examples`)
  also measures the first K training examples, unaugmented."""

  every_epochs: float = 1.0
  batch_size: int = 1000
  train_examples: int = 0
  examples: int = 0

  _NAMES: ClassVar[Mapping[str, str]] = {
    "every_epochs": "eval_every_epochs",
    "batch_size": "eval_batch_size",
    "train_examples": "eval_train_examples",
    "examples": "eval_examples",
  }
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {
    "every_epochs": positive,
    "batch_size": integer(1),
    "train_examples": integer(0),
    "examples": integer(0),
  }


@dataclasses.dataclass(frozen=True)
class CheckpointSpec(Block):
  """Checkpoints: every `every_steps` (`checkpoint_every_steps`), at every phase boundary
  and at the end; the latest `keep` (`keep_checkpoints`) are kept."""

  every_steps: int = 1000
  keep: int = 3

  _NAMES: ClassVar[Mapping[str, str]] = {
    "every_steps": "checkpoint_every_steps",
    "keep": "keep_checkpoints",
  }
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {"every_steps": integer(1), "keep": integer(1)}
