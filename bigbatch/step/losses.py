"""The task a step trains for: a loss and its metrics, per example.

A loss function is `loss_fn(outputs, batch) -> (losses, metrics)`: `outputs`
is what the model returns, `batch` holds `inputs` and `labels`, `losses`
the per-example loss (shape `[B]`) and `metrics` a dict of per-example
values (each `[B]`). The step differentiates the mean loss and reports
each metric's mean over the batch; the evaluation reports the means over a
whole split as `eval_NAME`. The default is classification: softmax
cross-entropy against integer labels, and `accuracy`. For a language model the
labels are a sequence's next tokens (`[B, T]`): the example's loss and
accuracy are their means over its T tokens (every sequence has T, so the
mean over examples is the mean over tokens), and `bits_per_byte` (the loss
in bits over the bytes a token stands for) comes with them. Given the bytes
each token id stands for (`token_bytes`, a tokenizer's), a sequence's bytes
are those of its targets: `bytes_per_token` is their mean over the sequence,
and the evaluation's bits per byte are the loss over all the evaluated
targets' bytes (`train.evaluate`), so they compare across tokenizers. `loss`
in a config is `cross_entropy` or the import path of a function of yours.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigbatch.importing import import_object

LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against integer `labels`, optionally smoothed."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _classification(
  logits, batch, label_smoothing: float, bytes_per_token: float | None, token_bytes=None
):
  losses = cross_entropy(logits, batch["labels"], label_smoothing)
  correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(losses.dtype)  # no gradient
  within = tuple(range(1, losses.ndim))  # a sequence's tokens: one example's loss is their mean
  losses, correct = losses.mean(within), correct.mean(within)
  metrics = {"accuracy": correct}
  if token_bytes is not None:
    # the bytes the example's targets stand for, per target
    per_token = jnp.asarray(token_bytes, jnp.float32)[batch["labels"]].mean(within)
    metrics["bytes_per_token"] = per_token
    # a sequence of targets that stand for no text (special tokens) has no bits per byte: 0
    bits = losses / (math.log(2.0) * jnp.where(per_token > 0, per_token, 1.0))
    metrics["bits_per_byte"] = jnp.where(per_token > 0, bits, 0.0)
  elif bytes_per_token:
    metrics["bits_per_byte"] = losses / (math.log(2.0) * bytes_per_token)
  return losses, metrics


def classification(
  label_smoothing: float = 0.0,
  bytes_per_token: float | None = None,
  token_bytes: Any = None,
) -> LossFn:
  """Softmax cross-entropy (smoothed by `label_smoothing`) and accuracy, per example or,
  for labels `[B, T]`, per token averaged over the example's tokens; with
  `bytes_per_token` (text: the bytes every token stands for) or `token_bytes` (the bytes
  each token id stands for, `[vocab]`) also bits per byte, and with `token_bytes` the
  mean bytes a target stands for, `bytes_per_token`."""
  return functools.partial(
    _classification,
    label_smoothing=label_smoothing,
    bytes_per_token=bytes_per_token,
    token_bytes=None if token_bytes is None else np.asarray(token_bytes, np.float32),
  )


def resolve(
  name: str | LossFn | None,
  label_smoothing: float = 0.0,
  bytes_per_token: float | None = None,
  token_bytes: Any = None,
) -> LossFn:
  """The loss a config's `loss` names: `cross_entropy` (or None) or an import path.

  Raises:
    ValueError: naming `loss`.
  """
  if name in (None, "", "cross_entropy"):
    return classification(label_smoothing, bytes_per_token, token_bytes)
  if callable(name):  # the function itself, from Python
    return name
  if ":" not in str(name):
    raise ValueError(
      f"loss: {name!r} is not cross_entropy, nor an import path 'package.module:function'"
    )
  loss_fn = import_object(name, "loss")
  if not callable(loss_fn):
    raise ValueError(f"loss: {name} is a {type(loss_fn).__name__}, not a function")
  return loss_fn


def check(loss_fn: LossFn, outputs: Any, batch: Mapping[str, Any], name: str = "loss") -> list[str]:
  """The metric names `loss_fn` gives, or a ValueError naming `name` if what it returns on
  `outputs` and `batch` (shapes only, nothing computed) is not a per-example loss and a
  dict of per-example metrics."""
  size = batch["labels"].shape[0]
  try:
    returned = jax.eval_shape(loss_fn, outputs, batch)
  except Exception as error:  # whatever the user's function raised while traced
    text = " ".join(str(error).split())
    raise ValueError(f"{name}: fails on a batch ({type(error).__name__}: {text})") from None
  if not (isinstance(returned, tuple) and len(returned) == 2):
    raise ValueError(f"{name}: returns a {type(returned).__name__}, not (losses, metrics)")
  losses, metrics = returned
  if getattr(losses, "shape", None) != (size,):
    raise ValueError(
      f"{name}: returns a loss of shape {getattr(losses, 'shape', None)}, not one per example ({size},)"
    )
  if not isinstance(metrics, Mapping):
    raise ValueError(f"{name}: returns metrics as a {type(metrics).__name__}, not a dict")
  for key, value in metrics.items():
    if getattr(value, "shape", None) != (size,):
      raise ValueError(
        f"{name}: metric {key!r} has shape {value.shape}, not one per example ({size},)"
      )
  return list(metrics)
