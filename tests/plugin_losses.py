"""Loss functions of a user's own, given to bigbatch by import path (`plugin_losses:NAME`)."""

import jax
import jax.numpy as jnp


def squared_error(outputs, batch):
  """Squared error against one-hot labels, per example, with the error rate as a metric."""
  targets = jax.nn.one_hot(batch["labels"], outputs.shape[-1])
  losses = jnp.sum((outputs - targets) ** 2, axis=-1)
  return losses, {"error": (jnp.argmax(outputs, -1) != batch["labels"]).astype(jnp.float32)}


def mean_loss(outputs, batch):
  """Wrong: the mean over the batch instead of one loss per example."""
  return jnp.mean(outputs), {}


def only_the_loss(outputs, batch):
  """Wrong: no metrics dict."""
  return jnp.sum(outputs, -1)


def metric_per_batch(outputs, batch):
  """Wrong: a metric that is one number for the batch."""
  return jnp.sum(outputs, -1), {"total": jnp.sum(outputs)}


NOT_A_FUNCTION = 2
