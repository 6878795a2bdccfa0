"""From an `ml_collections.ConfigDict` to a schedule, a plan and an optimizer.

Configs are Python files in `configs/` with `get_config()`. This module is
the one place that reads their planning and optimizer fields, and it turns
every mistake into a `ConfigError` whose one-line message names the field
and what is allowed, before any long work starts.
"""

from __future__ import annotations

import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from bigbatch import adaptive, gradients, losses, optim
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import compute_dtype, create_model, init_rngs
from bigbatch.phases import Plan
from bigbatch.planner import PlanError, plan_phases

# The blocks recipes are built from, and the config's error, where recipes and
# callers have always imported them.
from bigbatch.recipe import (  # noqa: F401  (re-exported)
  OPTIMIZER_VARIANTS,
  ConfigError,
  default_distributed_config,
  default_memory_config,
  default_mesh_config,
  default_noise_config,
  default_plan_config,
  default_schedule_config,
  load_sibling,
  set_run_fields,
  with_optimizer_variant,
)
from bigbatch.schedules import SCHEDULES, Schedule, make_schedule

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
}
_OPTIMIZER_FIELDS = {
  "sgd_momentum": ("learning_rate", "momentum", "nesterov", "weight_decay"),
  "adam": ("learning_rate", "b1", "b2", "eps"),
  "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay"),
  "amsgrad": ("learning_rate", "b1", "b2", "eps", "bias_correction"),
  "power_sign": ("learning_rate", "beta", "alpha", "decay", "num_periods", "weight_decay"),
  "add_sign": ("learning_rate", "beta", "alpha", "decay", "num_periods", "weight_decay"),
}
# The field that a plan's momentum feeds, where it is not Adam's `b1`.
_MOMENTUM_FIELDS = {"sgd_momentum": "momentum", "power_sign": "beta", "add_sign": "beta"}


def _require(config: ml_collections.ConfigDict, path: str) -> Any:
  node = config
  for part in path.split("."):
    if part not in node:
      raise ConfigError(f"{path}: missing from the config")
    node = node[part]
  return node


def momentum_of(config: ml_collections.ConfigDict) -> float:
  """The optimizer's momentum: `momentum` for SGD, `b1` for the Adam family,
  `beta` for PowerSign and AddSign."""
  # SGD's momentum accumulates gradients; Adam steps along an average of them
  # (`m = b1 m + (1 - b1) g`) and PowerSign/AddSign along g itself, their
  # `beta` only choosing the sign of the average. For those the noise scale's
  # 1/(1 - m) is off by a constant factor, which cancels where the planner
  # sets batches (from ratios of noise scales); and the plan's momentum is
  # what feeds `b1` or `beta`. So they stand in for the momentum, and the
  # absolute noise scales logged for these optimizers carry that factor.
  opt = config.optimizer
  field = _MOMENTUM_FIELDS.get(opt.name, "b1")
  return float(opt.get(field, 0.0 if field == "momentum" else 0.9))


def schedule_from_config(config: ml_collections.ConfigDict) -> Schedule:
  """The baseline learning-rate schedule of `config.schedule`."""
  fields = dict(_require(config, "schedule"))
  name = fields.pop("name", None)
  if name not in SCHEDULES:
    raise ConfigError(f"schedule.name: {name!r} is not one of {', '.join(SCHEDULES)}")
  allowed = set(inspect.signature(make_schedule).parameters) - {"name", "epochs"}
  for key, value in fields.items():
    if key not in allowed:
      raise ConfigError(f"schedule.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
    _check_numbers(f"schedule.{key}", value)
  try:
    return make_schedule(name, float(_require(config, "num_epochs")), **fields)
  except (TypeError, ValueError) as error:
    raise ConfigError(str(error)) from None


def _check_numbers(field: str, value: Any) -> None:
  """A list field (`boundaries`, `factor`, `momentum_range`) holds numbers only.

  The command line reads `--config.schedule.boundaries=abc` as the tuple
  ("abc",); a number is needed in every place.
  """
  if not isinstance(value, tuple | list):
    return
  if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
    text = ",".join(map(str, value))
    raise ConfigError(f"{field}: {text!r} is not a list of numbers")


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
  opt = _require(config, "optimizer")
  if opt.get("name") not in _OPTIMIZER_FIELDS:
    raise ConfigError(
      f"optimizer.name: {opt.get('name')!r} is not one of {', '.join(_OPTIMIZER_FIELDS)}"
    )
  allowed = _OPTIMIZER_FIELDS[opt.name]
  for key in opt:
    if key != "name" and key not in allowed:
      raise ConfigError(
        f"optimizer.{key}: not a field of {opt.name}; allowed: {', '.join(allowed)}"
      )
  if "learning_rate" not in opt:
    raise ConfigError("optimizer.learning_rate: missing from the config")
  field = _MOMENTUM_FIELDS.get(opt.name, "b1")
  if not 0.0 <= momentum_of(config) < 1.0:
    raise ConfigError(f"optimizer.{field}: must be in [0, 1), got {momentum_of(config)}")
  if opt.name in ("power_sign", "add_sign"):
    _check_sign_fields(opt)


def _check_sign_fields(opt: ml_collections.ConfigDict) -> None:
  """PowerSign's and AddSign's own fields: `alpha`, `decay`, `num_periods`."""
  if not float(opt.get("alpha", 1.0)) >= 1.0:
    raise ConfigError(f"optimizer.alpha: must be >= 1, got {opt.alpha}")
  if opt.get("decay", "none") not in optim.SIGN_DECAYS:
    raise ConfigError(
      f"optimizer.decay: {opt.decay!r} is not one of {', '.join(optim.SIGN_DECAYS)}"
    )
  if not float(opt.get("num_periods", 1.0)) > 0:
    raise ConfigError(f"optimizer.num_periods: must be positive, got {opt.num_periods}")


def plan_from_config(config: ml_collections.ConfigDict) -> Plan:
  """The phase plan of a config (`dataset`, `num_epochs`, `batch_size`,
  `optimizer`, `schedule` and `plan` fields).

  Raises:
    ConfigError: naming the config field, for any value the planner refuses.
  """
  _check_optimizer(config)
  schedule = schedule_from_config(config)
  plan_cfg = _require(config, "plan")
  strategy = plan_cfg.get("strategy", "increase_batch")
  if strategy in adaptive.STRATEGIES:
    settings = adaptive.Settings.from_config(plan_cfg)
    try:
      settings.check()
    except ValueError as error:
      raise ConfigError(str(error)) from None
    baseline = _planned(config, plan_cfg, schedule, "decay_lr")
    return adaptive.initial_plan(baseline, strategy, float(config.optimizer.learning_rate))
  return _planned(config, plan_cfg, schedule, strategy)


def _planned(config, plan_cfg, schedule: Schedule, strategy: str) -> Plan:
  try:
    return plan_phases(
      dataset_size=_require(config, "dataset.num_train_examples"),
      epochs=config.num_epochs,
      learning_rate=config.optimizer.learning_rate,
      batch_size=_require(config, "batch_size"),
      momentum=momentum_of(config),
      schedule=schedule,
      weight_decay=config.optimizer.get("weight_decay", 0.0),
      strategy=strategy,
      max_batch_size=plan_cfg.get("max_batch_size"),
      batch_multiple=plan_cfg.get("batch_multiple", 1),
      noise_rule=plan_cfg.get("noise_rule", "approx"),
      min_phase_epochs=plan_cfg.get("min_phase_epochs"),
    )
  except PlanError as error:
    field, _, message = str(error).partition(": ")
    raise ConfigError(f"{_PLAN_FIELDS.get(field, field)}: {message}") from None


def optimizer_from_config(
  config: ml_collections.ConfigDict, plan: Plan
) -> optax.GradientTransformationExtraArgs:
  """The config's optimizer, its learning rate, momentum and decay following `plan`."""
  _check_optimizer(config)
  opt = config.optimizer
  if plan.strategy in adaptive.STRATEGIES:
    # Decisions made while training change the learning rate through the
    # optimizer's state (`optim.set_hyperparams`); a plan's schedule is fixed
    # when the step compiles.
    plan = adaptive.constants(plan)
  if opt.name == "sgd_momentum":
    return optim.sgd_momentum(
      plan,
      momentum=plan,
      nesterov=bool(opt.get("nesterov", False)),
      weight_decay=plan if opt.get("weight_decay", 0.0) else 0.0,
    )
  if opt.name in ("power_sign", "add_sign"):
    return _sign_optimizer(opt, plan)
  common = {"b2": opt.get("b2", 0.999), "eps": opt.get("eps", 1e-8)}
  if opt.name == "adam":
    return optim.adam(plan, b1=plan, **common)
  if opt.name == "adamw":
    return optim.adamw(plan, b1=plan, weight_decay=plan, **common)
  return optim.amsgrad(
    plan, b1=plan, bias_correction=bool(opt.get("bias_correction", True)), **common
  )


def _sign_optimizer(
  opt: ml_collections.ConfigDict, plan: Plan
) -> optax.GradientTransformationExtraArgs:
  """PowerSign or AddSign; the internal decay `f(t)` spans the whole run, as in
  Bello et al. (2017), so its `T` is the plan's total number of steps."""
  build = optim.power_sign if opt.name == "power_sign" else optim.add_sign
  alpha = {"alpha": float(opt.alpha)} if "alpha" in opt else {}  # else the paper's
  return build(
    plan,
    beta=plan,
    decay=opt.get("decay", "none"),
    decay_steps=plan.total_steps,
    num_periods=float(opt.get("num_periods", 1.0)),
    weight_decay=plan if opt.get("weight_decay", 0.0) else 0.0,
    **alpha,
  )


def model_from_config(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The config's `model` (any field overrides the architecture's default),
  with its `ghost_batch_size` and computing in its `compute_dtype`."""
  fields = dict(_require(config, "model"))
  name = fields.pop("name", None)
  try:
    return create_model(
      name,
      num_classes=num_classes,
      ghost_batch_size=config.get("ghost_batch_size"),
      dtype=compute_dtype(config.get("compute_dtype", "auto")),
      **fields,
    )
  except (TypeError, ValueError) as error:
    raise ConfigError(str(error)) from None


def loss_from_config(config: ml_collections.ConfigDict, model: nn.Module, spec: Any):
  """The config's `loss` (`cross_entropy` with `label_smoothing`, or an import path),
  checked on the shapes of the model's outputs for a batch of 2 (nothing is computed).

  Raises:
    ConfigError: naming `loss` and what is wrong with what it returns.
  """
  try:
    loss_fn = losses.resolve(config.get("loss"), float(config.get("label_smoothing", 0.0)))
    inputs = jax.ShapeDtypeStruct((2, *spec.input_shape), jnp.float32)
    variables = jax.eval_shape(
      lambda x: model.init(init_rngs(jax.random.key(0)), x, train=False), inputs
    )
    outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, inputs)
    batch = {
      "inputs": jax.ShapeDtypeStruct((2, *spec.input_shape), spec.input_dtype),
      "labels": jax.ShapeDtypeStruct((2,), jnp.int32),
    }
    losses.check(loss_fn, outputs, batch)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  return loss_fn


def check_plan_on_mesh(config: ml_collections.ConfigDict, plan: Plan, mesh: Mesh) -> None:
  """Refuses, before anything compiles, a plan whose batches the mesh cannot split.

  Every phase's batch must be a whole number of ghost batches on every device.

  Raises:
    ConfigError: naming `batch_size` (the first phase) or `plan.batch_multiple`.
  """
  ghost = config.get("ghost_batch_size")
  if plan.strategy in adaptive.STRATEGIES:  # every batch a decision can choose is a multiple
    try:
      shd.check_batch_size(
        int(config.plan.batch_multiple), mesh, ghost_batch_size=ghost, field="plan.batch_multiple"
      )
    except shd.ShardingError as error:
      raise ConfigError(str(error)) from None
  if plan.strategy == "accumulate":  # each micro-batch (the cap) splits over the mesh
    try:
      shd.check_batch_size(
        plan.max_batch_size, mesh, ghost_batch_size=ghost, field="plan.max_batch_size"
      )
    except shd.ShardingError as error:
      raise ConfigError(str(error)) from None
  for phase in plan.phases:
    field = "batch_size" if phase.index == 0 else "plan.batch_multiple"
    try:
      shd.check_batch_size(phase.batch_size, mesh, ghost_batch_size=ghost, field=field)
    except shd.ShardingError as error:
      raise ConfigError(f"{error} (phase {phase.index + 1})") from None


def _halves_fit(config: ml_collections.ConfigDict, plan: Plan, mesh: Mesh) -> bool:
  """Whether each half of the smallest batch holds whole ghost batches on every device.

  With one data-parallel group and no accumulation, measuring the noise scale
  cuts the batch in two halves (`gradients.data_parallel_grads`); a half
  smaller than a ghost batch cannot be normalised, so such a run is not
  measured (e.g. batch 16 with ghost batch 16 on one device).
  """
  ghost = config.get("ghost_batch_size")
  if not ghost or gradients.groups_of(mesh)[1] > 1 or plan.strategy == "accumulate":
    return True
  shards = shd.data_parallel_size(mesh)
  return (min(plan.batch_sizes) // 2) % (int(ghost) * shards) == 0


def whole_batch_norm(model: nn.Module, input_shape: tuple[int, ...], ghost: int | None) -> bool:
  """Whether `model` normalises over the whole batch: it keeps batch statistics and no
  ghost batch size is set (read from `jax.eval_shape` of its init: nothing is allocated)."""
  if ghost is not None and "ghost_batch_size" in getattr(model, "__dataclass_fields__", {}):
    return False  # a ghost batch norm: a model that takes no ghost batch ignores it
  inputs = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(
    lambda x: model.init(init_rngs(jax.random.key(0)), x, train=False), inputs
  )
  return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def train_step_from_config(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  plan: Plan,
  mesh: Mesh,
  *,
  input_shape: tuple[int, ...],
  normalisation: Any = None,
) -> tuple[Any, bool]:
  """The config's train step on `mesh`, and whether it measures the gradient noise scale.

  `input_shape` is one example's model input (`DatasetSpec.input_shape`);
  `normalisation` is the dataset's `DatasetSpec.device_normalisation`.

  The step takes each device's gradient on its own examples (and so can
  measure the noise scale) when batch norm never needs examples of two
  devices at once: with ghost batches, or a model without batch norm (an MLP).
  A model with whole-batch batch norm (`ghost_batch_size` unset, or a model
  that takes none) is not measured: on several devices it keeps the
  compiler-partitioned step, which normalises over the global batch, and on
  one cutting the batch in halves would normalise each half apart. Nor is a run whose halves (cut to
  measure on one device) cannot hold whole ghost batches (`_halves_fit`).
  """
  block = config.get("noise") or {}
  ghost = config.get("ghost_batch_size")
  whole = whole_batch_norm(model, input_shape, ghost)
  per_device = shd.data_parallel_size(mesh) == 1 or not whole
  # whole-batch statistics would become each half's if the batch were cut to measure
  measure = bool(block.get("measure", True)) and not whole and _halves_fit(config, plan, mesh)
  horizon = float(block.get("horizon_epochs", 0.1)) * plan.dataset_size
  step = st.make_train_step(
    model,
    optimizer,
    dataset_size=plan.dataset_size,
    label_smoothing=float(config.get("label_smoothing", 0.0)),
    micro_batch_size=plan.max_batch_size if plan.strategy == "accumulate" else None,
    data_shards=shd.data_parallel_size(mesh),
    mesh=mesh if per_device else None,
    measure_noise=measure,
    noise_horizon=horizon if measure else None,
    noise_confidence=float(block.get("confidence", 0.95)),
    normalisation=normalisation,
    rng_seed=int(config.get("seed", 0)),
    loss_fn=losses.resolve(config.get("loss"), float(config.get("label_smoothing", 0.0))),
  )
  return step, measure
