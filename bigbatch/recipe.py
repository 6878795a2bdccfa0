"""The blocks a recipe is built from: config files call these in `get_config()`.

A recipe (a Python file with `get_config()`: the paper's ship in
`bigbatch/recipes/`, which a source checkout also shows as `configs/`) builds its
`ml_collections.ConfigDict` from these blocks, so that every field has its
default in one place and any field can be set on the command line
(`--config.noise.measure=false`). `bigbatch.config` reads the result.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import pathlib
from types import ModuleType
from typing import Any

import ml_collections

from bigbatch import spec
from bigbatch.schedules import make_schedule
from bigbatch.spec.clock import TOKEN_FIELDS
from bigbatch.spec.fields import ConfigError

# The recipes that ship with the package: found beside this file in a checkout
# and in an installed wheel alike.
RECIPES = pathlib.Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "mnist1d_increase_batch"  # `bigbatch train` with no --config


def recipe_names() -> list[str]:
  """The shipped recipes' names (file names without `.py`), sorted."""
  return sorted(p.stem for p in RECIPES.glob("*.py"))


def find_recipe(name: str) -> pathlib.Path | None:
  """The shipped recipe called `name` (with or without `.py`; no folder), or None."""
  stem = name[: -len(".py")] if name.endswith(".py") else name
  if not stem or "/" in stem or "\\" in stem:
    return None
  path = RECIPES / f"{stem}.py"
  return path if path.is_file() else None


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


def load_recipe(name: str) -> ModuleType:
  """Imports the shipped recipe `name`, so that a config of your own can start from it:
  `config = load_recipe("mnist1d_base").get_config()`.

  Raises:
    ConfigError: naming the recipes there are, when `name` is not one.
  """
  path = find_recipe(name)
  if path is None:
    raise ConfigError(f"no recipe {name!r}; recipes: {', '.join(recipe_names())}")
  return load_sibling(str(path), path.stem)


def _config_block(block: Any) -> ml_collections.ConfigDict:
  """A spec's block at its defaults as a config block: an unset field becomes a typed
  placeholder, so that the command line can set it (`--config.memory.budget_bytes=...`)."""
  types = {f.name: str(f.type).split(" | ")[0] for f in dataclasses.fields(block)}
  values = {}
  for name, value in block.to_dict().items():
    if value is None:
      value = ml_collections.config_dict.placeholder(
        {"int": int, "float": float, "tuple": tuple}.get(types[name], str)
      )
    values[name] = value
  return ml_collections.ConfigDict(values)


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
  are in `adapt`, see `bigbatch.plan.adaptive`),
  `max_batch_size` (the cap, needed by hybrid and accumulate; -1 or `auto`
  on the command line: measured by the memory probe), `batch_multiple`
  (devices x ghost batch),
  `noise_rule` (approx: batch x decay factor, as the paper; exact: N/B - 1)
  and `min_phase_epochs` (shortest phase cut from a continuous schedule).
  """
  return _config_block(spec.PlanSpec(batch_multiple=batch_multiple))


def default_mesh_config() -> ml_collections.ConfigDict:
  """The `mesh` block: `data` devices split the batch (-1: all), `fsdp` devices
  shard parameters and optimizer state (1: replicate them), `fsdp_min_size`
  is the smallest unannotated parameter (in elements) worth sharding, `tensor`
  devices split a layer as its annotations say (1: none), and `rules` map
  the annotations' logical axis names to mesh axes (`partitioning.DEFAULT_RULES`)."""
  return _config_block(spec.MeshSpec())


def default_memory_config() -> ml_collections.ConfigDict:
  """The `memory` block of the batch-size probe (`bigbatch probe`, `max_batch_size: auto`).

  `budget_bytes`: what one CPU device may use (default: `cpu_fraction` of the
  RAM shared among the CPU devices; GPU/TPU report their own); `margin`: the
  fraction of the budget kept free.
  """
  return _config_block(spec.MemorySpec())


def default_distributed_config() -> ml_collections.ConfigDict:
  """The `distributed` block: multi-host JAX (`jax.distributed.initialize`).

  `enabled` is "auto" (on a TPU pod, or when `JAX_COORDINATOR_ADDRESS` is
  set), True or False; the other fields default to the environment's
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`.
  """
  return _config_block(spec.DistributedSpec())


def optimizer_config(fields: dict[str, Any]) -> ml_collections.ConfigDict:
  """An `optimizer` block: `fields`, and unset unless given the two every optimizer takes,
  so that the command line can set them on any recipe: `clip_norm` (global-norm clipping
  before the update; unset: none) and `decay_mask` (the parameters weight decay reaches;
  unset: the optimizer's default, docs/OPTIMIZERS.md)."""
  return ml_collections.ConfigDict(
    {
      "clip_norm": ml_collections.config_dict.placeholder(float),
      "decay_mask": ml_collections.config_dict.placeholder(str),
      **fields,
    }
  )


def default_elastic_config() -> ml_collections.ConfigDict:
  """The `elastic` block (`bigbatch.plan.elastic`): off unless `slice_sizes` is set (the
  device counts a phase may run on); `per_device_batch` (unset: the plan's
  `max_batch_size` over this run's devices); `example_seconds` and `step_seconds`, the
  step-time model for device-hours; `until_phase_end`: stop where the next phase wants
  more devices than the run has."""
  return _config_block(spec.ElasticSpec())


def default_noise_config() -> ml_collections.ConfigDict:
  """The `noise` block: the gradient noise scale measured in the train step.

  `measure` (on by default; its cost is in docs/BENCHMARKS.md);
  `horizon_epochs`, the smoothing's horizon as a fraction of an epoch of
  examples (the same at every batch size); `confidence`, the two-sided level
  of B_simple's interval (`gradients.interval`); `warn_ratio`, how far a
  phase's batch must exceed B_simple's upper bound before the trainer says so;
  `every` (1), where measuring costs a second pass (one device without
  accumulation), measure one step in `every` (docs/PLANNER.md).
  """
  return _config_block(spec.NoiseSpec())


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
  float32), `loss` ("cross_entropy", with `label_smoothing` 0 and accuracy as
  the metric; or the import path of `loss_fn(outputs, batch) -> (per-example
  loss, per-example metrics)`, see `bigbatch.step.losses`), `mesh` (batch over all devices, parameters
  replicated), `distributed`, `memory` (the batch-size probe's budget),
  `log_every_steps` 50, `keep_checkpoints` 3, `background_compile` ("auto":
  compile the next phase while this one trains on a GPU or TPU, not on a CPU,
  where the compiler runs on the threads that run the step; "on"; "off"),
  `noise` (the measured gradient
  noise scale, `default_noise_config`), `elastic` (off: `default_elastic_config`),
  `compilation_cache_dir` (JAX's
  persistent cache; unset) and `eval_train_examples` (0: off; K > 0: each
  evaluation also measures the loss and accuracy of the first K training
  examples, unaugmented, logged as `train_eval_loss` and
  `train_eval_accuracy`), `snapshots` ("auto": keep the model at the end of
  each cycle when the schedule restarts, see `bigbatch.workdir.snapshots`; "on"; "off").
  Checkpoints are also saved at every phase boundary and at the end;
  evaluation covers the whole test split.
  """
  defaults = {f.name: f.default for f in dataclasses.fields(spec.RunSpec)}
  for field in ("compute_dtype", "loss", "label_smoothing", "log_every_steps", "snapshots"):
    config[field] = defaults[field]
  config.mesh = default_mesh_config()
  config.distributed = default_distributed_config()
  config.memory = default_memory_config()
  config.elastic = default_elastic_config()
  config.eval_every_epochs = float(eval_every_epochs)
  config.eval_batch_size = int(eval_batch_size)
  config.eval_train_examples = spec.EvalSpec().train_examples
  config.eval_examples = spec.EvalSpec().examples
  config.checkpoint_every_steps = int(checkpoint_every_steps)
  config.keep_checkpoints = spec.CheckpointSpec().keep
  config.background_compile = defaults["background_compile"]
  config.noise = default_noise_config()
  config.compilation_cache_dir = ml_collections.config_dict.placeholder(str)
  return config


def to_token_clock(
  config: ml_collections.ConfigDict, tokens: dict[str, Any]
) -> ml_collections.ConfigDict:
  """A config made by the blocks above, counting in tokens (a language model's; returns it).

  Each field a token field stands for (`bigbatch.TOKEN_FIELDS`: `num_epochs`
  -> `num_tokens`, `batch_size` -> `batch_tokens`, `schedule.warmup_epochs` ->
  `schedule.warmup_tokens`, ...) is replaced by the token field, set from `tokens`
  (dotted names) or left as a placeholder the command line can set.

  Raises:
    ConfigError: naming a key of `tokens` that is not a token field.
  """
  for name in tokens:
    if name not in TOKEN_FIELDS:
      raise ConfigError(f"{name}: not a token field; token fields: {', '.join(TOKEN_FIELDS)}")
  for name, (twin, kind) in TOKEN_FIELDS.items():
    *parents, last = twin.split(".")
    block = config
    for part in parents:
      block = block.get(part) if block is not None else None
    if block is None or last not in block:
      continue
    del block[last]
    value = tokens.get(name)
    if value is None:
      value = ml_collections.config_dict.placeholder(
        tuple if last in ("boundaries", "ramp") else int if kind == "batch" else float
      )
    block[name.rpartition(".")[2]] = value
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
    config.optimizer = optimizer_config(
      {"name": "adam", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
    )
  return config


def lars_increasing_batch(
  config: ml_collections.ConfigDict, start: int = 8_192
) -> ml_collections.ConfigDict:
  """A LARS recipe at its batch as an increasing-batch plan from `start` (returns it).

  LARS is of the `adaptive` family, so its batch rule is the square-root one
  (`plan.adam_rule: sqrt`): the baseline at batch `start` runs every rate
  divided by sqrt(k), k = the recipe's batch / `start`; the planner then grows
  the batch where that baseline's rate falls, up to the recipe's batch (the
  cap), and the rate takes the rest. The continuous decay is cut into phases
  of at least 4 epochs.
  """
  target = int(config.batch_size)
  config.optimizer.learning_rate = float(config.optimizer.learning_rate) / (target / start) ** 0.5
  config.batch_size = start
  config.plan.strategy = "hybrid"
  config.plan.max_batch_size = target
  config.plan.adam_rule = "sqrt"
  config.plan.min_phase_epochs = 4.0
  return config
