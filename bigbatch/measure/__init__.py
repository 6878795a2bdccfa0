"""Measurements of a model or a run: device memory, the learning-rate range, sharpness.

`memory` (the largest batch whose step fits in device memory), `lr_find` (the
range test's maths), `lr_range` (the range test run on a spec) and
`sharpness` (the Hessian's top eigenvalue and epsilon-sharpness of a
checkpoint).
"""

from bigbatch.measure.memory import ProbeError, ProbeResult, probe

__all__ = ["ProbeError", "ProbeResult", "probe"]
