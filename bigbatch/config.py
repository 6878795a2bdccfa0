"""From an `ml_collections.ConfigDict` to a schedule, a plan and an optimizer.

Configs are Python files in `configs/` with `get_config()`. This module is
the one place that reads their planning and optimizer fields, and it turns
every mistake into a `ConfigError` whose one-line message names the field
and what is allowed, before any long work starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
from types import ModuleType
from typing import Any

import flax.linen as nn
import ml_collections
import optax
from jax.sharding import Mesh

from bigbatch import adaptive, gradients, optim
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import compute_dtype, create_model
from bigbatch.planner import Plan, PlanError, plan_phases
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


class ConfigError(ValueError):
  """A config field with a value bigbatch cannot use; the message names it."""


def load_sibling(config_file: str, name: str) -> ModuleType:
  """Imports the config file `name` that sits beside `config_file`.

  Config files are loaded by path, not as a package, so a variant finds its
  base with `load_sibling(__file__, "cifar10_base")`.
  """
  path = pathlib.Path(config_file).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bigbatch_configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def default_schedule_config(name: str, **fields: Any) -> ml_collections.ConfigDict:
  """A `schedule` block holding every field of `make_schedule`, `fields` set.

  All fields are present (at their defaults) so that any schedule can be
  chosen on the command line, e.g. `--config.schedule.name=cosine`.
  """
  block = ml_collections.ConfigDict({"name": name})
  for key, parameter in inspect.signature(make_schedule).parameters.items():
    if key in ("name", "epochs"):
      continue
    default = fields.pop(key, parameter.default)
    block[key] = ml_collections.config_dict.placeholder(tuple) if default is None else default
  if fields:
    raise ConfigError(f"schedule.{next(iter(fields))}: unknown field")
  return block


def default_plan_config(batch_multiple: int = 1) -> ml_collections.ConfigDict:
  """The `plan` block of a config, as a baseline (`decay_lr`) by default.

  Fields: `strategy` (decay_lr | increase_batch | hybrid | accumulate, or the
  phases decided while training: plateau | plateau_lr | noise, whose fields
  are in `adapt`, see `bigbatch.adaptive`),
  `max_batch_size` (the cap, needed by hybrid and accumulate; -1 or `auto`
  on the command line: measured by the memory probe), `batch_multiple`
  (devices x ghost batch),
  `noise_rule` (approx: batch x decay factor, as the paper; exact: N/B - 1)
  and `min_phase_epochs` (shortest phase cut from a continuous schedule).
  """
  return ml_collections.ConfigDict(
    {
      "strategy": "decay_lr",
      "max_batch_size": ml_collections.config_dict.placeholder(int),
      "batch_multiple": batch_multiple,
      "noise_rule": "approx",
      "min_phase_epochs": ml_collections.config_dict.placeholder(float),
      "adapt": adaptive.default_config(),
    }
  )


def default_mesh_config() -> ml_collections.ConfigDict:
  """The `mesh` block: `data` devices split the batch (-1: all), `fsdp` devices
  shard parameters and optimizer state (1: replicate them), `fsdp_min_size`
  is the smallest parameter (in elements) worth sharding."""
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "fsdp_min_size": 2**14})


def default_memory_config() -> ml_collections.ConfigDict:
  """The `memory` block of the batch-size probe (`bigbatch probe`, `max_batch_size: auto`).

  `budget_bytes`: what one CPU device may use (default: `cpu_fraction` of the
  RAM shared among the CPU devices; GPU/TPU report their own); `margin`: the
  fraction of the budget kept free.
  """
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(
    {"budget_bytes": placeholder(int), "cpu_fraction": 0.5, "margin": 0.1}
  )


def default_distributed_config() -> ml_collections.ConfigDict:
  """The `distributed` block: multi-host JAX (`jax.distributed.initialize`).

  `enabled` is "auto" (on a TPU pod, or when `JAX_COORDINATOR_ADDRESS` is
  set), True or False; the other fields default to the environment's
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`.
  """
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(
    {
      "enabled": "auto",
      "coordinator_address": placeholder(str),
      "num_processes": placeholder(int),
      "process_id": placeholder(int),
    }
  )


def default_noise_config() -> ml_collections.ConfigDict:
  """The `noise` block: the gradient noise scale measured in the train step.

  `measure` (on by default; its cost is in docs/BENCHMARKS.md);
  `horizon_epochs`, the smoothing's horizon as a fraction of an epoch of
  examples (the same at every batch size); `warn_ratio`, how far a phase's
  batch may exceed the measured B_simple before the trainer says so.
  """
  return ml_collections.ConfigDict({"measure": True, "horizon_epochs": 0.1, "warn_ratio": 8.0})


def set_run_fields(
  config: ml_collections.ConfigDict,
  *,
  eval_every_epochs: float,
  eval_batch_size: int,
  checkpoint_every_steps: int,
) -> ml_collections.ConfigDict:
  """Adds the fields of a training run that every recipe shares (returns `config`).

  The three arguments differ by dataset; the rest are the same everywhere:
  `compute_dtype` ("auto": bfloat16 on GPU/TPU, float32 on CPU; parameters
  float32), `label_smoothing` 0, `mesh` (batch over all devices, parameters
  replicated), `distributed`, `memory` (the batch-size probe's budget),
  `log_every_steps` 50, `keep_checkpoints` 3, `background_compile` ("auto":
  compile the next phase while this one trains on a GPU or TPU, not on a CPU,
  where the compiler runs on the threads that run the step; "on"; "off"),
  `noise` (the measured gradient
  noise scale, `default_noise_config`), `compilation_cache_dir` (JAX's
  persistent cache; unset) and `eval_train_examples` (0: off; K > 0: each
  evaluation also measures the loss and accuracy of the first K training
  examples, unaugmented, logged as `train_eval_loss` and
  `train_eval_accuracy`), `snapshots` ("auto": keep the model at the end of
  each cycle when the schedule restarts, see `bigbatch.snapshots`; "on"; "off").
  Checkpoints are also saved at every phase boundary and at the end;
  evaluation covers the whole test split.
  """
  config.compute_dtype = "auto"
  config.label_smoothing = 0.0
  config.mesh = default_mesh_config()
  config.distributed = default_distributed_config()
  config.memory = default_memory_config()
  config.eval_every_epochs = float(eval_every_epochs)
  config.eval_batch_size = int(eval_batch_size)
  config.eval_train_examples = 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = int(checkpoint_every_steps)
  config.keep_checkpoints = 3
  config.snapshots = "auto"
  config.background_compile = "auto"
  config.noise = default_noise_config()
  config.compilation_cache_dir = ml_collections.config_dict.placeholder(str)
  return config


# The optimizer variants of the paper's section 5.1, chosen with `--config=FILE:VARIANT`.
OPTIMIZER_VARIANTS = ("momentum", "nesterov", "sgd", "adam")


def with_optimizer_variant(
  config: ml_collections.ConfigDict, variant: str | None = None
) -> ml_collections.ConfigDict:
  """Applies a section 5.1 optimizer variant to an SGD-momentum config (returns it).

  `momentum` (the default) leaves the config as it is; `nesterov` switches on
  Nesterov momentum; `sgd` drops momentum and multiplies the learning rate by
  1 / (1 - m), so the effective learning rate and the noise scale stay the
  same; `adam` uses Adam with the paper's lr 1e-3, b1 0.9, b2 0.999 (the same
  schedule steps and batch sizes).
  """
  variant = variant or "momentum"
  if variant not in OPTIMIZER_VARIANTS:
    raise ConfigError(f"config variant: {variant!r} is not one of {', '.join(OPTIMIZER_VARIANTS)}")
  if variant == "nesterov":
    config.optimizer.nesterov = True
  elif variant == "sgd":
    momentum = float(config.optimizer.momentum)
    config.optimizer.learning_rate = float(config.optimizer.learning_rate) / (1.0 - momentum)
    config.optimizer.momentum = 0.0
  elif variant == "adam":
    config.optimizer = ml_collections.ConfigDict(
      {"name": "adam", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
    )
  return config


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
  for key in fields:
    if key not in allowed:
      raise ConfigError(f"schedule.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
  try:
    return make_schedule(name, float(_require(config, "num_epochs")), **fields)
  except (TypeError, ValueError) as error:
    raise ConfigError(str(error)) from None


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


def train_step_from_config(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  plan: Plan,
  mesh: Mesh,
  *,
  normalisation: Any = None,
) -> tuple[Any, bool]:
  """The config's train step on `mesh`, and whether it measures the gradient noise scale.

  `normalisation` is the dataset's `DatasetSpec.device_normalisation`.

  The step takes each device's gradient on its own examples (and so can
  measure the noise scale) when batch norm never needs examples of two
  devices at once: with ghost batches, or a model without batch norm. A model
  with whole-batch batch norm (`ghost_batch_size` unset) on several devices
  keeps the compiler-partitioned step, which normalises over the global batch.
  It does not measure where the halves it would cut cannot hold whole ghost
  batches (`_halves_fit`).
  """
  block = config.get("noise") or {}
  per_device = config.get("ghost_batch_size") is not None or shd.data_parallel_size(mesh) == 1
  measure = bool(block.get("measure", True)) and per_device and _halves_fit(config, plan, mesh)
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
    normalisation=normalisation,
  )
  return step, measure
