"""`bigbatch plan` and the recipe configs, in-process and as the console script."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import config_flags

from bigbatch import cli, config

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"

# Recipe configs (with their variants) and the updates their plans must give (each plan's
# last phase ends at the whole step nearest the budget, `phases.steps_to_end`).
RECIPES = {
  "cifar10_5_1_decay_lr.py": 78_125,
  "cifar10_5_1_decay_lr.py:adam": 78_125,
  "cifar10_5_1_hybrid.py": 34_375,
  "cifar10_5_1_hybrid.py:nesterov": 34_375,
  "cifar10_5_1_increase_batch.py": 28_876,
  "cifar10_5_1_increase_batch.py:sgd": 28_876,
  "cifar10_5_2_original.py": 78_125,
  "cifar10_5_2_increase_batch.py": 29_142,
  "cifar10_5_2_initial_lr.py": 6_407,
  "cifar10_5_2_momentum.py": 2_305,
  "imagenet_resnet50_8192.py": 14_076,
  "imagenet_resnet50_8192_16384.py": 9_384,
  "imagenet_resnet50_16384.py": 7_038,
  # MLPerf's LARS recipes (v1.0, v0.7) and the batch growing from 8,192 in place of the decay
  "imagenet_resnet50_lars_32k.py": 2_346,
  "imagenet_resnet50_lars_32k_increase_batch.py": 5_812,
  "imagenet_resnet50_lars_64k.py": 1_799,
  "imagenet_resnet50_lars_64k_increase_batch.py": 8_823,
  "imagenet_inception_decay_lr.py": 14_076,
  "imagenet_inception_increase_batch.py": 5_630,
  "imagenet_inception_capped.py:0.9": 5_865,
  "imagenet_inception_capped.py:0.95": 3_519,
  "imagenet_inception_capped.py:0.975": 2_346,
  "mnist1d_decay_lr.py": 15_625,
  "mnist1d_hybrid.py": 6_875,
  "mnist1d_hybrid.py:sgd": 6_875,
  "mnist1d_increase_batch.py:adam": 5_776,
  "mnist1d_increase_batch.py": 5_776,
  # adaptive: the plan before any decision (a decision can only shorten it)
  "mnist1d_plateau.py": 15_625,
  "mnist1d_plateau_lr.py": 15_625,
  "mnist1d_noise.py": 15_625,
  "mnist1d_sign.py": 15_625,
  "mnist1d_sign.py:add_sign": 15_625,
}


def load(name):
  path, _, variant = name.partition(":")
  module = config_flags.config_flags._LoadConfigModule("test_config", str(CONFIGS / path))
  return module.get_config(variant) if variant else module.get_config()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_configs_plan_to_the_papers_updates(name):
  plan = config.plan_from_config(load(name))
  assert plan.total_steps == RECIPES[name]


# The language models' recipes count tokens: their updates are tokens / batch tokens, the
# same for any corpus large enough (planned here on the standard library's, in a temporary
# data dir; lm_1b's own dataset is the user's text_dir).
LM_RECIPES = {
  # 150 + 37.5 + 6.25 + 1.6: each phase rounded up (150 + 38 + 7) but the last, whose 1.34
  # steps left round to the nearest, 1
  "lm_tiny_increase_batch.py": 196,
  "lm_tiny_noise.py": 500,  # the plan before any decision: 2,048,000 / 4,096
  "lm_tiny_lamb.py": 500,  # AdamW's baseline, another optimizer
  "lm_tiny_lion.py": 500,
  "lm_tiny_muon.py": 500,
  "gpt2_small.py": 1_050,
  "lm_1b.py": 11_778,
}


def test_every_config_file_is_covered():
  files = {p.name for p in CONFIGS.glob("*.py") if not p.name.endswith("_base.py")}
  assert files == {name.partition(":")[0] for name in RECIPES} | set(LM_RECIPES)


@pytest.mark.parametrize("name", LM_RECIPES)
def test_language_model_recipes_plan_their_updates(name, data_dir):
  recipe = load(name)
  recipe.dataset.name, recipe.dataset.data_dir = "python_stdlib", data_dir
  plan = config.plan_from_config(recipe)
  assert plan.total_steps == LM_RECIPES[name]
  baseline_batch = plan.baseline_batch_size * plan.tokens_per_example
  assert plan.baseline_total_steps == -(-recipe.num_tokens // baseline_batch)


@pytest.mark.parametrize(
  "name",
  [
    "cifar10_5_1_increase_batch.py",
    "cifar10_5_1_hybrid.py:adam",
    "cifar10_5_2_momentum.py",
    "imagenet_resnet50_8192_16384.py",
  ],
)
def test_optimizer_from_config_follows_the_plan(name):
  import jax
  import jax.numpy as jnp

  from bigbatch import optim

  cfg = load(name)
  plan = config.plan_from_config(cfg)
  opt = config.optimizer_from_config(cfg, plan)
  state = opt.init({"w": jnp.ones(3)})
  update = jax.jit(opt.update)
  for phase in plan.phases:
    state = jax.tree_util.tree_map_with_path(  # every step counter, schedules' too
      lambda path, x, s=phase.first_step: (
        jnp.asarray(s, jnp.int32) if getattr(path[-1], "name", None) == "count" else x
      ),
      state,
    )
    _, new_state = update({"w": jnp.ones(3)}, state, {"w": jnp.ones(3)})
    hyper = optim.current_hyperparams(new_state)
    assert float(hyper["learning_rate"]) == pytest.approx(phase.learning_rate, rel=1e-6)
    assert float(hyper["momentum"]) == pytest.approx(phase.momentum, rel=1e-6)


def run(capsys, *args):
  status = cli.main(["plan", *args])
  out, err = capsys.readouterr()
  return status, out, err


def test_plan_prints_the_table_beside_the_baseline(capsys):
  status, out, err = run(capsys, "--config", str(CONFIGS / "cifar10_5_2_increase_batch.py"))
  assert status == 0 and err == ""
  rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
  # phase, epochs, batch, lr, momentum, noise, Δnoise, steps, │, base batch/lr/noise/steps
  assert [r[2] for r in rows] == ["128", "640", "3,200", "5,120"]
  assert [float(r[3]) for r in rows] == [0.1, 0.1, 0.1, 0.032]
  assert [r[7] for r in rows] == ["23,438", "4,688", "625", "391"]
  assert [float(r[10]) for r in rows] == [0.1, 0.02, 0.004, 0.0008]
  assert [r[12] for r in rows] == ["23,438", "23,437", "15,625", "15,625"]
  assert "updates: 29,142 vs 78,125 for the baseline (2.68x fewer)" in out


def test_plan_json_and_overrides(capsys):
  status, out, _ = run(
    capsys,
    f"--config={CONFIGS / 'imagenet_resnet50_8192.py'}",
    "--config.plan.strategy=hybrid",
    "--config.plan.max_batch_size=16384",
    "--json",
  )
  assert status == 0
  data = json.loads(out)
  assert data["total_steps"] == 9_384 and data["baseline_total_steps"] == 14_076
  phases = data["phases"]
  assert [p["batch_size"] for p in phases] == [8192, 8192, 16384, 16384, 16384]
  assert [p["start_epoch"] for p in phases] == [0, 5, 30, 60, 80]
  assert [p["end_epoch"] for p in phases] == [5, 30, 60, 80, 90]
  assert phases[2]["learning_rate"] == pytest.approx(0.64)
  assert sum(p["steps"] for p in phases) == 9_384
  for p in phases:
    assert p["noise_scale"] == pytest.approx(
      p["learning_rate"] * (1_281_167 / p["batch_size"] - 1) / (1 - p["momentum"])
    )


def test_plan_plot_draws_a_png(capsys, tmp_path):
  import matplotlib.image

  path = tmp_path / "plan.png"
  status, out, _ = run(
    capsys, "--config", str(CONFIGS / "cifar10_5_1_increase_batch.py"), "--plot", str(path)
  )
  assert status == 0 and f"wrote {path}" in out
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 500 and image.shape[1] > 500
  assert np.std(image[..., :3]) > 0.05  # not a blank canvas
  blue = (image[..., 2] > 0.6) & (image[..., 0] < 0.3)  # the plan's curves (C0)
  assert blue.sum() > 500


@pytest.mark.parametrize(
  "args, message",
  [
    ([], "--config is required"),
    (
      ["--config", "configs/missing.py"],
      "--config: no such file or recipe: configs/missing.py; recipes: cifar10_5_1_decay_lr",
    ),
    (["--config.plan.strategy=fast"], "plan.strategy: 'fast' is not one of"),
    (
      ["--config.plan.strategy=hybrid", "--config.plan.max_batch_size=100"],
      "plan.max_batch_size: 100 is below the initial batch_size 128",
    ),
    (["--config.batch_size=60000"], "batch_size: 60000 is larger than the dataset"),
    (["--config.optimizer.momentum=1.0"], "optimizer.momentum: must be in [0, 1)"),
    (["--config.optimizer.learning_rate=0"], "optimizer.learning_rate: must be > 0"),
    (["--config.schedule.boundaries=(120,60)"], "schedule.boundaries: must be strictly increasing"),
    (["--config.schedule.boundaries=(60,250)"], "schedule.boundaries: must lie before"),
    (["--config.schedule.name=linear"], "schedule.name: 'linear' is not one of"),
    (["--config.optimizer.name=lionx"], "optimizer.name: 'lionx' is not one of"),
    (["--config.schedule.nme=cosine"], "schedule.nme: no such field; schedule has: "),
    (
      ["--config.plan.max_batch_size=abc"],
      "plan.max_batch_size: 'abc' is not a valid whole number",
    ),
    (["--config.dataset.num_train_examples=1000"], "batch_size: 3200 is larger than the dataset"),
  ],
)
def test_bad_input_gets_one_line_naming_the_field(capsys, args, message):
  base = (
    []
    if args[:1] == [] or args[0] == "--config"
    else ["--config", str(CONFIGS / "cifar10_5_1_increase_batch.py")]
  )
  if "num_train_examples" in " ".join(args):
    base = ["--config", str(CONFIGS / "cifar10_5_2_momentum.py")]
  status, out, err = run(capsys, *base, *args)
  assert status == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("bigbatch plan: error: ")
  assert message in err


def test_bad_variant_names_the_choices(capsys):
  status, _, err = run(capsys, "--config", f"{CONFIGS / 'cifar10_5_1_hybrid.py'}:lamb")
  assert status == 2 and err.count("\n") == 1
  assert "'lamb' is not one of momentum, nesterov, sgd, adam" in err


@pytest.mark.parametrize("base", ["cifar10_5_2_initial_lr.py", "mnist1d_decay_lr.py"])
def test_sgd_variant_keeps_the_noise_scale(base):
  """Plain SGD runs at lr / (1 - m), so every phase's noise scale is unchanged."""
  momentum = load(base)
  sgd = config.with_optimizer_variant(load(base), "sgd")
  lr, m = momentum.optimizer.learning_rate, momentum.optimizer.momentum
  assert sgd.optimizer.momentum == 0.0
  assert sgd.optimizer.learning_rate == pytest.approx(lr / (1 - m))
  a, b = config.plan_from_config(momentum), config.plan_from_config(sgd)
  assert [p.batch_size for p in a.phases] == [p.batch_size for p in b.phases]
  for p, q in zip(a.phases, b.phases):
    assert q.learning_rate == pytest.approx(p.learning_rate / (1 - m))
    g = p.learning_rate * (a.dataset_size / p.batch_size - 1) / (1 - m)
    assert q.learning_rate * (b.dataset_size / q.batch_size - 1) == pytest.approx(g)
  nesterov = config.with_optimizer_variant(load(base), "nesterov")
  assert nesterov.optimizer.nesterov and nesterov.optimizer.learning_rate == lr
  adam = config.with_optimizer_variant(load(base), "adam")
  assert (adam.optimizer.name, adam.optimizer.learning_rate, adam.optimizer.b2) == (
    "adam",
    1e-3,
    0.999,
  )


def test_console_script_runs():
  script = pathlib.Path(sys.executable).with_name("bigbatch")
  result = subprocess.run(
    [str(script), "plan", "--config", str(CONFIGS / "cifar10_5_2_initial_lr.py")],
    capture_output=True,
    text=True,
    check=False,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert "updates: 6,407 vs 15,625" in result.stdout
  usage = subprocess.run([str(script)], capture_output=True, text=True, check=False, timeout=60)
  assert usage.returncode == 2 and "usage: bigbatch COMMAND" in usage.stdout


def test_a_field_given_twice_takes_its_last_value():
  """As every flag does; the flag parser alone would join two tuples into one."""
  from bigbatch.cli import args

  config = str(pathlib.Path(__file__).parents[2] / "configs" / "mnist1d_increase_batch.py")
  argv = ["--config", config, "--config.schedule.boundaries=(1.0,2.0)", "--config.seed", "3"]
  argv += ["--config.schedule.boundaries=(5.0,)", "--config.seed", "4"]
  values = args.parse("train", argv, lambda values: None)
  assert values.config.schedule.boundaries == (5.0,)
  assert values.config.seed == 4


# Fields whose default is None, set in a recipe and unset on the command line:
# (recipe, field, the spec's value then, read as `spec.<path>`)
UNSET = [
  ("mnist1d_increase_batch.py", "ghost_batch_size", "ghost_batch_size", None),
  ("cifar10_5_2_increase_batch.py", "plan.max_batch_size", "plan.max_batch_size", None),
  ("lm_tiny_increase_batch.py", "plan.max_batch_tokens", "plan.max_batch_size", None),
  ("lm_tiny_increase_batch.py", "plan.adam_rule", "plan.adam_rule", None),
  ("lm_tiny_lamb.py", "optimizer.clip_norm", "optimizer.clip_norm", None),
  ("lm_tiny_lion.py", "optimizer.decay_mask", "optimizer.decay_mask", "all"),  # Lion's default
  ("mnist1d_increase_batch.py", "dataset.data_dir", "dataset.data_dir", None),  # unset already
]


@pytest.mark.parametrize("form", ["=", " "])
@pytest.mark.parametrize("recipe, field, path, value", UNSET, ids=[u[1] for u in UNSET])
def test_none_on_the_command_line_unsets_a_field_whose_default_is_none(
  recipe, field, path, value, form
):
  from bigbatch.cli import args

  flag = f"--config.{field}{form}None".split(" ")
  values = args.parse("plan", ["--config", str(CONFIGS / recipe), *flag], lambda v: None)
  node = config.read(values.config)
  for part in path.split("."):
    node = getattr(node, part)
  assert node == value


def test_none_takes_its_place_among_a_fields_values_given_twice(capsys):
  from bigbatch.cli import args

  recipe = str(CONFIGS / "mnist1d_increase_batch.py")
  for given, last in (("None", 8), ("8", None)):
    argv = ["--config", recipe, f"--config.ghost_batch_size={given}"]
    argv.append(f"--config.ghost_batch_size={'None' if last is None else last}")
    assert args.parse("plan", argv, lambda v: None).config.ghost_batch_size == last
  status, out, err = run(capsys, "--config", recipe, "--config.ghost_batch_size=None")
  assert status == 0 and err == "" and "updates: 5,776 vs 15,625" in out


def test_a_recipe_named_without_a_path_is_the_shipped_file_from_any_directory(
  capsys, tmp_path, monkeypatch
):
  by_path = run(capsys, "--config", str(CONFIGS / "cifar10_5_1_hybrid.py:adam"), "--json")
  monkeypatch.chdir(tmp_path)  # no configs/ here
  for name in ("cifar10_5_1_hybrid:adam", "cifar10_5_1_hybrid.py:adam"):
    assert run(capsys, "--config", name, "--json") == by_path
    assert run(capsys, f"--config={name}", "--json") == by_path
  assert by_path[0] == 0 and json.loads(by_path[1])["total_steps"] == 34_375


def test_a_file_of_the_same_name_wins_over_the_shipped_recipe(capsys, tmp_path, monkeypatch):
  (tmp_path / "mnist1d_noise.py").write_text("def get_config():\n  return None\n")
  monkeypatch.chdir(tmp_path)
  status, _, err = run(capsys, "--config", "mnist1d_noise.py")
  assert status == 2
  assert (
    err
    == "bigbatch plan: error: --config: mnist1d_noise.py: get_config() returned None, not a ConfigDict\n"
  )


def test_recipes_lists_every_shipped_recipe_with_its_first_docstring_line(capsys):
  assert cli.main(["recipes"]) == 0
  out = capsys.readouterr().out.splitlines()
  names = sorted(p.stem for p in CONFIGS.glob("*.py"))
  assert [line.split()[0] for line in out[: len(names)]] == names
  hybrid = next(line for line in out if line.startswith("cifar10_5_1_hybrid "))
  assert hybrid.split(None, 1)[1] == (
    "Section 5.1, hybrid: batch 128 -> 640 at epoch 60, then lr /5 at 120, 160."
  )
  assert out[-1].startswith(f"{len(names)} recipes in ")
  assert cli.main(["recipes", "extra"]) == 2


def test_a_users_config_file_starts_from_a_shipped_recipe(capsys, tmp_path):
  mine = tmp_path / "mine.py"
  mine.write_text(
    "from bigbatch.recipe import load_recipe\n\n\n"
    "def get_config():\n"
    '  config = load_recipe("mnist1d_increase_batch").get_config()\n'
    "  config.batch_size = 256\n"
    "  return config\n"
  )
  status, out, _ = run(capsys, "--config", str(mine), "--json")
  assert status == 0
  assert [p["batch_size"] for p in json.loads(out)["phases"]] == [256, 1280, 6400, 32000]
  with pytest.raises(
    config.ConfigError, match="no recipe 'cifar11'; recipes: cifar10_5_1_decay_lr"
  ):
    from bigbatch.recipe import load_recipe

    load_recipe("cifar11")


@pytest.mark.parametrize("name", sorted(set(RECIPES) | set(LM_RECIPES)))
def test_clipping_and_a_decay_mask_can_be_set_on_every_recipe(name):
  """`optimizer.clip_norm` and `optimizer.decay_mask` are fields of every recipe's optimizer
  block (unset unless the recipe sets them), so the command line reaches them anywhere."""
  from bigbatch.cli import args as cli_args

  path = f"{CONFIGS / name.partition(':')[0]}" + (
    f":{name.partition(':')[2]}" if ":" in name else ""
  )
  flags = ["--config", path, "--config.optimizer.clip_norm=0.5"]
  spec = config.read(cli_args.parse("plan", flags, lambda values: None).config)
  assert spec.optimizer.clip_norm == 0.5
  masked = cli_args.parse("plan", [*flags, "--config.optimizer.decay_mask=all"], lambda v: None)
  if name.endswith(":adam"):  # the section 5.1 Adam variant has no weight decay to mask
    with pytest.raises(config.ConfigError, match=r"optimizer\.decay_mask: adam has no weight"):
      config.read(masked.config)
  else:
    assert config.read(masked.config).optimizer.decay_mask == "all"
