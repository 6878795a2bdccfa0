"""The pure train and eval steps.

`make_train_step` returns one pure function `train_step(state, batch) ->
(state, metrics)`; `bigbatch.step.CompiledSteps` jits it with explicit
shardings and a donated state and compiles it once for each batch size a plan
uses.

A batch is a dict of arrays with the examples on the leading axis:
`inputs` (any shape; uint8 images are normalised on the device, see
`bigbatch.step.inputs`), `labels` (int32 class indices) and, for evaluation, `mask`
(1 for a real example, 0 for padding).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from bigbatch.models import COMPUTE_DTYPES as COMPUTE_DTYPES  # re-exported
from bigbatch.models import compute_dtype as compute_dtype  # re-exported
from bigbatch.models.adapter import ModelAdapter, as_adapter
from bigbatch.optim import clip_metrics, current_hyperparams
from bigbatch.step import gradients as gn
from bigbatch.step.accumulate import accumulate
from bigbatch.step.compiled import CompiledSteps as CompiledSteps  # re-exported
from bigbatch.step.compiled import CompileRecord as CompileRecord  # re-exported
from bigbatch.step.compiled import abstract_state as abstract_state  # re-exported
from bigbatch.step.compiled import enable_compilation_cache as enable_compilation_cache
from bigbatch.step.finite import first_nonfinite
from bigbatch.step.inputs import Normalisation, model_inputs
from bigbatch.step.losses import LossFn, classification
from bigbatch.step.losses import cross_entropy as cross_entropy  # re-exported
from bigbatch.step.state import TrainState

Batch = Mapping[str, Any]


def _micro_batch_count(batch_size: int, micro_batch_size: int | None, data_shards: int) -> int:
  if not micro_batch_size or batch_size <= micro_batch_size:
    return 1
  if batch_size % micro_batch_size or micro_batch_size % data_shards:
    raise ValueError(
      f"micro_batch_size: batch {batch_size} is not whole micro-batches of "
      f"{micro_batch_size} split over {data_shards} devices"
    )
  return batch_size // micro_batch_size


def _hyper_metrics(opt_state, dataset_size: int | None, batch_size: int) -> dict[str, jax.Array]:
  """The learning rate and momentum the optimizer holds, the noise scale they give, and
  what its clipping did (`optim.clip_metrics`)."""
  hyper = current_hyperparams(opt_state)
  out = {k: jnp.asarray(hyper[k], jnp.float32) for k in ("learning_rate", "momentum") if k in hyper}
  if dataset_size and "learning_rate" in out:
    momentum = out.get("momentum", 0.0)
    out["noise_scale"] = out["learning_rate"] * (dataset_size / batch_size - 1.0) / (1.0 - momentum)
  return out | clip_metrics(opt_state)  # `clipped`, `clipped_fraction` where it clips


def example_keys(seed: int, step: jax.Array, batch_size: int) -> jax.Array:
  """One raw key (uint32 [2]) per example of a step's batch, from `seed` and the step
  alone: a piece of the batch takes its first example's key, wherever it is computed."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.random.key_data(jax.random.split(step_key, batch_size))


def _loss_and_grad(model: ModelAdapter, loss_fn: LossFn, normalisation):
  """`grad_fn(params, batch_stats, batch) -> ((mean loss, (metric sums, new stats)), grads)`."""

  def grad_fn(params, state_stats, batch):
    def mean_loss(params):
      variables = {"params": params, "batch_stats": state_stats}
      # per micro-batch: a float32 copy of the whole batch would be 4x its uint8 bytes
      inputs = model_inputs(batch["inputs"], normalisation)
      # each piece (device shard, micro-batch, half) draws its dropout from its first
      # example's key; a model without dropout never reads it, and XLA drops it
      rngs = {"dropout": jax.random.wrap_key_data(batch["rng"][0])} if "rng" in batch else {}
      logits, updates = model.apply(
        variables, inputs, train=True, mutable=["batch_stats"], rngs=rngs, batch=batch
      )
      losses, metrics = loss_fn(logits, model.scored(batch))
      values = [losses, *(jax.lax.stop_gradient(m).astype(losses.dtype) for m in metrics.values())]
      # One reduction for all sums: over a sharded batch each reduction is a
      # cross-device all-reduce, and a second one for the accuracy alone cost
      # about 12% of a small model's step.
      sums = jnp.sum(jnp.stack(values), axis=1)
      metric_sums = dict(zip(metrics, sums[1:]))
      return sums[0] / losses.shape[0], (metric_sums, updates.get("batch_stats", state_stats))

    return jax.value_and_grad(mean_loss, has_aux=True)(params)

  return grad_fn


def _gradient(grad_fn, state: TrainState, batch: Batch, count: int, *, mesh, data_shards, measure):
  """((loss, (correct per piece, batch stats)), grads, pieces, noise sums) of a batch cut in
  `count` micro-batches: per data-parallel group with a mesh, else partitioned."""
  inputs = {key: value for key, value in batch.items() if key != "mask"}
  piece_grad = lambda params, piece: grad_fn(params, state.batch_stats, piece)  # noqa: E731
  if mesh is None:
    return *accumulate(piece_grad, state.params, inputs, count, data_shards), count, None
  (loss, aux), grads, noise = gn.data_parallel_grads(
    piece_grad, state.params, inputs, mesh=mesh, micro_batches=count, measure=measure
  )
  return (loss, aux), grads, round(noise["b_big"] / noise["b_small"]), noise


def _norms(batch_size: int, count: int, grads, updates, params) -> dict[str, jax.Array]:
  """The step's size and the norms of its gradient, its update and the new parameters."""
  return {
    "batch_size": jnp.asarray(batch_size, jnp.float32),
    "micro_batches": jnp.asarray(count, jnp.float32),
    "grad_norm": optax.tree.norm(grads),
    "update_norm": optax.tree.norm(updates),
    "param_norm": optax.tree.norm(params),
  }


def _cut_in_halves(mesh: Mesh | None, count: int) -> bool:
  """Whether measuring cuts the batch in two halves: one data-parallel group, no accumulation."""
  return mesh is not None and count == 1 and gn.groups_of(mesh)[1] == 1


def make_train_step(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  *,
  dataset_size: int | None = None,
  label_smoothing: float = 0.0,
  micro_batch_size: int | None = None,
  data_shards: int = 1,
  mesh: Mesh | None = None,
  measure_noise: bool = False,
  noise_horizon: float | None = None,
  noise_confidence: float = 0.95,
  noise_every: int = 1,
  measure_this_step: bool = True,
  normalisation: Normalisation | None = None,
  rng_seed: int | None = 0,
  loss_fn: LossFn | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The pure train step of `model` and `optimizer`.

  Args:
    model: a flax module with (optionally) `batch_stats`.
    optimizer: any optax transformation; a bigbatch optimizer (or any with
      `optax.inject_hyperparams`) also reports its learning rate and momentum.
    dataset_size: training examples N, for the noise-scale metric
      `lr (N/B - 1) / (1 - m)`; None leaves the metric out.
    label_smoothing: weight of the uniform distribution in the targets.
    micro_batch_size: the largest global batch computed at once; a larger one
      (a multiple of it) sums its micro-batches' gradients
      (`bigbatch.step.accumulate`). None: never split.
    data_shards: devices the batch is split over (for cutting micro-batches
      without moving examples between devices).
    mesh: each data-parallel group takes the gradient of its own examples and
      one all-reduce sums them (`gradients.data_parallel_grads`), batch norm
      normalising within each device's examples, as ghost batches do. None:
      the whole batch's gradient, partitioned by the compiler.
    measure_noise: measure the gradient noise scale (needs `mesh`): metrics
      `grad_sq_norm`, `grad_trace` (the smoothed |G|^2 and tr(S)) with their
      standard errors (`*_se`), `grad_noise_scale` (B_simple; NaN while |G|^2
      is not resolved), `grad_noise_scale_low` / `_high` (its confidence
      interval; +inf: no upper bound, NaN: unknown) and `grad_noise_steps`
      (the effective steps averaged); the smoothing lives in `state.noise`
      (`gradients.read`).
    noise_horizon: the smoothing's horizon in examples (needed to measure).
    noise_confidence: the two-sided confidence level of B_simple's interval.
    noise_every: where measuring costs a second pass (one data-parallel group and
      no accumulation: the batch is cut in two halves), the caller measures only
      one step in `noise_every` (the trainer: the steps whose number is a multiple
      of it), and each measurement stands for `noise_every` steps' examples in
      the smoothing.
    measure_this_step: False gives the step between two such measurements: there
      it takes the batch whole and carries `state.noise` unchanged (its metrics
      are the carried ones). Where measuring costs nothing it measures anyway.
    normalisation: the (mean, std) that uint8 inputs are normalised with on
      the device (`DatasetSpec.device_normalisation`); float inputs ignore it.
    loss_fn: `loss_fn(outputs, batch) -> (per-example loss, per-example metrics)`
      (`bigbatch.step.losses`); None: classification, cross-entropy smoothed by
      `label_smoothing`, and accuracy.
    rng_seed: the seed of the `dropout` stream a model gets in training:
      `fold_in(key(rng_seed), step)`, so a resumed run draws what it would have
      drawn (`example_keys`). None: no stream.

  Returns:
    `train_step(state, batch) -> (state, metrics)`, scalar metrics `loss`, the
    loss function's metrics (`accuracy` by default) as means, `batch_size`, `micro_batches`, `grad_norm`, `update_norm`,
    `param_norm`, and `learning_rate`, `momentum`, `noise_scale` where the
    optimizer reports them.
  """
  if measure_noise and (mesh is None or not noise_horizon or noise_horizon <= 0):
    raise ValueError("measure_noise: needs a mesh and a positive noise_horizon (examples)")
  if not isinstance(noise_every, int) or noise_every < 1:
    raise ValueError(f"noise_every: must be a whole number >= 1, got {noise_every!r}")
  model = as_adapter(model)

  grad_fn = _loss_and_grad(model, loss_fn or classification(label_smoothing), normalisation)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    batch_size = batch["labels"].shape[0]
    if rng_seed is not None:
      batch = {**batch, "rng": example_keys(rng_seed, state.step, batch_size)}
    count = _micro_batch_count(batch_size, micro_batch_size, data_shards)
    # where measuring cuts the batch in halves, the caller may measure one step in `every`
    halves = measure_noise and _cut_in_halves(mesh, count)
    measuring = measure_noise and (measure_this_step or not halves)
    (loss, (sums, batch_stats)), grads, pieces, noise = _gradient(
      grad_fn, state, batch, count, mesh=mesh, data_shards=data_shards, measure=measuring
    )
    means = {key: total * pieces / batch_size for key, total in sums.items()}
    smoothed = state.noise
    if measuring:  # one measurement in `noise_every` stands for their examples
      examples = batch_size * (noise_every if halves else 1)
      smoothed = gn.smooth(state.noise, *gn.estimates(**noise), examples, noise_horizon)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **means, **_norms(batch_size, count, grads, updates, params)}
    metrics |= _hyper_metrics(opt_state, dataset_size, batch_size)
    if measure_noise:
      metrics |= gn.read(smoothed, noise_confidence)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      noise=smoothed,
    )
    return new_state, metrics

  return train_step


# The key of the index of the new state's first non-finite array in `packed_metrics`'
# vector (`bigbatch.step.finite`); not a metric: the trainer reads it and drops it.
NONFINITE_KEY = "first_nonfinite"


def packed_metrics(
  train_step: Callable, *, check_finite: bool = True
) -> tuple[Callable, list[str]]:
  """`train_step` returning its metrics as one float32 vector, and the vector's keys.

  The trainer fetches every step's metrics (to stop at the first non-finite
  loss), and each array fetched costs the host about 10 us: a dict of 25
  scalars fetched for every step of batch 128 on a CPU took a tenth of the
  step. One vector costs one fetch. The keys are filled in when the step is
  traced (compiled), before it first runs.

  With `check_finite`, the vector also carries `NONFINITE_KEY`: the index of
  the new state's first floating array that holds a NaN or an infinity, -1
  when none does (`finite.first_nonfinite`; its names: `finite.leaf_names`).
  """
  keys: list[str] = []

  def packed(state: TrainState, batch: Batch):
    state, metrics = train_step(state, batch)
    if check_finite:
      metrics = {**metrics, NONFINITE_KEY: first_nonfinite(state)}
    keys[:] = sorted(metrics)
    return state, jnp.stack([jnp.asarray(metrics[k], jnp.float32) for k in keys])

  return packed, keys


def make_eval_step(
  model: nn.Module, *, normalisation: Normalisation | None = None, loss_fn: LossFn | None = None
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
  """The eval step: exact sums over the real (mask 1) examples of a batch.

  `normalisation` and `loss_fn` are as in `make_train_step` (the default:
  cross-entropy, unsmoothed, and accuracy).

  Returns:
    `eval_step(state, batch) -> {"loss", "count", METRIC...}`: the summed loss
    and metrics as float32 (counts up to 2**24 exactly), the real examples
    as int32. Add them over batches and divide once at the end.
  """
  loss_fn = loss_fn or classification()
  model = as_adapter(model)

  def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    inputs = model_inputs(batch["inputs"], normalisation)
    logits = model.apply(variables, inputs, train=False, batch=batch)
    mask = batch.get("mask", jnp.ones(batch["labels"].shape[:1], jnp.int32)).astype(jnp.int32)
    losses, metrics = loss_fn(logits, model.scored(batch))
    real = mask > 0
    sums = {"loss": losses, **metrics}
    out = {k: jnp.sum(jnp.where(real, v.astype(jnp.float32), 0.0)) for k, v in sums.items()}
    return {**out, "count": jnp.sum(mask)}

  return eval_step


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a (last, partial) batch to `batch_size` examples and adds its `mask`."""
  size = len(batch["labels"])
  if size > batch_size:
    raise ValueError(f"eval_batch_size: a batch of {size} does not fit in {batch_size}")
  padded = {
    key: np.concatenate([value, np.zeros((batch_size - size,) + value.shape[1:], value.dtype)])
    for key, value in batch.items()
    if key != "mask"
  }
  mask = np.asarray(batch.get("mask", np.ones(size, np.int32)), np.int32)
  padded["mask"] = np.concatenate([mask, np.zeros(batch_size - size, np.int32)])
  return padded
