"""Planning: the noise scale, phases and plans, the planner, adaptive phases and reports.

`noise` (the SGD noise scale and its scaling rules), `phases` (what a plan is
made of), `planner` (a schedule turned into batch-size phases; `checks`, its
arguments checked), `adaptive`
(phases decided while training) and `report` (the plan table, the plots, the
run's summary).
"""

from bigbatch.plan.checks import NOISE_RULES, STRATEGIES, PlanError
from bigbatch.plan.noise import (
  batch_size_for_noise_scale,
  noise_scale,
  scale_learning_rate,
  scale_momentum,
)
from bigbatch.plan.phases import Phase, Plan
from bigbatch.plan.planner import plan_phases

__all__ = [
  "NOISE_RULES",
  "STRATEGIES",
  "Phase",
  "Plan",
  "PlanError",
  "batch_size_for_noise_scale",
  "noise_scale",
  "plan_phases",
  "scale_learning_rate",
  "scale_momentum",
]
