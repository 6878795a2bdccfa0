"""bigbatch: large-batch training that increases the batch instead of decaying the rate.

`import bigbatch` loads the planner, the noise maths and the step; the
trainer and its specs (`Trainer`, `Experiment`, `RunSpec` and the other
specs) load on first use, so that a script that needs only the optax
transforms or the planner does not import the input pipeline.
"""

import importlib
from typing import Any

from bigbatch import schedules, sharding, step
from bigbatch.plan.checks import PlanError
from bigbatch.plan.noise import (
  batch_size_for_noise_scale,
  noise_scale,
  scale_learning_rate,
  scale_momentum,
)
from bigbatch.plan.phases import Phase, Plan
from bigbatch.plan.planner import plan_phases
from bigbatch.sharding import make_mesh
from bigbatch.step import (
  CompiledSteps,
  TrainState,
  create_train_state,
  make_eval_step,
  make_train_step,
)

__version__ = "0.1.0"

# name -> the module it is loaded from on first use
_LAZY = {
  "Trainer": "bigbatch.train",
  "train_and_evaluate": "bigbatch.train",
  "Experiment": "bigbatch.train.experiment",
  "StepInfo": "bigbatch.train.hooks",
  "ConfigError": "bigbatch.spec.fields",
  **{
    name: "bigbatch.spec"
    for name in (
      "RunSpec",
      "DataSpec",
      "ModelSpec",
      "OptimizerSpec",
      "PlanSpec",
      "ScheduleSpec",
      "EvalSpec",
      "CheckpointSpec",
      "MeshSpec",
      "NoiseSpec",
      "MemorySpec",
      "DistributedSpec",
    )
  },
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'bigbatch' has no attribute {name!r}")


__all__ = [
  "CheckpointSpec",
  "CompiledSteps",
  "ConfigError",
  "DataSpec",
  "DistributedSpec",
  "EvalSpec",
  "Experiment",
  "MemorySpec",
  "MeshSpec",
  "ModelSpec",
  "NoiseSpec",
  "OptimizerSpec",
  "Phase",
  "Plan",
  "PlanError",
  "PlanSpec",
  "RunSpec",
  "ScheduleSpec",
  "StepInfo",
  "TrainState",
  "Trainer",
  "batch_size_for_noise_scale",
  "create_train_state",
  "make_eval_step",
  "make_mesh",
  "make_train_step",
  "noise_scale",
  "plan_phases",
  "scale_learning_rate",
  "scale_momentum",
  "schedules",
  "sharding",
  "step",
  "train_and_evaluate",
]
