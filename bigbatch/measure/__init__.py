"""Measurements of a model or a run: the learning-rate range, sharpness, snapshot ensembles.

`lr_find` (the range test's maths), `lr_range` (the range test run on an
experiment), `sharpness` (the Hessian's top eigenvalue and epsilon-sharpness
of a checkpoint) and `ensemble` (a run's snapshots as one ensemble). The
memory probe, which sizes the batch before an experiment is built, is
`bigbatch.step.memory`.
"""

from bigbatch.measure.ensemble import evaluate_ensemble

__all__ = ["evaluate_ensemble"]
