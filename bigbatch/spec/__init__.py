"""The typed specs of a run: a config read once, into frozen dataclasses.

`RunSpec.read(config)` turns a recipe's `ml_collections.ConfigDict` (or any
nested mapping: a checkpoint's JSON record, a dict) into a `RunSpec` and its
blocks: `ScheduleSpec`, `OptimizerSpec`, `PlanSpec`, `ModelSpec`, `DataSpec`,
`MeshSpec`, `NoiseSpec`, `MemorySpec`, `DistributedSpec`, `ElasticSpec`, `EvalSpec` and
`CheckpointSpec`. Each field has its default here and nowhere else, and each
spec checks its fields when it is made, from a config or in Python, so a bad
value is a `ConfigError` that names the config field and what it accepts
before any long work starts. Below this layer nothing reads a config: each
piece gets its own block, typed.

`RunSpec.to_dict()` gives the config's own layout back, every default filled
in; checkpoints store it, and `RunSpec.read` reads it again.
"""

from bigbatch.spec.block import import_path
from bigbatch.spec.fields import ConfigError
from bigbatch.spec.run import RunSpec
from bigbatch.spec.system import (
  CheckpointSpec,
  DistributedSpec,
  ElasticSpec,
  EvalSpec,
  MemorySpec,
  MeshSpec,
  NoiseSpec,
)
from bigbatch.spec.task import (
  AUTO,
  OPTIMIZERS,
  DataSpec,
  ModelSpec,
  OptimizerSpec,
  PlanSpec,
  ScheduleSpec,
)

__all__ = [
  "AUTO",
  "OPTIMIZERS",
  "CheckpointSpec",
  "ConfigError",
  "DataSpec",
  "DistributedSpec",
  "ElasticSpec",
  "EvalSpec",
  "MemorySpec",
  "MeshSpec",
  "ModelSpec",
  "NoiseSpec",
  "OptimizerSpec",
  "PlanSpec",
  "RunSpec",
  "ScheduleSpec",
  "import_path",
]
