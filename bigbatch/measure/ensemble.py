"""The snapshot ensemble of a run (Huang et al. 2017), beside each of its snapshots.

The ensemble predicts with the mean of its members' softmax outputs; each
member is one snapshot (`bigbatch.workdir.snapshots`). It is evaluated as
the run's evaluation is, sharded over the mesh, on the whole test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigbatch import data
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.step.inputs import model_inputs
from bigbatch.train.evaluate import split_sums

__all__ = ["evaluate_ensemble", "make_ensemble_step"]


def make_ensemble_step(model, *, normalisation=None, members: int):
  """The ensemble's eval step: sums over the real examples for each member and their mean.

  Returns:
    `step(variables, batch) -> {"correct", "loss", "count"}`: `variables` a
    tuple of `members` `{"params", "batch_stats"}`; `correct` and `loss` have
    `members + 1` entries, the members' then the ensemble's, whose prediction
    is the mean of the members' softmax outputs (its loss: minus the log of
    that mean's probability of the label).
  """

  def ensemble_step(variables, batch):
    inputs = model_inputs(batch["inputs"], normalisation)
    logits = [model.apply(v, inputs, train=False).astype(jnp.float32) for v in variables]
    log_probs = jnp.stack([jax.nn.log_softmax(x) for x in logits])
    # log of the mean of the softmaxes, without leaving log space
    mean = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(float(members))
    labels, mask = batch["labels"], batch["mask"].astype(jnp.int32)
    correct = [jnp.argmax(x, -1) == labels for x in logits]
    correct.append(jnp.argmax(mean, -1) == labels)
    losses = [st.cross_entropy(x, labels) for x in logits]
    losses.append(-jnp.take_along_axis(mean, labels[:, None], axis=-1)[:, 0])
    return {
      "correct": jnp.stack([jnp.sum(c.astype(jnp.int32) * mask) for c in correct]),
      "loss": jnp.stack([jnp.sum(jnp.where(mask > 0, x, 0.0)) for x in losses]),
      "count": jnp.sum(mask),
    }

  return ensemble_step


def evaluate_ensemble(experiment: Any, members: Sequence[Any]) -> dict[str, Any]:
  """Test accuracy and loss of each member and of their ensemble, sharded like evaluation.

  Args:
    experiment: the run's `Experiment` (`Experiment.from_record`).
    members: `{"params", "batch_stats"}` of each snapshot, placed on the mesh.

  Returns:
    `{"members": [{"eval_accuracy", "eval_loss"}, ...], "ensemble": {...}}`.
  """
  members, mesh, dataset = tuple(members), experiment.mesh, experiment.dataset
  batch_size = experiment.spec.eval.batch_size
  shd.check_batch_size(batch_size, mesh, field="eval_batch_size")
  step = make_ensemble_step(
    experiment.model, normalisation=dataset.device_normalisation, members=len(members)
  )
  example = {**data.example_batch(dataset), "mask": jax.ShapeDtypeStruct((), np.int32)}
  compiled = st.CompiledSteps(step, members, example, mesh, returns_state=False)
  try:
    sums = split_sums(compiled, members, experiment.eval_source, dataset, mesh, batch_size)
  finally:
    compiled.close()
  count = max(int(sums["count"]), 1)
  results = [
    {"eval_accuracy": int(c) / count, "eval_loss": float(x) / count}
    for c, x in zip(np.asarray(sums["correct"]), np.asarray(sums["loss"]))
  ]
  return {"members": results[:-1], "ensemble": results[-1]}
