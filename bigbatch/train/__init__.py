"""Training: an experiment built from a spec, set up in a workdir, and its phase loop.

`experiment` (`Experiment`: plan, optimizer, model, data, mesh and step),
`build` (a spec's pieces), `setup` (a run checked and restored in its
workdir), `loop` (the phase loop), `hooks` (what runs beside the steps),
`evaluate` (evaluation over a split), `clock` (time per phase across
restarts) and `trainer` (`Trainer`, `train_and_evaluate`).
"""

from bigbatch.train.experiment import Experiment
from bigbatch.train.hooks import Hook, StepInfo
from bigbatch.train.loop import NonFiniteLossError, data_position
from bigbatch.train.trainer import Trainer, train_and_evaluate

__all__ = [
  "Experiment",
  "Hook",
  "NonFiniteLossError",
  "StepInfo",
  "Trainer",
  "data_position",
  "train_and_evaluate",
]
