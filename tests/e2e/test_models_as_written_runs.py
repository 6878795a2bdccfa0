"""Models as their authors wrote them, trained by `bigbatch train` unchanged: on 8 devices
and on 1, killed and resumed bitwise; every bad case one line before anything compiles.

The fixtures (`tests/models_as_written.py`) follow flax's ImageNet ResNet (BatchNorm
naming the pmap axis), its NNX MNIST CNN (call-time rngs), its lm1b TransformerLM (the mode
in its config, inputs shifted by the model) and Gemma's NNX transformer (positions, cache
and mask in, `(logits, cache)` out).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from small_run import CODE, CONFIG, FIELDS, small_config
from test_language_model import FIELDS as LM
from xla_env import xla_flags

from bigbatch import config as bbconfig
from bigbatch import train as bbtrain
from bigbatch.cli import main
from bigbatch.workdir import checkpoint as ckpt

# two phases (batch 32 then 160), 38 steps: enough to cross a batch change
SHORT = {"num_epochs": 2, "schedule.boundaries": (1.0,), "ghost_batch_size": None}


def final_state(workdir, config):
  target = bbconfig.experiment_from_config(config).abstract_state()
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  step = checkpoints.latest_step()
  state = checkpoints.restore(step, target)
  checkpoints.close()
  return step, state


def flag_list(data_dir, fields):
  """The small run's flags with `fields` in place of its own (each field given once)."""
  out = []
  for field, value in {**FIELDS, "dataset.data_dir": data_dir, **fields}.items():
    text = f"({','.join(map(str, value))},)" if isinstance(value, tuple) else str(value)
    out.append(f"--config.{field}={text}")
  return out


def killed_then_resumed(workdir, data_dir, fields, devices, kill_at):
  """`bigbatch train` killed (SIGKILL) after step `kill_at`, then resumed to the end."""
  tests = str(pathlib.Path(__file__).parents[1])  # where the fixtures import from
  path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
  env = {"XLA_FLAGS": xla_flags(devices), "PYTHONPATH": path}
  args = ["train", "--config", CONFIG, "--workdir", str(workdir), "--noprogress"]
  flags = flag_list(data_dir, fields)
  killed = subprocess.run(
    [sys.executable, "-c", CODE, *args, *flags],
    env={**os.environ, **env, "BIGBATCH_FAULT": f"step@{kill_at}"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert killed.returncode == -9, killed.stdout + killed.stderr
  resumed = subprocess.run(
    [sys.executable, "-c", CODE, *args, *flags],
    env={**os.environ, **env},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  return resumed.stdout


def assert_bitwise(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
  "model",
  [
    # slow: CI keeps the pmap-style ResNet's step against one device's in-process
    # (tests/models/test_models_as_written.py), its documented example (tests/test_docs.py)
    # and other runs that resume bitwise after a kill
    pytest.param("models_as_written:PmapResNet", marks=pytest.mark.slow),
    pytest.param("models_as_written:CallTimeRngsCNN", marks=pytest.mark.slow),
  ],
)
def test_a_model_as_written_trains_on_8_and_1_devices_and_resumes_bitwise(
  model, data_dir, tmp_path
):
  fields = {**SHORT, "model.name": model}
  config = small_config(data_dir, **fields)
  eight = bbtrain.train_and_evaluate(config, tmp_path / "eight", progress=False)
  assert eight["status"] == "completed" and eight["final_test_accuracy"] > 0.15
  output = killed_then_resumed(tmp_path / "killed", data_dir, fields, devices=8, kill_at=25)
  # saves are written in the background: 10 is surely on disk by step 25, 20 perhaps
  assert "resuming from the checkpoint at step" in output
  step_a, a = final_state(tmp_path / "eight", config)
  step_b, b = final_state(tmp_path / "killed", config)
  assert step_a == step_b == 38
  assert_bitwise(a, b)
  one = bbtrain.train_and_evaluate(
    config, tmp_path / "one", devices=jax.devices()[:1], progress=False
  )
  if model.endswith("PmapResNet"):  # no dropout: the same computation, summed apart
    assert one["final_test_loss"] == pytest.approx(eight["final_test_loss"], rel=1e-3)
  summary = json.loads((tmp_path / "one" / "summary.json").read_text())
  assert "over the whole batch" in summary["noise_unmeasured"]


# -- language models as written ------------------------------------------------------------

LM_CONFIG = '''"""lm_tiny's run with a model of the user's own in place of the built-in one."""
from ml_collections import config_dict

from bigbatch.recipe import load_recipe


def get_config():
  config = load_recipe("lm_tiny_increase_batch").get_config()
  config.model = config_dict.ConfigDict(MODEL)
  return config
'''
LM_FIELDS = {k: v for k, v in LM.items() if not k.startswith("model.")}


def lm_config_file(tmp_path, model):
  path = tmp_path / f"lm_{abs(hash(repr(model)))}.py"
  path.write_text(LM_CONFIG.replace("MODEL", repr(model)))
  return str(path)


def lm_args(tmp_path, text_dir, data_dir, model, **changes):
  fields = {**LM_FIELDS, "dataset.text_dir": text_dir, "dataset.data_dir": data_dir, **changes}
  flags = [f"--config.{k}=({','.join(map(str, v))})" if isinstance(v, tuple) else f"--config.{k}={v}"
           for k, v in fields.items()]  # fmt: skip
  workdir = str(tmp_path / "w")
  return ["--config", lm_config_file(tmp_path, model), "--workdir", workdir, "--noprogress", *flags]


LM1B = {"name": "models_as_written:lm1b_like", "length": 16, "call": {"targets": "inputs"}}
GEMMA = {
  "name": "models_as_written:GemmaLike",
  "call": {"inputs": {"attention_mask": "causal_mask"}},
}
BAD = [
  (
    {"name": "models_as_written:lm1b_like", "length": 16},
    "model.call.targets: models_as_written:lm1b_like: the model shifts its inputs itself",
  ),
  (
    {"name": "models_as_written:GemmaLike"},
    "model.call.inputs: models_as_written:GemmaLike.__call__ needs `attention_mask`",
  ),
  (
    {**GEMMA, "call": {**GEMMA["call"], "mode": "train"}},
    "model.call.mode: models_as_written:GemmaLike.__call__ takes no `train` argument",
  ),
  ({**LM1B, "call": {"target": "inputs"}}, "model.call.target: unknown field; allowed: inputs"),
  ({**LM1B, "length": 8}, "model.name: models_as_written:lm1b_like fails in init ("),
  (
    {**LM1B, "call": {**LM1B["call"], "inputs": {"inputs_segmentation": "inputs_segmentation"}}},
    "model.call.inputs.inputs_segmentation: the batch holds no 'inputs_segmentation', only "
    "inputs, labels; dataset.features adds a source's own",
  ),
]


@pytest.mark.parametrize(
  "model,message", BAD, ids=["shifts", "input", "mode", "field", "crash", "feature"]
)
def test_every_bad_model_is_one_line_before_anything_compiles(
  capsys, tmp_path, text_dir, data_dir, model, message
):
  status = main(["train", *lm_args(tmp_path, text_dir, data_dir, model)])
  captured = capsys.readouterr()
  err = [line for line in captured.err.splitlines() if line.strip()]
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith(f"bigbatch train: error: {message}"), err[0]
  assert "plan:" not in captured.out  # refused before the plan is printed
  assert not (tmp_path / "w" / "checkpoints").exists()


def cli(args, devices, fault=None):
  """`bigbatch train ARGS` in a process of its own on `devices` CPU devices."""
  tests = str(pathlib.Path(__file__).parents[1])  # where the fixtures import from
  env = {
    **os.environ,
    "XLA_FLAGS": xla_flags(devices),
    "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
  }
  env.pop("BIGBATCH_FAULT", None)
  if fault:
    env["BIGBATCH_FAULT"] = fault
  done = subprocess.run(
    [sys.executable, "-c", CODE, "train", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  return done.returncode, done.stdout + done.stderr


def fingerprint(workdir):
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  record = checkpoints.record(checkpoints.latest_step())
  checkpoints.close()
  return record["step"], record["fingerprint"], record["final_eval"]


@pytest.mark.parametrize(
  "model,devices",
  [pytest.param(LM1B, 8, marks=pytest.mark.slow), pytest.param(GEMMA, 1, marks=pytest.mark.slow)],
  ids=["lm1b", "gemma"],
)
def test_a_language_model_as_written_trains_and_resumes_bitwise(
  tmp_path, text_dir, data_dir, model, devices
):
  args = lm_args(tmp_path, text_dir, data_dir, model)
  workdir = args[args.index("--workdir") + 1]
  whole = [
    *args[: args.index("--workdir") + 1],
    str(tmp_path / "whole"),
    *args[args.index("--workdir") + 2 :],
  ]
  code, output = cli(whole, devices)
  assert code == 0, output[-2000:]
  assert "B_simple" in output
  code, output = cli(args, devices, fault="step@20")
  assert code == -9, output[-2000:]
  code, output = cli(args, devices)
  assert code == 0 and "resuming from the checkpoint at step" in output, output[-2000:]
  assert fingerprint(workdir) == fingerprint(tmp_path / "whole")
