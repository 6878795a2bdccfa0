"""bigbatch: large-batch training that increases the batch instead of decaying the rate."""

from bigbatch import schedules, sharding, step
from bigbatch.noise import (
  batch_size_for_noise_scale,
  noise_scale,
  scale_learning_rate,
  scale_momentum,
)
from bigbatch.phases import Phase, Plan
from bigbatch.planner import PlanError, plan_phases
from bigbatch.sharding import make_mesh
from bigbatch.step import (
  CompiledSteps,
  TrainState,
  create_train_state,
  make_eval_step,
  make_train_step,
)

__version__ = "0.1.0"

__all__ = [
  "CompiledSteps",
  "Phase",
  "Plan",
  "PlanError",
  "TrainState",
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
]
