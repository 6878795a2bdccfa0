"""A language model's contract, checked once before training: the causal probe.

bigbatch trains a language model on `(inputs, labels)` where the labels are
the inputs moved one token left: the logits at position t must predict token
t + 1 from tokens 0..t. A model that shifts its inputs right itself (flax's
lm1b `TransformerLM`) predicts token t at position t; given bigbatch's labels
it would silently learn to predict two tokens ahead, and a short run's loss
looks the same either way. So before training, one token of a probe sequence
is changed and the model's logits compared (evaluation mode, the initial
parameters):

- `targets: next` (bigbatch's labels): the logits before the changed position
  must not move, the logits at it must;
- `targets: inputs` (the model shifts its inputs; its targets are its inputs):
  the logits up to and at the changed position must not move, those after it
  must.

It costs one initialisation of the model and two forward passes of one
sequence, once a run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigbatch.models.adapter import ModelAdapter

# moved: more than this fraction of the logits' scale (float32 noise is ~1e-7)
_TOLERANCE = 1e-5


def _tokens(length: int, vocab: int) -> np.ndarray:
  """A probe sequence of tokens 1..vocab-1 (lm1b's models read 0 as padding)."""
  return (1 + (np.arange(length) * 7919) % max(vocab - 1, 1)).astype(np.int32)[None]


def movement(model: ModelAdapter, variables: Any, length: int, vocab: int, position: int):
  """How far the logits at each position move when the token at `position` changes."""
  tokens = _tokens(length, vocab)
  changed = tokens.copy()
  changed[0, position] = 1 + tokens[0, position] % max(vocab - 1, 1)

  @jax.jit
  def logits(x):
    return model.apply(variables, x, train=False).astype(jnp.float32)

  before, after = np.asarray(logits(tokens)), np.asarray(logits(changed))
  scale = max(float(np.abs(before).max()), 1e-6)
  return np.abs(after - before).max(-1)[0] / scale


def check(model: ModelAdapter, variables: Any, length: int, vocab: int) -> str | None:
  """None when the model keeps the contract its `targets` claims; else why not, one line."""
  if length < 3:
    return None
  position = length // 2
  moved = movement(model, variables, length, vocab, position) > _TOLERANCE
  shift = 1 if model.targets == "inputs" else 0
  if moved[: position + shift].any():
    first = int(np.argmax(moved))
    return (
      f"the logits at position {first} move when token {position} changes: the model sees "
      "tokens after the one it predicts (not causal), which next-token training cannot use"
    )
  if moved[position + shift]:
    return None
  if shift == 0 and position + 1 < length and moved[position + 1]:
    return (
      "the model shifts its inputs itself (the logits at a changed token stay, those after "
      "it move): set model.call.targets=inputs, or it learns to predict two tokens ahead"
    )
  return (
    f"the logits at position {position + shift} do not move when token {position} changes: "
    "the model does not predict from the tokens it is given"
    + ("" if shift else " (if it shifts its inputs itself, set model.call.targets=inputs)")
  )
