"""From a run's spec to the objects that train it: plan, optimizer, model, loss, step.

Each builder takes the typed spec (`bigbatch.spec.RunSpec`) and only what it
needs besides; a value the planner, a model or a loss refuses becomes a
`ConfigError` that names the config field. `bigbatch.train.experiment` calls them
in order; nothing here compiles or reads data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bigbatch import data, optim, partitioning
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import (
  ModelAdapter,
  as_adapter,
  compute_dtype,
  create_adapter,
  init_rngs,
  plugins,
)
from bigbatch.models.adapter import check_sources
from bigbatch.optim import masks as optim_masks
from bigbatch.plan import adam_rules, adaptive
from bigbatch.plan.checks import PlanError
from bigbatch.plan.phases import Plan
from bigbatch.plan.planner import plan_phases
from bigbatch.schedules import Schedule, make_schedule
from bigbatch.spec import ConfigError, RunSpec
from bigbatch.spec.optimizer import TRUST_MASK
from bigbatch.step import gradients, losses

# Planner arguments and the config fields they come from, for error messages.
_PLAN_FIELDS = {
  "dataset_size": "dataset.num_train_examples",
  "epochs": "num_epochs",
  "learning_rate": "optimizer.learning_rate",
  "batch_size": "batch_size",
  "weight_decay": "optimizer.weight_decay",
  "strategy": "plan.strategy",
  "max_batch_size": "plan.max_batch_size",
  "batch_multiple": "plan.batch_multiple",
  "noise_rule": "plan.noise_rule",
  "min_phase_epochs": "plan.min_phase_epochs",
  "adam_rule": "plan.adam_rule",
  "ramp": "plan.ramp",
  "b2": "optimizer.b2",
  "eps": "optimizer.eps",
}


def resolved(spec: RunSpec) -> RunSpec:
  """`spec` with a language model's token durations in epochs of its training split
  (read from the corpus, once a process); any other spec as it is."""
  if spec.resolved:
    return spec
  try:
    dataset = data.spec_for(spec.dataset.block())
  except data.DataError as error:
    raise ConfigError(str(error)) from None
  return spec.resolve(dataset.num_train_examples)


def schedule_of(spec: RunSpec) -> Schedule:
  """The baseline learning-rate schedule of `spec.schedule`."""
  spec = resolved(spec)
  try:
    return make_schedule(spec.schedule.name, spec.num_epochs, **spec.schedule.set_fields())
  except (TypeError, ValueError) as error:
    raise ConfigError(str(error)) from None


def plan_of(spec: RunSpec) -> Plan:
  """The phase plan of `spec` (for an adaptive strategy: the plan before any decision).

  Raises:
    ConfigError: naming the config field, for any value the planner refuses.
  """
  # SGD's momentum accumulates gradients; Adam steps along an average of them
  # (`m = b1 m + (1 - b1) g`) and PowerSign/AddSign along g itself, their
  # `beta` only choosing the sign of the average. For those the noise scale's
  # 1/(1 - m) is off by a constant factor, which cancels where the planner
  # sets batches (from ratios of noise scales); and the plan's momentum is
  # what feeds `b1` or `beta`. So they stand in for the momentum, and the
  # absolute noise scales logged for these optimizers carry that factor.
  spec = resolved(spec)
  schedule = schedule_of(spec)
  if spec.plan.adaptive:
    baseline = _planned(spec, schedule, "decay_lr")
    plan = adaptive.initial_plan(baseline, spec.plan.strategy, spec.optimizer.learning_rate)
  else:
    plan = _planned(spec, schedule, spec.plan.strategy)
  # a language model's tables count tokens: sequences x length
  return dataclasses.replace(plan, tokens_per_example=spec.dataset.sequence_length)


def _planned(spec: RunSpec, schedule: Schedule, strategy: str) -> Plan:
  plan = spec.plan
  try:
    return plan_phases(
      dataset_size=spec.dataset.num_train_examples,
      epochs=spec.num_epochs,
      learning_rate=spec.optimizer.learning_rate,
      batch_size=spec.batch_size,
      momentum=spec.optimizer.momentum,
      schedule=schedule,
      weight_decay=spec.optimizer.options.get("weight_decay", 0.0),
      strategy=strategy,
      max_batch_size=plan.max_batch_size,
      batch_multiple=plan.batch_multiple,
      noise_rule=plan.noise_rule,
      min_phase_epochs=plan.min_phase_epochs,
      ramp=plan.ramp,
      **_adam_of(spec),
    )
  except PlanError as error:
    field, _, message = str(error).partition(": ")
    raise ConfigError(f"{_PLAN_FIELDS.get(field, field)}: {message}") from None


def _adam_of(spec: RunSpec) -> dict[str, Any]:
  """The planner's Adam arguments: the rule (unset: none, the paper's as for SGD) and,
  for an optimizer holding them, the b2 and eps it starts from."""
  rule = spec.plan.adam_rule
  if rule is None:
    return {}
  if not spec.optimizer.holds_betas:  # LARS, Lion, Muon, a factory: the rate moves alone
    return {"adam_rule": rule}
  return {
    "adam_rule": rule,
    "b2": spec.optimizer.options["b2"],
    "eps": spec.optimizer.options["eps"],
  }


def optimizer_of(spec: RunSpec, plan: Plan) -> optax.GradientTransformationExtraArgs:
  """The spec's optimizer, its learning rate, momentum and decay following `plan`,
  behind global-norm clipping where `optimizer.clip_norm` is set.

  A mask that names no parameter is refused when the optimizer is initialised
  (`optim.masks.checked`), the first moment the parameters are known.
  """
  optimizer = spec.optimizer
  if plan.strategy in adaptive.STRATEGIES:
    # Decisions made while training change the learning rate through the
    # optimizer's state (`optim.set_hyperparams`); a plan's schedule is fixed
    # when the step compiles.
    plan = adaptive.constants(plan)
  masks = _masks_of(optimizer)
  try:
    if optimizer.is_builtin:
      tx = _builtin(optimizer, plan, masks)
    else:
      tx = _from_factory(optimizer, plan, masks.get("optimizer.decay_mask"))
  except ValueError as error:  # a value only the optimizer itself checks
    raise ConfigError(f"optimizer.{error}") from None
  if optimizer.clip_norm is not None:
    tx = optax.chain(optim.clip_by_global_norm(optimizer.clip_norm), tx)
  return optim_masks.checked(tx, masks, error=ConfigError)


def _masks_of(optimizer) -> dict[str, Any]:
  """The optax masks of `optimizer.decay_mask` and LARS's and LAMB's `trust_mask`, by
  config field; a mask of every parameter is left out (optax's default)."""
  given = {"optimizer.decay_mask": optimizer.decay_mask_or_default}
  if optimizer.is_builtin and "trust_mask" in optimizer.options:
    given["optimizer.trust_mask"] = optimizer.options["trust_mask"] or TRUST_MASK
  return {
    field: optim.parameter_mask(value, field)
    for field, value in given.items()
    if value not in (None, "all")
  }


def _builtin(optimizer, plan: Plan, masks: dict[str, Any]) -> optax.GradientTransformation:
  """A built-in optimizer (`optim.OPTIMIZERS`) of the spec, following `plan`."""
  name, opt = optimizer.name, optimizer.options
  decay = plan if opt.get("weight_decay") else 0.0
  mask = masks.get("optimizer.decay_mask")
  if name == "sgd_momentum":
    return optim.sgd_momentum(
      plan, momentum=plan, nesterov=opt["nesterov"], weight_decay=decay, mask=mask
    )
  if name in ("power_sign", "add_sign"):
    # the internal decay `f(t)` spans the whole run, as in Bello et al. (2017),
    # so its `T` is the plan's total number of steps
    build = optim.power_sign if name == "power_sign" else optim.add_sign
    alpha = {"alpha": opt["alpha"]} if opt["alpha"] is not None else {}  # else the paper's
    return build(
      plan,
      beta=plan,
      decay=opt["decay"],
      decay_steps=plan.total_steps,
      num_periods=opt["num_periods"],
      weight_decay=decay,
      mask=mask,
      **alpha,
    )
  if name == "lars":
    return optim.lars(
      plan, plan, weight_decay=decay, trust_coefficient=opt["trust_coefficient"],
      eps=opt["eps"], nesterov=opt["nesterov"], weight_decay_mask=mask,
      trust_mask=masks.get("optimizer.trust_mask"), trust_ratio=opt["trust_ratio"],
    )  # fmt: skip
  if name == "lion":
    return optim.lion(plan, plan, b2=opt["b2"], weight_decay=opt["weight_decay"], mask=mask)
  if name == "muon":
    muon = {k: v for k, v in opt.items() if k != "beta"}
    return optim.muon(plan, plan, weight_decay_mask=mask, **muon)
  common = {"b2": opt["b2"], "eps": opt["eps"]}
  if adam_rules.rule(plan.adam_rule).moves_betas:  # b2 and eps follow the batch
    common = {"b2": plan, "eps": plan}
  if name == "lamb":
    trust = masks.get("optimizer.trust_mask")
    return optim.lamb(
      plan, plan, weight_decay=decay, weight_decay_mask=mask, trust_mask=trust, **common
    )
  if name == "adam":
    return optim.adam(plan, b1=plan, **common)
  if name == "adamw":
    return optim.adamw(plan, b1=plan, weight_decay=plan, mask=mask, **common)
  return optim.amsgrad(plan, b1=plan, bias_correction=opt["bias_correction"], **common)


def _from_factory(optimizer, plan: Plan, mask: Any) -> optax.GradientTransformation:
  """A factory's optimizer, its rate (and momentum, where it has one) following `plan`."""
  options = dict(optimizer.options)
  if mask is not None:
    options[optimizer.mask_arg] = mask
  momentum = plan if optimizer.momentum_field is not None else None
  return optim.plan_aware(
    optimizer.factory, plan, momentum, momentum_arg=optimizer.momentum_arg, options=options
  )


def model_of(spec: RunSpec, num_classes: int, features: tuple = ()) -> ModelAdapter:
  """The spec's `model` (any field overrides the architecture's default), with its
  `ghost_batch_size`, computing in its `compute_dtype`, and how it is called
  (`model.call`, from the batch's `features`): a `bigbatch.models.ModelAdapter`."""
  vocab = spec.model.fields.get("vocab_size")
  if vocab is not None and isinstance(vocab, int) and vocab < num_classes:
    raise ConfigError(
      f"model.vocab_size: {vocab:,} is smaller than the data's vocabulary of {num_classes:,} "
      "ids (dataset.tokenizer or dataset.vocab_size); unset it to take the data's"
    )
  try:
    adapter = create_adapter(
      spec.model.name,
      num_classes=num_classes,
      ghost_batch_size=spec.ghost_batch_size,
      dtype=compute_dtype(spec.compute_dtype),
      call=spec.model.call,
      **spec.model.fields,
    )
    check_sources(adapter.inputs, tuple(features))
    return dataclasses.replace(adapter, features=tuple(features))
  except (TypeError, ValueError) as error:
    raise ConfigError(str(error)) from None


def _token_bytes(dataset: Any) -> Any:
  """The bytes each token id stands for (`DatasetSpec.token_bytes`), or None: a stand-in for
  a spec that lacks the field (`config.train_step_from_config`'s) has none."""
  return getattr(dataset, "token_bytes", None)


def loss_fn_of(spec: RunSpec, dataset: Any):
  """The spec's `loss` (`cross_entropy` with `label_smoothing`, an import path, or a
  function), unchecked: `train.preflight` checks it on the model's outputs.

  Raises:
    ConfigError: naming `loss` when it names no function.
  """
  try:
    return losses.resolve(
      spec.loss, spec.label_smoothing, dataset.bytes_per_token, _token_bytes(dataset)
    )
  except ValueError as error:
    raise ConfigError(str(error)) from None


def loss_of(spec: RunSpec, model: Any, dataset: Any):
  """The spec's `loss` (`loss_fn_of`), checked on the shapes of the model's outputs for a
  batch of 2 (nothing is computed).

  Raises:
    ConfigError: naming `loss` and what is wrong with what it returns.
  """
  loss_fn = loss_fn_of(spec, dataset)
  model = as_adapter(model)
  try:
    inputs = jax.ShapeDtypeStruct((2, *dataset.input_shape), dataset.model_input_dtype)
    batch = {
      key: jax.ShapeDtypeStruct((2, *value.shape), value.dtype)
      for key, value in data.example_batch(dataset).items()
    }
    variables = jax.eval_shape(
      lambda x, b: model.init(init_rngs(jax.random.key(0)), x, train=False, batch=b),
      inputs,
      batch,
    )
    outputs = jax.eval_shape(
      lambda v, x, b: model.apply(v, x, train=False, batch=b), variables, inputs, batch
    )
    losses.check(loss_fn, outputs, model.scored(batch))
  except ValueError as error:
    raise ConfigError(str(error)) from None
  return loss_fn


def check_plan_on_mesh(spec: RunSpec, plan: Plan, mesh: Mesh) -> None:
  """Refuses, before anything compiles, a plan whose batches the mesh cannot split.

  Every phase's batch must be a whole number of ghost batches on every device.

  Raises:
    ConfigError: naming `batch_size` (the first phase) or `plan.batch_multiple`.
  """
  checks = []
  if plan.strategy in adaptive.STRATEGIES:  # every batch a decision can choose is a multiple
    checks.append((spec.plan.batch_multiple, "plan.batch_multiple", ""))
  if plan.strategy == "accumulate":  # each micro-batch (the cap) splits over the mesh
    checks.append((plan.max_batch_size, "plan.max_batch_size", ""))
  for phase in plan.phases:
    field = "batch_size" if phase.index == 0 else "plan.batch_multiple"
    checks.append((phase.batch_size, field, f" (phase {phase.index + 1})"))
  for batch_size, field, where in checks:
    try:
      shd.check_batch_size(batch_size, mesh, ghost_batch_size=spec.ghost_batch_size, field=field)
    except shd.ShardingError as error:
      raise ConfigError(f"{error}{where}") from None


def _halves_fit(spec: RunSpec, plan: Plan, mesh: Mesh) -> bool:
  """Whether each half of the smallest batch holds whole ghost batches on every device.

  With one data-parallel group and no accumulation, measuring the noise scale
  cuts the batch in two halves (`gradients.data_parallel_grads`); a half
  smaller than a ghost batch cannot be normalised, so such a run is not
  measured (e.g. batch 16 with ghost batch 16 on one device).
  """
  ghost = spec.ghost_batch_size
  if not ghost or gradients.groups_of(mesh)[1] > 1 or plan.strategy == "accumulate":
    return True
  shards = shd.data_parallel_size(mesh)
  return (min(plan.batch_sizes) // 2) % (ghost * shards) == 0


@dataclasses.dataclass(frozen=True)
class BatchNormUse:
  """Where the model's batch norm takes its statistics from.

  Attributes:
    whole: over the whole batch (or groups of it the model names): a step that
      cuts the batch (into devices' shares, or halves to measure) would change them.
    note: the banner's words for it.
  """

  whole: bool
  note: str


def batch_norm_use(
  model: Any, input_shape: tuple[int, ...], ghost: int | None, dtype: Any = jnp.float32
) -> BatchNormUse:
  """How `model` normalises (read from `jax.eval_shape` of its init: nothing is allocated):
  ghost batches where `ghost` reaches it (a `ghost_batch_size` field, or flax's own
  BatchNorm, intercepted), the axis its flax BatchNorms name, or the whole batch."""
  model = as_adapter(model)
  inputs = jax.ShapeDtypeStruct((1, *input_shape), dtype)
  variables, norms = plugins.flax_batch_norms(model, inputs)
  if not jax.tree.leaves(variables.get("batch_stats", {})):
    unused = f"; ghost_batch_size {ghost} does not apply" if ghost else ""
    return BatchNormUse(False, "no batch norm in the model" + unused)
  if ghost and (plugins.takes_ghost_batch(model) or norms):
    return BatchNormUse(False, f"ghost batch {ghost}")
  if ghost:
    return BatchNormUse(
      True,
      f"ghost_batch_size {ghost} does not reach this model (its batch norm is neither flax's "
      "BatchNorm nor a ghost_batch_size field): batch norm over the whole batch",
    )
  named = sorted({str(name) for name in norms if name is not None})
  if named:
    return BatchNormUse(
      True, f"batch norm over the whole batch, as its axis_name {', '.join(named)} asks"
    )
  return BatchNormUse(True, "no ghost batch: batch norm, if any, over the whole batch")


def whole_batch_norm(
  model: Any, input_shape: tuple[int, ...], ghost: int | None, dtype: Any = jnp.float32
) -> bool:
  """Whether `model` normalises over the whole batch (`batch_norm_use`)."""
  return batch_norm_use(model, input_shape, ghost, dtype).whole


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The train step, whether it measures the gradient noise scale and, where it does
  not, why, and how the model's batch norm takes its statistics."""

  fn: Any
  measures_noise: bool
  unmeasured: str | None = None
  batch_norm: BatchNormUse | None = None
  # with `noise.every` > 1 on one data-parallel group: the step between two measurements
  # (the batch whole, the smoothing carried), which the loop runs on the other steps
  between: Any = None


def train_step_of(
  spec: RunSpec,
  model: ModelAdapter,
  optimizer: optax.GradientTransformation,
  plan: Plan,
  mesh: Mesh,
  dataset: Any,
  loss_fn: Any = None,
) -> TrainStep:
  """The spec's train step on `mesh`, and whether it measures the gradient noise scale.

  `dataset` is the `DatasetSpec` (its input shape and on-device normalisation).

  The step takes each device's gradient on its own examples (and so can
  measure the noise scale) when batch norm never needs examples of two
  devices at once: with ghost batches, or a model without batch norm (an MLP).
  A model with whole-batch batch norm (`ghost_batch_size` unset or not
  reaching it, or a flax BatchNorm naming an axis: `batch_norm_use`) is not
  measured: on several devices it keeps the compiler-partitioned step, which
  normalises over the global batch, and on one cutting the batch in halves
  would normalise each half apart. Nor is a run whose halves (cut to measure
  on one device) cannot hold whole ghost batches (`_halves_fit`). The step's
  `unmeasured` says why in words.
  """
  noise = spec.noise
  use = batch_norm_use(model, dataset.input_shape, spec.ghost_batch_size, dataset.model_input_dtype)
  per_device = shd.data_parallel_size(mesh) == 1 or not use.whole
  unmeasured = _unmeasured(spec, plan, mesh, use)
  measure = unmeasured is None
  horizon = noise.horizon_epochs * plan.dataset_size

  def make(measure_this_step: bool):
    step = st.make_train_step(
      model,
      optimizer,
      dataset_size=plan.dataset_size,
      label_smoothing=spec.label_smoothing,
      micro_batch_size=plan.max_batch_size if plan.strategy == "accumulate" else None,
      data_shards=shd.data_parallel_size(mesh),
      mesh=mesh if per_device else None,
      measure_noise=measure,
      noise_horizon=horizon if measure else None,
      noise_confidence=noise.confidence,
      noise_every=noise.every,
      measure_this_step=measure_this_step,
      normalisation=dataset.device_normalisation,
      rng_seed=spec.seed,
      loss_fn=loss_fn
      or losses.resolve(
        spec.loss, spec.label_smoothing, dataset.bytes_per_token, _token_bytes(dataset)
      ),
    )
    # entered inside the step, which may be traced on a background compile thread
    return partitioning.traced(step, mesh, spec.mesh.rules)

  # with several groups every step has their gradients: measuring costs nothing to skip
  skips = measure and noise.every > 1 and gradients.groups_of(mesh)[1] == 1
  return TrainStep(make(True), measure, unmeasured, use, make(False) if skips else None)


def _unmeasured(spec: RunSpec, plan: Plan, mesh: Mesh, use: BatchNormUse) -> str | None:
  """Why the run's gradient noise scale is not measured, in words (None: it is)."""
  if not spec.noise.measure:
    return "noise.measure is off"
  if use.whole:
    # whole-batch statistics would become each half's if the batch were cut to measure
    return f"{use.note}, which the pieces a measurement compares would each change"
  if not _halves_fit(spec, plan, mesh):
    return (
      f"each half of the smallest batch ({min(plan.batch_sizes):,}), cut to measure on one "
      f"device, must hold whole ghost batches of {spec.ghost_batch_size}"
    )
  return None
