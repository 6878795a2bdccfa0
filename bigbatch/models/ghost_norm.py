"""Ghost batch normalisation (Hoffer et al. 2017), as Smith et al. 2018 use it.

Statistics are taken over fixed groups ("ghost batches") of `ghost_size`
consecutive examples, whatever the global batch, so the noise that batch norm
adds to each example's gradient does not change when the batch grows. With
the batch sharded over devices in contiguous blocks whose size is a multiple
of `ghost_size`, a ghost batch never straddles two devices and the step needs
no cross-device reduction for normalisation; `ghost_size` equal to the
per-device batch gives ordinary per-device batch norm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class GhostBatchNorm(nn.Module):
  """Batch norm over ghost batches of `ghost_size` examples (None: the whole batch).

  Attributes:
    ghost_size: examples per ghost batch; the batch must be a multiple of it.
    use_running_average: evaluate with the running averages (or pass at call).
    momentum: decay of the running averages used for evaluation.
    epsilon: added to the variance.
    dtype: output dtype (statistics are always computed in float32).
    scale_init: initialiser of the scale (zeros for a residual branch's last norm).
  """

  ghost_size: int | None = None
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None) -> jnp.ndarray:
    """Normalises `x` (batch first, features last); evaluation uses the running averages."""
    use_running_average = nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    features = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if use_running_average:
      y = (x32 - running_mean.value) * lax.rsqrt(running_var.value + self.epsilon)
    else:
      batch = x.shape[0]
      ghost = self.ghost_size or batch
      if batch % ghost:
        raise ValueError(
          f"ghost_batch_size: the batch ({batch} examples here) must be a multiple of "
          f"the ghost batch {ghost}"
        )
      groups = x32.reshape((batch // ghost, ghost) + x.shape[1:])
      axes = tuple(range(1, groups.ndim - 1))
      mean = groups.mean(axes, keepdims=True)
      var = jnp.square(groups - mean).mean(axes, keepdims=True)
      y = ((groups - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if not self.is_initializing():
        # the running averages follow the mean of the ghost batches' statistics
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * (
          mean.reshape(-1, features).mean(0)
        )
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * (
          var.reshape(-1, features).mean(0)
        )
    return (y * scale + bias).astype(self.dtype)
