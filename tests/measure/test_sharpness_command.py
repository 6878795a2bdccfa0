"""`bigbatch sharpness` on a checkpoint of a short run: the Hessian's top eigenvalue against
a dense Hessian's, the same on 8 devices as on 1, nothing written, bad flags in one line.

The run: 12 steps at batch 32 of one epoch of 512 examples, the small MNIST-1D run's
(`small_run`) other settings, and a one-layer model (1,014 parameters) small enough
for its dense Hessian.
"""

import contextlib
import io
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from small_run import small_config

from bigbatch import data
from bigbatch import train as bbtrain
from bigbatch.cli import main
from bigbatch.measure import sharpness
from bigbatch.step import cross_entropy
from bigbatch.train.experiment import Experiment
from bigbatch.workdir import checkpoint as ckpt

SHORT = {
  "schedule.name": "cosine",
  "num_epochs": 1,
  "dataset.num_train_examples": 512,
  "plan.strategy": "decay_lr",
  "noise.measure": False,
  "model.channels": (4,),
  "model.strides": (2,),
}
EXAMPLES = 384
ITERATIONS = 300


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = tmp_path_factory.mktemp("short")
  config = small_config(data_dir, **SHORT)
  # stopped as if preempted: a checkpoint, and no final evaluation to compile
  bbtrain.train_and_evaluate(
    config, workdir, devices=jax.devices()[:1], progress=False, stop_at_step=12
  )
  return workdir


def files(path):
  return {p: p.read_bytes() for p in pathlib.Path(path).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def measured(workdir):
  """The command's result on all 8 devices (JSON), and what it left in the workdir."""
  before = files(workdir)
  flags = ["--examples", str(EXAMPLES), "--iterations", str(ITERATIONS), "--json"]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    status = main(["sharpness", "--workdir", str(workdir), *flags])
  assert status == 0
  return json.loads(out.getvalue()), before == files(workdir)


def dense_top_eigenvalue(workdir, step):
  """The Hessian of the mean loss on the first EXAMPLES training examples, formed densely."""
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  setup = Experiment.from_record(checkpoints.record(step), jax.devices()[:1])
  state = checkpoints.restore(step, setup.abstract_state())
  checkpoints.close()
  (batch,) = data.eval_batches(
    setup.train_source, setup.dataset, batch_size=EXAMPLES, num_examples=EXAMPLES
  )
  flat, unravel = ravel_pytree(state.params)
  assert flat.size < 2000  # dense: a few million entries

  def loss(flat):
    variables = {"params": unravel(flat), "batch_stats": state.batch_stats}
    logits = setup.model.apply(variables, jnp.asarray(batch["inputs"]), train=False)
    return jnp.mean(cross_entropy(logits, jnp.asarray(batch["labels"])))

  hessian = np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64)
  eigenvalues = np.linalg.eigvalsh((hessian + hessian.T) / 2)
  return eigenvalues[np.argmax(np.abs(eigenvalues))], float(loss(flat))


def test_the_eigenvalue_is_the_dense_hessians_and_nothing_is_written(workdir, measured):
  result, untouched = measured
  assert untouched
  assert result["step"] == 12 and result["examples"] == EXAMPLES and result["converged"]
  expected, loss = dense_top_eigenvalue(workdir, result["step"])
  assert expected > 0
  assert result["eigenvalue"] == pytest.approx(expected, rel=1e-3)
  assert result["loss"] == pytest.approx(loss, rel=1e-5)
  # Keskar's box around a trained point: the loss rises, by little at ε = 1e-3
  assert 0 < result["sharpness"] < 10
  assert result["max_loss"] > result["loss"] and result["epsilon"] == 1e-3


def test_one_device_measures_what_eight_do(workdir, measured):
  eight, _ = measured
  one = sharpness.at_checkpoint(
    workdir, examples=EXAMPLES, iterations=ITERATIONS, devices=jax.devices()[:1]
  )
  assert one["loss"] == pytest.approx(eight["loss"], rel=1e-6)
  assert one["eigenvalue"] == pytest.approx(eight["eigenvalue"], rel=1e-5)
  assert one["max_loss"] == pytest.approx(eight["max_loss"], rel=1e-6)
  # a difference of two float32 losses near 2, in percent: a few ulps are 1e-5
  assert one["sharpness"] == pytest.approx(eight["sharpness"], abs=1e-4)


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--examples", "0"], "--examples: must be a positive whole number, got 0"),
    (["--examples", "5000"], "--examples: must be at most the 512 examples"),
    (["--examples", "many"], "--examples"),
    (["--epsilon", "0"], "--epsilon: must be a positive number"),
    (["--iterations", "0"], "--iterations: must be a positive whole number"),
    (["--step", "7"], "--step: no checkpoint at step 7 in"),  # steps 10 and 12
    (["--workdir", "{empty}"], "checkpoints does not exist"),
    ([], "--workdir is required"),
  ],
)
def test_bad_flags_are_one_line(workdir, tmp_path, capsys, flags, message):
  if flags and "--workdir" not in flags:
    flags = ["--workdir", str(workdir), *flags]
  flags = [flag.format(empty=tmp_path) for flag in flags]
  assert main(["sharpness", *flags]) == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
  assert len(errors) == 1 and errors[0].startswith("bigbatch sharpness: error: "), errors
  assert message in errors[0]
