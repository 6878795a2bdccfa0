"""Row 4 of tools/benchmark.py: bigbatch's optimizer updates against optax's.

Each bigbatch optimizer is optax's own chain inside `optax.inject_hyperparams`;
this times one update of each on a ResNet-50-sized parameter tree (25.6M
parameters, one device, jitted, donated state), interleaved with optax's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from timing import compare  # tools/timing.py

from bigbatch import optim
from bigbatch.models import create_model


def run(repeats: int, count: int) -> dict:
  """Update time on a ResNet-50-sized tree (25.6M parameters), ours vs optax's."""
  model = create_model("resnet50", num_classes=1000)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )["params"]
  device = jax.devices()[0]
  params = jax.tree.map(lambda s: jax.device_put(jnp.full(s.shape, 0.01, s.dtype), device), shapes)
  grads = jax.tree.map(lambda p: p * 0.1, params)
  pairs = {
    "sgd_momentum": (optim.sgd_momentum(0.1, momentum=0.9), optax.sgd(0.1, momentum=0.9)),
    "adam": (optim.adam(1e-3), optax.adam(1e-3)),
    "adamw": (optim.adamw(1e-3, weight_decay=1e-4), optax.adamw(1e-3, weight_decay=1e-4)),
    "amsgrad": (optim.amsgrad(1e-3), optax.amsgrad(1e-3)),
  }
  out = {}
  for name, (ours_tx, optax_tx) in pairs.items():
    runners = []
    for tx in (ours_tx, optax_tx):
      state = {"s": jax.jit(tx.init)(params)}

      def update(p, s, tx=tx):
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

      jitted = jax.jit(update, donate_argnums=(1,))
      holder = {"p": params, "s": state["s"]}

      def run(jitted=jitted, holder=holder):
        new_p, holder["s"] = jitted(holder["p"], holder["s"])
        return new_p

      jax.block_until_ready(run())
      runners.append(run)
    result = compare(runners[0], runners[1], repeats, count)
    result["speed_ratio"] = result.pop("ratio")  # ours / optax's, in updates per second
    out[name] = result
  return out
