"""The trainer end to end: accuracy, resume equality, SIGTERM, restore on fewer devices."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from xla_env import xla_flags

from bigbatch import config as bbconfig
from bigbatch import train as bbtrain
from bigbatch.cli import main
from bigbatch.train import data_position
from bigbatch.workdir import checkpoint as ckpt

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"


def small_config(data_dir, *, examples=2048, epochs=6):
  """MNIST-1D, increasing batch 32 -> 160 -> 800 (noise /5 at epochs 2 and 4), ghost 4."""
  config = bbconfig.load_sibling(str(CONFIGS / "x.py"), "mnist1d_increase_batch").get_config()
  config.dataset.num_train_examples = examples
  config.dataset.data_dir = data_dir
  config.num_epochs = epochs
  config.batch_size = 32
  config.ghost_batch_size = 4
  config.schedule.boundaries = (epochs / 3, 2 * epochs / 3)
  config.plan.batch_multiple = 32
  config.eval_every_epochs = 2.0
  config.eval_batch_size = 256
  config.log_every_steps = 10
  config.checkpoint_every_steps = 40
  return config


def final_params(workdir, config=None, devices=None):
  """The latest checkpoint's step and state (NumPy), restored as the trainer restores it."""
  from bigbatch import data, sharding, step

  config = config or small_config(None)
  plan = bbconfig.plan_from_config(config)
  model = bbconfig.model_from_config(config, 10)
  optimizer = bbconfig.optimizer_from_config(config, plan)
  inputs = jax.ShapeDtypeStruct((1, *data.dataset_spec("mnist1d").input_shape), np.float32)
  mesh = sharding.make_mesh(devices=devices)
  shardings = step.train_state_shardings(model, optimizer, inputs, mesh)
  abstract = jax.eval_shape(
    lambda: step.init_train_state(model, optimizer, inputs, jax.random.key(0))
  )
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  latest = checkpoints.latest_step()
  state = checkpoints.restore(latest, ckpt.abstract_state(shardings, abstract))
  checkpoints.close()
  return latest, jax.tree.map(np.asarray, state)


def test_mnist1d_trains_well_above_chance_and_logs(data_dir, tmp_path):
  config = small_config(data_dir, examples=4096)
  config.eval_train_examples = 1000
  summary = bbtrain.train_and_evaluate(config, tmp_path, progress=False)
  plan = bbconfig.plan_from_config(config)
  assert plan.batch_sizes == (32, 160, 800)
  assert summary["status"] == "completed" and summary["step"] == plan.total_steps
  assert summary["final_test_accuracy"] > 0.6  # chance: 0.1
  assert [p["steps"] for p in summary["phases"]] == [p.steps for p in plan.phases]
  assert json.loads((tmp_path / "summary.json").read_text())["updates"] == plan.total_steps

  def strict(constant):  # NaN and Infinity are not JSON
    raise ValueError(f"metrics.jsonl holds {constant}")

  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  rows = [json.loads(line, parse_constant=strict) for line in lines]
  train_rows = [r for r in rows if "loss" in r]
  for key in ("learning_rate", "momentum", "batch_size", "noise_scale", "grad_norm", "epoch"):
    assert key in train_rows[-1]
  # the measured noise scale: a positive number with its bounds, a lower bound only
  # (null above), or null, never a negative or non-finite number
  noise = [
    (r["grad_noise_scale"], r["grad_noise_scale_low"], r["grad_noise_scale_high"])
    for r in train_rows
  ]
  assert any(value is not None for value, _, _ in noise)
  for value, low, high in noise:
    assert value is None or (value > 0 and low is not None and low <= value <= high)
    assert low is None or low >= 0
    assert high is None or (low is not None and high >= low)
  from small_run import tensorboard_scalars

  board = tensorboard_scalars(tmp_path)
  assert board["loss"] and "grad_noise_scale_low" in board
  for tag in ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high"):
    assert all(np.isfinite(v) and v >= 0 for _, v in board.get(tag, [])), tag
  import re

  from bigbatch.plan import summary as run_summary

  forms = re.compile(r"^(—|> [\d,]+|< [\d,]+|[\d,]+ \[[\d,]+, [\d,]+\])$")
  keys = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")
  for phase in summary["phases"]:  # what the summary prints is one of its forms
    cell = run_summary.format_noise_scale(*(phase.get(k) for k in keys))
    assert forms.match(cell), cell
    assert cell in run_summary.format_summary(summary)
  assert {r["batch_size"] for r in train_rows} == {32.0, 160.0, 800.0}
  evals = [r for r in rows if "eval_accuracy" in r]
  assert [round(r["epoch"]) for r in evals] == [2, 4, 6]
  # the training subset's loss and accuracy: the final model on the first 1,000
  # training examples, in evaluation mode
  assert all("train_eval_loss" in r for r in evals)
  from bigbatch import data, step

  _, state = final_params(tmp_path, config)
  train = data.load_split(config.dataset, "train")
  model = bbconfig.model_from_config(config, 10)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = model.apply(variables, train.inputs[:1000], train=False)
  loss = float(np.mean(step.cross_entropy(logits, train.labels[:1000])))
  accuracy = int(np.sum(np.argmax(logits, -1) == train.labels[:1000])) / 1000
  assert evals[-1]["train_eval_loss"] == pytest.approx(loss, rel=1e-5)
  assert evals[-1]["train_eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
  assert summary["final_train_eval_loss"] == evals[-1]["train_eval_loss"]
  assert list((tmp_path / "tensorboard").iterdir())
  # a checkpoint at every phase boundary and at the end; the last 3 kept
  assert ckpt.Checkpoints(tmp_path / "checkpoints").latest_step() == plan.total_steps


@pytest.mark.parametrize(
  "where",
  # CI resumes bitwise elsewhere: after a kill mid-phase (models as written), across a batch
  # change (a Python source), after a decision (plateau), an LM ramp
  [pytest.param(w, marks=pytest.mark.slow) for w in ("mid_phase", "phase_boundary")],
)
def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(data_dir, tmp_path, where):
  config = small_config(data_dir)
  plan = bbconfig.plan_from_config(config)
  stop = 77 if where == "mid_phase" else plan.phases[1].first_step
  assert (plan.phase_at(stop).first_step == stop) == (where == "phase_boundary")
  bbtrain.train_and_evaluate(config, tmp_path / "whole", progress=False)
  first = bbtrain.train_and_evaluate(config, tmp_path / "split", stop_at_step=stop, progress=False)
  assert first["status"] == "preempted" and first["step"] == stop
  record = ckpt.Checkpoints(tmp_path / "split" / "checkpoints").record(stop)
  assert record["position"] == data_position(plan, stop)
  bbtrain.train_and_evaluate(config, tmp_path / "split", progress=False)
  step_a, whole = final_params(tmp_path / "whole")
  step_b, split = final_params(tmp_path / "split")
  assert step_a == step_b == plan.total_steps
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_restore_onto_4_devices_of_a_run_saved_on_8(data_dir, tmp_path):
  from bigbatch import sharding, step
  from bigbatch.models import create_model

  config = small_config(data_dir)
  bbtrain.train_and_evaluate(config, tmp_path, stop_at_step=50, progress=False)
  _, saved = final_params(tmp_path, config)
  plan = bbconfig.plan_from_config(config)
  model = create_model("cnn1d", num_classes=10, ghost_batch_size=4)
  optimizer = bbconfig.optimizer_from_config(config, plan)
  inputs = jax.ShapeDtypeStruct((1, 40), np.float32)
  four = sharding.make_mesh(devices=jax.devices()[:4])
  shardings = step.train_state_shardings(model, optimizer, inputs, four)
  abstract = jax.eval_shape(
    lambda: step.init_train_state(model, optimizer, inputs, jax.random.key(0))
  )
  checkpoints = ckpt.Checkpoints(tmp_path / "checkpoints")
  restored = checkpoints.restore(50, ckpt.abstract_state(shardings, abstract))
  checkpoints.close()
  assert int(restored.step) == int(saved.step) == 50
  for part in ("params", "batch_stats"):
    for leaf, expected in zip(
      jax.tree.leaves(getattr(restored, part)), jax.tree.leaves(getattr(saved, part))
    ):
      assert len(leaf.sharding.device_set) == 4
      np.testing.assert_array_equal(np.asarray(leaf), expected)
  summary = bbtrain.train_and_evaluate(config, tmp_path, devices=jax.devices()[:4], progress=False)
  assert summary["status"] == "completed" and summary["step"] == plan.total_steps
  assert summary["final_test_accuracy"] > 0.3


def test_a_changed_model_is_refused_and_nothing_is_overwritten(data_dir, tmp_path):
  config = small_config(data_dir)
  bbtrain.train_and_evaluate(config, tmp_path, stop_at_step=20, progress=False)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  config.model.channels = (16, 16, 16)
  with pytest.raises(
    ckpt.CheckpointError, match=r"^model: the checkpoint at step 20 in .* was written with"
  ):
    bbtrain.train_and_evaluate(config, tmp_path, progress=False)
  after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  assert after == before


def test_a_changed_loss_is_refused_and_a_record_from_before_the_field_means_cross_entropy(
  data_dir, tmp_path
):
  config = small_config(data_dir)
  bbtrain.train_and_evaluate(config, tmp_path, stop_at_step=20, progress=False)
  checkpoints = ckpt.Checkpoints(tmp_path / "checkpoints")
  try:
    changed = small_config(data_dir)
    changed.loss = "plugin_losses:squared_error"
    with pytest.raises(
      ckpt.CheckpointError,
      match=r"^loss: the checkpoint at step 20 in .* was written with 'cross_entropy', "
      r"the config now has 'plugin_losses:squared_error'",
    ):
      checkpoints.check_compatible(20, changed)
    older = small_config(data_dir).to_dict()
    del older["loss"]  # a config as written before `loss` existed
    assert ckpt._binding(older, "loss") == "cross_entropy" == ckpt._binding(config, "loss")
    assert checkpoints.check_compatible(20, config)["step"] == 20
  finally:
    checkpoints.close()


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
  data_dir, tmp_path
):
  config = small_config(data_dir)
  config.optimizer.learning_rate = 1e9
  config.checkpoint_every_steps = 1
  with pytest.raises(
    bbtrain.NonFiniteLossError,
    match=r"^(loss is (nan|inf)( and \S+ became non-finite)?|\S+ became non-finite) at step \d+ \(phase 0",
  ) as e:
    bbtrain.train_and_evaluate(config, tmp_path, progress=False)
  bad = int(str(e.value).split("at step ")[1].split()[0])
  step, state = final_params(tmp_path)
  assert step < bad
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


@pytest.mark.slow  # CIFAR-10's input is tested in tests/data; the recipe's plan in tests/plan
def test_cifar10_config_trains_on_mock_data(tmp_path):
  config = bbconfig.load_sibling(str(CONFIGS / "x.py"), "cifar10_5_1_increase_batch").get_config()
  config.model.name = "tiny_cnn"
  config.dataset.num_train_examples = 64
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.num_epochs = 3
  config.batch_size = 16
  config.ghost_batch_size = 2
  config.plan.batch_multiple = 16
  config.schedule.boundaries = (1.0, 2.0)
  config.schedule.factor = 2.0
  config.eval_batch_size = 16
  with tfds.testing.mock_data(num_examples=64):
    summary = bbtrain.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert summary["status"] == "completed"
  assert [p["batch_size"] for p in summary["phases"]] == [16, 32, 64]
  assert summary["updates"] == 4 + 2 + 1
  assert 0.0 <= summary["final_test_accuracy"] <= 1.0


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_two_processes_train_the_same_steps_as_one(data_dir, tmp_path):
  from multihost_common import free_port

  overrides = [
    f"--config.dataset.data_dir={data_dir}",
    "--config.dataset.num_train_examples=2048",
    "--config.plan.strategy=increase_batch",
    "--config.num_epochs=3",
    "--config.schedule.boundaries=(1.0,2.0)",
    "--config.batch_size=64",
    "--config.ghost_batch_size=4",
    "--config.plan.batch_multiple=64",
    "--config.eval_every_epochs=3.0",
    "--config.eval_batch_size=512",
  ]
  config = str(CONFIGS / "mnist1d_increase_batch.py")
  address = f"127.0.0.1:{free_port()}"
  env = {
    **os.environ,
    "XLA_FLAGS": xla_flags(4),
    "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
  }
  code = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
  workers = [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        code,
        "train",
        "--config",
        config,
        "--workdir",
        str(tmp_path / "two"),
        "--noprogress",
        *overrides,
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address={address}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}",
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [worker.communicate(timeout=300)[0] for worker in workers]
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
  assert "devices: 8 (cpu) in 2 process(es)" in outputs[0]
  assert (
    main(
      ["train", "--config", config, "--workdir", str(tmp_path / "one"), "--noprogress", *overrides]
    )
    == 0
  )
  config_obj = bbconfig.load_sibling(config, "mnist1d_increase_batch").get_config()
  config_obj.update_from_flattened_dict(
    {
      "batch_size": 64,
      "ghost_batch_size": 4,
      "plan.batch_multiple": 64,
      "num_epochs": 3,
      "plan.strategy": "increase_batch",
      "schedule.boundaries": (1.0, 2.0),
      "dataset.num_train_examples": 2048,
    }
  )
  step_two, two = final_params(tmp_path / "two", config_obj)
  step_one, one = final_params(tmp_path / "one", config_obj)
  assert step_two == step_one == bbconfig.plan_from_config(config_obj).total_steps
  for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_bigbatch_train_without_a_config_runs_the_default_on_cpu(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert main(["train", "--workdir", str(tmp_path / "run"), "--noprogress"]) == 0
  out = capsys.readouterr().out
  assert "plan: increase_batch" in out and "batch sizes: 128, 640, 3,200, 16,000" in out
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["updates"] == 5_776 and summary["status"] == "completed"
  assert summary["final_test_accuracy"] > 0.9


LANGUAGE_MODELS = (
  "gpt2_small",
  "lm_1b",
  "lm_mini_base",
  "lm_tiny_base",
  "lm_tiny_increase_batch",
  "lm_tiny_lamb",
  "lm_tiny_lion",
  "lm_tiny_muon",
  "lm_tiny_noise",
)


@pytest.mark.parametrize(
  "name", sorted(p.stem for p in CONFIGS.glob("*.py") if not p.stem.startswith(("lm_", "gpt2")))
)
def test_every_recipe_config_is_trainable(name):
  """Model, optimizer, plan, data spec and batch splits all resolve, before any data.

  Checked on 8 devices where every phase's batch splits into whole ghost batches per
  device (all ImageNet recipes); otherwise (CIFAR's ghost batch 128, as the paper) on one.
  """
  from bigbatch import data, sharding

  module = bbconfig.load_sibling(str(CONFIGS / "x.py"), name)
  variants = getattr(module, "VARIANTS", (None,)) if name.endswith("_base") else (None,)
  for variant in variants:
    config = (
      module.get_config() if variant is None else module.with_variant(module.get_config(), variant)
    )
    plan = bbconfig.plan_from_config(config)
    bbconfig.optimizer_from_config(config, plan)
    spec = data.dataset_spec(config.dataset.name, config.dataset.get("image_size"))
    model = bbconfig.model_from_config(config, spec.num_classes)
    assert model.module.ghost_batch_size == config.ghost_batch_size
    fits = all(b % (8 * config.ghost_batch_size) == 0 for b in plan.batch_sizes)
    assert fits or config.dataset.name == "cifar10"  # ImageNet recipes: on 8 devices
    mesh = sharding.make_mesh(devices=jax.devices()[: 8 if fits else 1])
    bbconfig.check_plan_on_mesh(config, plan, mesh)
    sharding.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
    for field in (
      "eval_every_epochs",
      "log_every_steps",
      "checkpoint_every_steps",
      "keep_checkpoints",
    ):
      assert config[field] > 0


@pytest.mark.parametrize("name", LANGUAGE_MODELS)
def test_every_language_model_recipe_is_trainable(name, data_dir):
  """Spec, plan, optimizer, model, loss (on the model's output shapes) and the batches on 8
  devices all resolve before anything compiles, on the standard library's tokens (lm_1b's
  own dataset is the user's text_dir)."""
  from bigbatch.spec import RunSpec
  from bigbatch.train import Experiment

  assert set(LANGUAGE_MODELS) == {p.stem for p in CONFIGS.glob("*.py")
                                  if p.stem.startswith(("lm_", "gpt2")) and p.stem != "lm_base"}  # fmt: skip
  config = bbconfig.load_sibling(str(CONFIGS / "x.py"), name).get_config()
  config.dataset.name, config.dataset.data_dir = "python_stdlib", data_dir
  if config.dataset.tokenizer == "bpe:2048":  # lm_mini: on bytes here, as training a BPE
    config.dataset.tokenizer = None  # on the whole library takes a minute (tests/data has it)
  experiment = Experiment.from_spec(RunSpec.read(config), devices=jax.devices()[:8])
  experiment.check_for_training()
  assert experiment.plan.tokens_per_example == config.dataset.sequence_length
  assert experiment.dataset.num_classes == 256 and experiment.throughput.peak_flops is None


def test_the_last_phase_is_timed_like_the_others(data_dir, tmp_path):
  """The final evaluation and checkpoint come after the last phase's clock has stopped;
  they are not taken out of its training time: its rate is its neighbour's at the same
  batch (three phases of 16 epochs at batch 32, one device, evaluated and saved at each
  phase's end only, so that the last two differ in nothing but their place)."""
  from bigbatch.plan import summary as run_summary

  config = small_config(data_dir, examples=1024, epochs=48)  # boundaries at epochs 16, 32
  config.plan.strategy = "decay_lr"
  config.eval_every_epochs = 16.0
  config.eval_train_examples = 1024
  config.checkpoint_every_steps = 10_000
  summary = bbtrain.train_and_evaluate(config, tmp_path, progress=False, devices=jax.devices()[:1])
  phases = summary["phases"]
  assert [(p["batch_size"], p["steps"]) for p in phases] == [(32, 512)] * 3
  last, before = phases[-1], phases[-2]
  # the last phase's seconds hold its final evaluation and checkpoint, which it subtracts
  assert last["eval_seconds"] > 0 and last["checkpoint_seconds"] > 0
  assert last["seconds"] > last["eval_seconds"] + last["checkpoint_seconds"]
  # Two phases of about 1.5 s each on a shared 2-core machine differ by up to 15% by noise
  # alone (measured: 1% to 15% over six runs); the error this guards against made the
  # last phase 9x faster than the one before it (the final evaluation's seconds taken out
  # of its time without ever being in it). The exact accounting: tests/train/test_clock.py.
  rates = [run_summary._phase_examples_per_second(p) for p in (last, before)]
  assert rates[0] == pytest.approx(rates[1], rel=0.25)
