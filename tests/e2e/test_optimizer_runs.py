"""An optimizer factory by import path through `bigbatch train`: it trains, a kill and a resume
end bitwise equal to the run without one, and a run that swaps the optimizer is refused in one
line (a checkpoint that belongs to another optimizer is never called corrupt)."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from small_run import FIELDS
from xla_env import xla_flags

from bigbatch import optim
from bigbatch.cli import main
from bigbatch.spec import RunSpec
from bigbatch.workdir import checkpoint as ckpt

CODE = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
# a user's own factories, in a module beside the config (`bigbatch train` imports from there)
FACTORIES = """
import optax


def sgdw(learning_rate, momentum=0.9, weight_decay=0.0, mask=None):
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask), optax.sgd(learning_rate, momentum=momentum)
  )


def sgdw_nesterov(learning_rate, momentum=0.9, weight_decay=0.0, mask=None):
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask),
    optax.sgd(learning_rate, momentum=momentum, nesterov=True),
  )
"""
CONFIG = f"""
from ml_collections import config_dict

from bigbatch.recipe import load_recipe


def get_config():
  config = load_recipe("mnist1d_increase_batch").get_config()
  config.update_from_flattened_dict({FIELDS!r})
  config.optimizer = config_dict.ConfigDict(
    {{"name": "my_optimizers:sgdw", "learning_rate": 0.1, "momentum": 0.9,
     "weight_decay": 5e-4, "family": "sgd", "clip_norm": 5.0, "decay_mask": "kernels"}}
  )
  return config
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  folder = tmp_path_factory.mktemp("factory_config")
  (folder / "my_optimizers.py").write_text(FACTORIES)
  (folder / "factory_config.py").write_text(CONFIG)
  return folder / "factory_config.py"


def train(config_file, workdir, data_dir, *extra, fault=None):
  """`bigbatch train` on one device in a subprocess; (exit status, output)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  env.pop("BIGBATCH_FAULT", None)
  if fault:
    env["BIGBATCH_FAULT"] = fault
  args = ["train", "--config", str(config_file), "--workdir", str(workdir), "--noprogress"]
  args += [f"--config.dataset.data_dir={data_dir}", *extra]
  done = subprocess.run(
    [sys.executable, "-c", CODE, *args], env=env, capture_output=True, text=True, timeout=300
  )
  return done.returncode, done.stdout + done.stderr


def final(workdir):
  """The final checkpoint's step, config, fingerprint of every array and final evaluation."""
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  step = checkpoints.latest_step()
  record = checkpoints.record(step)
  checkpoints.close()
  return step, record["config"], record["fingerprint"], record.get("final_eval")


def logged(workdir):
  rows = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  values = {}
  for row in map(json.loads, rows):
    values.update({(row["step"], k): v for k, v in row.items() if k != "examples_per_second"})
  return values


@pytest.mark.slow
def test_a_factory_by_import_path_trains_and_resumes_bitwise_after_a_kill(
  config_file, data_dir, tmp_path
):
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  code, output = train(config_file, reference, data_dir)
  assert code == 0, output[-3000:]
  # 32 steps at batch 32, then 7 at 160: killed on the step after the phase boundary
  code, output = train(config_file, killed, data_dir, fault="step@33")
  assert code == -signal.SIGKILL, output[-3000:]
  code, output = train(config_file, killed, data_dir)
  assert code == 0 and "resuming from the checkpoint" in output, output[-3000:]
  step, config, prints, evaluation = final(killed)
  assert (step, config, prints, evaluation) == final(reference)  # bit for bit
  assert config["optimizer"]["name"] == "my_optimizers:sgdw"
  assert config["optimizer"]["options"] == {"momentum": 0.9, "weight_decay": 5e-4}
  assert logged(killed) == logged(reference)
  rows = logged(reference)
  assert 0.0 <= rows[step, "clipped_fraction"] <= 1.0 and rows[step, "grad_norm"] > 0
  summary = json.loads((reference / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["final_test_accuracy"] > 0.2

  # another optimizer on this workdir: one line naming optimizer.name and both values
  code, output = train(
    config_file, reference, data_dir, "--config.optimizer.name=my_optimizers:sgdw_nesterov"
  )
  errors = [line for line in output.splitlines() if "error" in line]
  assert code == 2 and len(errors) == 1, output[-3000:]
  assert errors[0].startswith(
    f"bigbatch train: error: optimizer.name: the checkpoint at step {step} in "
  )
  assert "'my_optimizers:sgdw', the config now has 'my_optimizers:sgdw_nesterov'" in errors[0]
  assert "corrupt" not in output.lower() and "cannot be read" not in output


def small_state(value):
  return {"params": {"w": jax.numpy.full((3,), value)}, "step": jax.numpy.asarray(1)}


@pytest.mark.parametrize(
  "before, after, field",
  [
    ({"name": "adamw"}, {"name": "optax:lion"}, "optimizer.name"),
    ({"name": "optax:lion"}, {"name": "optax:lion", "b1": 0.95}, "optimizer.options"),
    ({"name": "lamb"}, {"name": "lamb", "clip_norm": 1.0}, "optimizer.clip_norm"),
  ],
)
def test_a_swapped_optimizer_is_refused_in_one_line_not_called_corrupt(
  tmp_path, before, after, field
):
  base = {
    "num_epochs": 1,
    "batch_size": 32,
    "schedule": {"name": "constant"},
    "model": {"name": "mlp"},
    "dataset": {"name": "mnist1d", "num_train_examples": 64},
  }
  written = RunSpec.read({**base, "optimizer": {"learning_rate": 1e-3, **before}}).to_dict()
  now = RunSpec.read({**base, "optimizer": {"learning_rate": 1e-3, **after}}).to_dict()
  checkpoints = ckpt.Checkpoints(tmp_path, async_save=False)
  try:
    checkpoints.save(4, small_state(1.0), {"step": 4, "config": written})
    assert checkpoints.check_compatible(4, written)["step"] == 4
    with pytest.raises(ckpt.CheckpointError) as raised:
      checkpoints.check_compatible(4, now)
  finally:
    checkpoints.close()
  message = str(raised.value)
  assert not isinstance(raised.value, ckpt.CorruptCheckpointError)
  assert message.startswith(f"{field}: the checkpoint at step 4 in ") and "\n" not in message
  old, new = (json.dumps(v[field.split(".")[1]], sort_keys=True) for v in (
    written["optimizer"], now["optimizer"]))  # fmt: skip
  assert old != new


def test_a_checkpoint_from_before_the_decay_mask_decayed_every_parameter(tmp_path):
  # AdamW's default is now `kernels`: an older AdamW run resumes only with `all`, and says so
  base = {
    "num_epochs": 1,
    "batch_size": 32,
    "schedule": {"name": "constant"},
    "model": {"name": "mlp"},
    "dataset": {"name": "mnist1d", "num_train_examples": 64},
  }

  def config(**optimizer):
    return RunSpec.read({**base, "optimizer": {"learning_rate": 1e-3, **optimizer}}).to_dict()

  older = {name: config(name=name, weight_decay=0.1) for name in ("adamw", "sgd_momentum")}
  for record in older.values():
    del record["optimizer"]["decay_mask"]  # as written before the field existed
  checkpoints = ckpt.Checkpoints(tmp_path, async_save=False)
  try:
    checkpoints.save(4, small_state(1.0), {"step": 4, "config": older["adamw"]})
    with pytest.raises(ckpt.CheckpointError, match=r"^optimizer\.decay_mask: .* was written with "
                       r"'all', the config now has 'kernels'; "):  # fmt: skip
      checkpoints.check_compatible(4, config(name="adamw", weight_decay=0.1))
    same = config(name="adamw", weight_decay=0.1, decay_mask="all")
    assert checkpoints.check_compatible(4, same)["step"] == 4
    checkpoints.save(5, small_state(1.0), {"step": 5, "config": older["sgd_momentum"]})
    assert checkpoints.check_compatible(5, config(name="sgd_momentum", weight_decay=0.1))
  finally:
    checkpoints.close()
  # and a mask never changes what the state holds, so the old state restores into it
  params = {"kernel": jax.numpy.ones((2, 2)), "bias": jax.numpy.ones(2)}
  plain, masked = optim.adamw(0.1, weight_decay=0.1), optim.adamw(0.1, mask=optim.kernels)
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(masked.init(params))


def test_a_decay_mask_that_names_no_parameter_is_one_line(config_file, data_dir, tmp_path, capsys):
  args = ["train", "--config", str(config_file), "--workdir", str(tmp_path / "run")]
  args += ["--noprogress", f"--config.dataset.data_dir={data_dir}"]
  status = main([*args, "--config.optimizer.decay_mask=kernal"])
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith(
    "bigbatch train: error: optimizer.decay_mask: 'kernal' names no parameter; parameters: "
  )
  assert "Conv_0/kernel" in err[0]
  assert not np.any([p.is_file() for p in (tmp_path / "run").rglob("*")])
