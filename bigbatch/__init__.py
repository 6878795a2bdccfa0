"""bigbatch: large-batch training that increases the batch instead of decaying the rate."""

from bigbatch import schedules
from bigbatch.noise import (
  batch_size_for_noise_scale,
  noise_scale,
  scale_learning_rate,
  scale_momentum,
)
from bigbatch.planner import Phase, Plan, PlanError, plan_phases

__version__ = "0.1.0"

__all__ = [
  "Phase",
  "Plan",
  "PlanError",
  "batch_size_for_noise_scale",
  "noise_scale",
  "plan_phases",
  "scale_learning_rate",
  "scale_momentum",
  "schedules",
]
