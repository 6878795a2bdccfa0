"""The spec reader: every field's error, the defaults in one place, and the round trip."""

import copy
import math

import pytest

from bigbatch import recipe, spec
from bigbatch.spec import ConfigError, RunSpec


def base() -> dict:
  """The default recipe's config as a plain nested dict."""
  return recipe.load_recipe(recipe.DEFAULT_RECIPE).get_config().to_dict()


def changed(path: str, value, config: dict | None = None) -> dict:
  """`config` (default: `base()`) with the dotted `path` set to `value` (or removed)."""
  config = copy.deepcopy(config or base())
  *parents, last = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  if value is _REMOVED:
    del node[last]
  else:
    node[last] = value
  return config


_REMOVED = object()
SIGN = {"name": "power_sign", "learning_rate": 0.1}
PLATEAU = {"plan.strategy": "plateau"}

BAD_FIELDS = [
  ("num_epochs", 0, "num_epochs: must be a positive number, got 0"),
  ("num_epochs", _REMOVED, "num_epochs: missing from the config"),
  ("batch_size", 1.5, "batch_size: must be a whole number >= 1, got 1.5"),
  ("batch_size", _REMOVED, "batch_size: missing from the config"),
  ("seed", -1, "seed: must be a whole number >= 0, got -1"),
  ("ghost_batch_size", 0, "ghost_batch_size: must be a whole number >= 1 (or unset), got 0"),
  ("compute_dtype", "float16", "compute_dtype: 'float16' is not one of auto, float32, bfloat16"),
  ("label_smoothing", 1.0, "label_smoothing: must be a number in [0.0, 1.0), got 1.0"),
  ("log_every_steps", 0, "log_every_steps: must be a whole number >= 1, got 0"),
  ("snapshots", "maybe", "snapshots: 'maybe' is not one of auto, on, off"),
  ("background_compile", "often", "background_compile: 'often' is not one of auto, on, off"),
  ("eval_every_epochs", 0, "eval_every_epochs: must be a positive number, got 0"),
  ("eval_batch_size", 0, "eval_batch_size: must be a whole number >= 1, got 0"),
  ("eval_train_examples", -1, "eval_train_examples: must be a whole number >= 0, got -1"),
  ("checkpoint_every_steps", 0, "checkpoint_every_steps: must be a whole number >= 1, got 0"),
  ("keep_checkpoints", 0, "keep_checkpoints: must be a whole number >= 1, got 0"),
  ("lerning_rate", 0.1, "lerning_rate: unknown field; allowed: background_compile, batch_size"),
  ("optimizer.learning_rate", math.nan, "optimizer.learning_rate: must be a finite number"),
  ("mesh.data", 0, "mesh.data: must be -1 (all devices) or a positive number, got 0"),
  ("mesh.fsdp", 0, "mesh.fsdp: must be a whole number >= 1, got 0"),
  ("mesh.fsdp_min_size", -1, "mesh.fsdp_min_size: must be a whole number >= 0, got -1"),
  ("mesh.model", 2, "mesh.model: unknown field; allowed: data, fsdp, fsdp_min_size"),
  ("noise.measure", "yes", "noise.measure: must be true or false, got 'yes'"),
  ("noise.horizon_epochs", 0, "noise.horizon_epochs: must be a positive number, got 0"),
  ("noise.confidence", 0.4, "noise.confidence: must be a number in [0.5, 1.0), got 0.4"),
  ("noise.warn_ratio", 0.5, "noise.warn_ratio: must be a number in [1.0, None), got 0.5"),
  ("noise.every", 0, "noise.every: must be a whole number >= 1, got 0"),
  ("memory.budget_bytes", 0, "memory.budget_bytes: must be a whole number >= 1 (or unset)"),
  ("memory.cpu_fraction", 1.5, "memory.cpu_fraction: must be a number in [0.0, 1.0], got 1.5"),
  ("memory.margin", 1.0, "memory.margin: must be a number in [0.0, 1.0), got 1.0"),
  ("distributed.num_processes", 0, "distributed.num_processes: must be a whole number >= 1"),
  ("distributed.process_id", -1, "distributed.process_id: must be a whole number >= 0"),
  ("dataset.num_train_examples", 0, "dataset.num_train_examples: must be a whole number >= 1"),
  ("dataset.num_train_examples", _REMOVED, "dataset.num_train_examples: missing from the config"),
  ("dataset.generator_seed", -1, "dataset.generator_seed: must be a whole number >= 0, got -1"),
  ("dataset.image_size", 0, "dataset.image_size: must be a whole number >= 1 (or unset), got 0"),
  ("dataset.name", "", "dataset.name: must be a non-empty string (or unset), got ''"),
  ("dataset.name", _REMOVED, "dataset.name: missing from the config (or set dataset.source)"),
  ("dataset.splits", 2, "dataset.splits: unknown field; allowed: num_train_examples, name"),
  ("model.name", _REMOVED, "model.name: missing from the config"),
  ("schedule.name", "linear", "schedule.name: 'linear' is not one of "),
  ("schedule.steps", 3, "schedule.steps: unknown field; allowed: base_fraction, boundaries"),
  ("schedule.boundaries", ("a",), "schedule.boundaries: 'a' is not a list of numbers"),
  ("optimizer.name", "lionx", "optimizer.name: 'lionx' is not one of sgd_momentum, adam"),
  ("optimizer.momentum", 1.0, "optimizer.momentum: must be in [0, 1), got 1.0"),
  ("optimizer.b1", 0.9, "optimizer.b1: not a field of sgd_momentum; allowed: learning_rate"),
  ("optimizer.learning_rate", _REMOVED, "optimizer.learning_rate: missing from the config"),
  ("optimizer.weight_decay", -1.0, "optimizer.weight_decay: must be a number in [0.0, None)"),
  ("optimizer.nesterov", "yes", "optimizer.nesterov: must be true or false, got 'yes'"),
  ("plan.strategy", "fast", "plan.strategy: 'fast' is not one of decay_lr, increase_batch"),
  ("plan.max_batch_size", 0, "plan.max_batch_size: must be a whole number >= 1 (or -1: auto)"),
  ("plan.max_batch_size", -2, "plan.max_batch_size: must be a whole number >= -1 (or unset)"),
  ("plan.adapt.when", 1, "plan.adapt.when: unknown field; allowed: factor, monitor"),
  ("plan", 3, "plan: must be a block of fields, got 3"),
]


@pytest.mark.parametrize("path, value, message", BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_each_bad_field_is_one_line_naming_it(path, value, message):
  with pytest.raises(ConfigError) as raised:
    RunSpec.read(changed(path, value))
  assert str(raised.value).startswith(message), str(raised.value)
  assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"beta": 1.0}, "optimizer.beta: must be in [0, 1), got 1.0"),
    ({"alpha": 0.5}, "optimizer.alpha: must be >= 1, got 0.5"),
    ({"decay": "cosine"}, "optimizer.decay: 'cosine' is not one of none"),
    ({"num_periods": 0}, "optimizer.num_periods: must be positive, got 0"),
  ],
)
def test_each_sign_optimizer_field_is_checked(fields, message):
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
    RunSpec.read(changed("optimizer", {**SIGN, **fields}))


def test_an_adaptive_strategy_checks_its_adapt_block():
  config = changed("plan.strategy", "plateau")
  with pytest.raises(ConfigError, match=r"plan\.adapt\.factor: must be > 1"):
    RunSpec.read(changed("plan.adapt.factor", 1.0, config))


def test_process_id_must_be_below_the_number_of_processes():
  config = changed("distributed.num_processes", 2)
  with pytest.raises(ConfigError, match=r"distributed.process_id: must be below .* \(2\), got 2"):
    RunSpec.read(changed("distributed.process_id", 2, config))


def test_a_spec_made_in_python_is_checked_as_one_read():
  with pytest.raises(ConfigError, match=r"mesh\.data: must be -1"):
    spec.MeshSpec(data=0)
  with pytest.raises(ConfigError, match=r"eval_batch_size: must be a whole number >= 1"):
    spec.EvalSpec(batch_size=0)
  with pytest.raises(ConfigError, match=r"optimizer\.momentum: must be in"):
    spec.OptimizerSpec("sgd_momentum", 0.1, {"momentum": 1.5})


def test_values_take_their_types_and_optimizer_defaults_fill_in():
  read = RunSpec.read(changed("num_epochs", 6))
  assert read.num_epochs == 6.0 and isinstance(read.num_epochs, float)
  adam = RunSpec.read(changed("optimizer", {"name": "adam", "learning_rate": 1e-3}))
  assert dict(adam.optimizer.options) == {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
  assert adam.optimizer.momentum == 0.9


def test_every_recipe_reads_and_round_trips_through_its_record():
  for name in recipe.recipe_names():
    config = recipe.load_recipe(name).get_config()
    if config is None:  # a variant file's base: get_config needs its argument
      continue
    read = RunSpec.read(config)
    assert RunSpec.read(read.to_dict()) == read, name


def test_the_recipe_blocks_are_the_specs_defaults():
  config = recipe.set_run_fields(
    recipe.load_recipe("mnist1d_base").get_config(),
    eval_every_epochs=1.0,
    eval_batch_size=1000,
    checkpoint_every_steps=1000,
  )
  read = RunSpec.read(config)
  for block in ("mesh", "noise", "memory", "distributed"):
    assert getattr(read, block) == type(getattr(read, block))(), block
  assert read.checkpoints == spec.CheckpointSpec() and read.eval == spec.EvalSpec()
  plan = RunSpec.read(changed("plan", recipe.default_plan_config().to_dict())).plan
  assert plan == spec.PlanSpec()


def test_a_record_from_before_the_spec_reads_with_the_defaults():
  # a checkpoint's config before `loss`, `noise.confidence` and `dataset.source` existed
  old = base()
  del old["loss"], old["noise"]["confidence"]
  read = RunSpec.read(old)
  assert read.loss == "cross_entropy" and read.noise.confidence == 0.95
  assert read.dataset.source is None


def test_a_python_object_is_recorded_by_its_import_path():
  from bigbatch.step.losses import classification

  made = spec.ModelSpec(spec.MeshSpec, {})
  assert made.to_dict()["name"] == "bigbatch.spec.system:MeshSpec"
  assert spec.import_path(classification) == "bigbatch.step.losses:classification"
  assert spec.import_path(lambda split: split) == "<in-memory>"
