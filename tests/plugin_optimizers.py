"""Optimizer factories of a user's own, given to bigbatch by import path
(`plugin_optimizers:NAME`)."""

import optax


def heavy_ball(learning_rate, decay=0.9, nesterov=False):
  """SGD with momentum, the momentum under a name of its own (`optimizer.momentum_arg`)."""
  return optax.sgd(learning_rate, momentum=decay, nesterov=nesterov)


def sgdw(learning_rate, momentum=0.9, weight_decay=0.0, mask=None):
  """SGD with momentum and a decay masked as optax masks it."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask), optax.sgd(learning_rate, momentum=momentum)
  )


def not_an_optimizer(learning_rate):
  """Wrong: returns a dict, not an optax.GradientTransformation."""
  return {"learning_rate": learning_rate}
