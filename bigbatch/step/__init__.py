"""The train step: its state, the pure train and eval steps, and their compiled forms.

`state` (the `TrainState` made in place on the mesh), `steps` (the pure
`make_train_step` and `make_eval_step`), `compiled` (each batch size's
executable, compiled once), `gradients` (per-device gradients and the
measured noise scale), `accumulate` (micro-batches), `inputs` (what a batch
becomes on the device), `losses` (the task: per-example loss and metrics) and
`finite` (which array of a state went non-finite first).
"""

from bigbatch.step.compiled import CompiledSteps, CompileRecord, enable_compilation_cache
from bigbatch.step.finite import first_nonfinite, leaf_names, nonfinite_leaf
from bigbatch.step.gradients import GradientNoise
from bigbatch.step.losses import LossFn, classification, cross_entropy
from bigbatch.step.memory import ProbeError, ProbeResult
from bigbatch.step.state import (
  STATE_FORMAT,
  TrainState,
  abstract_train_state,
  create_train_state,
  init_train_state,
  restore_train_state,
  train_state_shardings,
)
from bigbatch.step.steps import (
  NONFINITE_KEY,
  example_keys,
  make_eval_step,
  make_train_step,
  packed_metrics,
  pad_batch,
)

__all__ = [
  "NONFINITE_KEY",
  "STATE_FORMAT",
  "CompileRecord",
  "CompiledSteps",
  "GradientNoise",
  "LossFn",
  "ProbeError",
  "ProbeResult",
  "TrainState",
  "abstract_train_state",
  "classification",
  "create_train_state",
  "cross_entropy",
  "enable_compilation_cache",
  "example_keys",
  "first_nonfinite",
  "init_train_state",
  "leaf_names",
  "make_eval_step",
  "make_train_step",
  "nonfinite_leaf",
  "packed_metrics",
  "pad_batch",
  "restore_train_state",
  "train_state_shardings",
]
