"""A checkpoint kept as good is finite: the step's check, the stop, and the restore's check.

The run: the small MNIST-1D run at learning rate 100, a checkpoint every 5
steps. Its batch-norm variances overflow within a few steps while its loss
is still finite; it must stop there, name the array, and leave only
checkpoints whose every array is finite. A checkpoint planted with an
infinity (as a run from before the check could have left) is refused on
restore, naming the array and the older finite checkpoint.
"""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from small_run import CONFIG, metrics_rows, overrides, small_config

from bigbatch import step as st
from bigbatch import train as bbtrain
from bigbatch.cli import main
from bigbatch.workdir import checkpoint as ckpt

DIVERGING = {"optimizer.learning_rate": 100.0, "checkpoint_every_steps": 5, "log_every_steps": 1}


def test_first_nonfinite_counts_floating_arrays_in_leaf_order():
  tree = {
    "a": jnp.zeros(3),
    "b": {"count": jnp.asarray(7, jnp.int32), "x": jnp.ones((2, 2))},
    "c": jnp.asarray([1.0, jnp.inf]),
  }
  assert st.leaf_names(tree) == ["a", "b/x", "c"]  # the int32 count cannot be non-finite
  assert int(st.first_nonfinite(tree)) == 2
  tree["b"]["x"] = tree["b"]["x"].at[1, 0].set(jnp.nan)
  assert int(jax.jit(st.first_nonfinite)(tree)) == 1
  assert st.nonfinite_leaf(tree) == ("b/x", 1, 4)
  assert int(st.first_nonfinite({"a": jnp.zeros(2), "k": jnp.ones(1, jnp.bfloat16)})) == -1
  assert st.nonfinite_leaf({"a": jnp.zeros(2)}) is None


def _every_array_finite(step_dir: pathlib.Path) -> bool:
  state = ocp.StandardCheckpointer().restore(step_dir / "state")
  return all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state) if _floating(leaf))


def _floating(leaf) -> bool:
  return np.issubdtype(np.asarray(leaf).dtype, np.inexact)


@pytest.fixture(scope="module")
def diverged(data_dir, tmp_path_factory):
  """The lr-100 run's workdir and the error that stopped it."""
  workdir = tmp_path_factory.mktemp("diverged")
  with pytest.raises(bbtrain.NonFiniteLossError) as stopped:
    bbtrain.train_and_evaluate(small_config(data_dir, **DIVERGING), workdir, progress=False)
  return workdir, str(stopped.value)


def test_a_diverging_run_stops_at_the_first_non_finite_array(diverged):
  workdir, message = diverged
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps, message
  assert all(_every_array_finite(workdir / "checkpoints" / str(s)) for s in steps)
  # the stop names the array and the newest checkpoint, whose every array is finite
  assert " became non-finite at step " in message, message
  name = message.split(" became non-finite")[0].split(" and ")[-1]
  assert name.split("/")[0] in ("params", "batch_stats", "opt_state", "noise"), message
  assert f"the last good checkpoint (step {steps[-1]}, every array finite)" in message
  stopped_at = int(message.split(" at step ")[1].split(" ")[0])
  assert steps[-1] < stopped_at <= steps[-1] + 5
  # every step before the stop was logged with a finite loss; the check is not a metric
  rows = metrics_rows(workdir)
  assert rows and all(st.NONFINITE_KEY not in row for row in rows)
  assert all(np.isfinite(row["loss"]) for row in rows if "loss" in row)


def _plant_infinity(directory: pathlib.Path, step: int) -> str:
  """Rewrites checkpoint `step` with one batch-norm variance infinite, its checksums
  and record made anew: a well-formed checkpoint of a run that went on past an overflow."""
  checkpoints = ckpt.Checkpoints(directory, keep=10, async_save=False)
  record = checkpoints.record(step)
  state = ocp.StandardCheckpointer().restore(checkpoints.path(step) / "state")
  names = st.leaf_names(state)
  index = next(i for i, n in enumerate(names) if n.startswith("batch_stats/") and "var" in n)
  leaves, tree = jax.tree.flatten(state)
  floating = [i for i, leaf in enumerate(leaves) if _floating(leaf)]
  leaves[floating[index]] = np.array(leaves[floating[index]]).copy()
  leaves[floating[index]].flat[:3] = np.inf
  shutil.rmtree(checkpoints.path(step))
  checkpoints.close()
  checkpoints = ckpt.Checkpoints(directory, keep=10, async_save=False)  # without `step`
  checkpoints.save(step, jax.tree.unflatten(tree, leaves), record)
  checkpoints.close()
  return names[index]


def test_a_planted_non_finite_checkpoint_is_refused_naming_the_finite_one(
  capsys, diverged, data_dir, tmp_path
):
  workdir = tmp_path / "w"
  shutil.copytree(diverged[0], workdir)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  older, latest = steps[-2:]
  name = _plant_infinity(workdir / "checkpoints", latest)
  args = ["train", "--workdir", str(workdir), "--noprogress", "--config", CONFIG]
  args += overrides(data_dir)
  args += [f"--config.{k}={v}" for k, v in DIVERGING.items()]
  assert main(args) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1, err
  assert f"checkpoints/{latest}: {name} holds 3 non-finite values of " in err[0]
  assert f"the checkpoint at step {older} is intact and finite: move" in err[0]
