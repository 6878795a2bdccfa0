"""Evaluation: loss and accuracy over a whole split, sharded like training.

The last batch is padded to the evaluation batch size and its padding masked
out, so every example counts once whatever the split's size and the device
count.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from bigbatch import data, partitioning
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.train.setup import Run


class Evaluator:
  """Loss and accuracy on the test split (and a training subset), sharded like training."""

  def __init__(self, run: Run, state: Any):
    self.run = run
    self.batch_size = run.spec.eval.batch_size
    self.train_examples = run.spec.eval.train_examples
    step = st.make_eval_step(
      run.model, normalisation=run.dataset.device_normalisation, loss_fn=run.loss_fn
    )
    self._steps = st.CompiledSteps(
      # the model's activation constraints read the rules while the step is traced
      partitioning.traced(step, run.mesh, run.spec.mesh.rules),
      state,
      {**data.example_batch(run.dataset), "mask": jax.ShapeDtypeStruct((), np.int32)},
      run.mesh,
      returns_state=False,
    )

  def _measure(self, state, source, prefix: str, num_examples: int | None = None):
    run = self.run
    totals = split_sums(
      self._steps, state, source, run.dataset, run.mesh, self.batch_size, num_examples
    )
    count = max(int(totals["count"]), 1)
    means = {f"{prefix}_{key}": float(v) / count for key, v in totals.items() if key != "count"}
    loss = means.get(f"{prefix}_loss")
    if run.dataset.tokens_per_example and loss is not None and loss < 700.0:
      # a language model's: exp of the mean loss per token (a mean of the
      # per-example values would not be the corpus's perplexity); past e^700 it
      # is no float, and not shown
      means[f"{prefix}_perplexity"] = math.exp(loss)
    per_token = means.get(f"{prefix}_bytes_per_token")
    if loss is not None and per_token:
      # the loss over the bytes all the evaluated targets stand for (every sequence has
      # T targets): a mean of each sequence's bits per byte would weigh a short text as
      # much as a long one
      means[f"{prefix}_bits_per_byte"] = loss / (math.log(2.0) * per_token)
    return means

  def __call__(self, state) -> dict[str, float]:
    results = self._measure(
      state, self.run.eval_source, "eval", self.run.spec.eval.examples or None
    )
    if self.train_examples > 0:
      results |= self._measure(state, self.run.train_source, "train_eval", self.train_examples)
    return results

  def close(self) -> None:
    self._steps.close()


def split_sums(
  steps: st.CompiledSteps,
  state: Any,
  source: Any,
  spec: data.DatasetSpec,
  mesh: Any,
  batch_size: int,
  num_examples: int | None = None,
) -> dict[str, Any]:
  """An eval step's sums (`loss`, `count`, each metric) over a split, or its first examples.

  Args:
    steps: the compiled eval step, returning sums over a batch's real examples.
    state: what the step evaluates (a train state, or anything it takes).
    source: the split (`data.load_split`).
    spec: the dataset's spec.
    mesh: the mesh the step runs on.
    batch_size: the global eval batch.
    num_examples: only the split's first that many examples (None: all).
  """
  totals = None
  batches = data.eval_batches(
    source,
    spec,
    batch_size=batch_size,
    local=shd.process_batch_slice(mesh, batch_size),
    num_examples=num_examples,
  )
  for batch in batches:
    sums = jax.device_get(steps(state, shd.step_batch(mesh, batch, batch_size)))
    totals = sums if totals is None else {key: totals[key] + sums[key] for key in totals}
  return totals if totals is not None else {"count": 0}
