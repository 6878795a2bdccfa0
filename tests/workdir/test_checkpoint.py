"""Checkpoints: a state and its record saved and read back bit for bit, rotation, binding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch.workdir import checkpoint as ckpt


def state(value: float):
  return {"w": jnp.full((3, 2), value, jnp.float32), "step": jnp.asarray(7, jnp.int32)}


CONFIG = {
  "model": {"name": "mlp", "width": 64},
  "dataset": {"name": "mnist1d", "num_train_examples": 4000},
  "optimizer": {"name": "sgd_momentum", "learning_rate": 0.1},
  "ghost_batch_size": 16,
  "loss": "cross_entropy",
}


def test_a_state_and_its_record_come_back_as_saved(tmp_path):
  checkpoints = ckpt.Checkpoints(tmp_path, keep=2, async_save=False)
  checkpoints.save(10, state(0.5), {"step": 10, "config": CONFIG, "position": 320})
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(0.0))
  restored = checkpoints.restore(10, target)
  assert np.array_equal(restored["w"], np.full((3, 2), 0.5, np.float32))
  assert int(restored["step"]) == 7
  record = checkpoints.record(10)
  assert record["position"] == 320 and record["config"] == CONFIG
  assert record["fingerprint"] == ckpt.fingerprint(state(0.5))
  checkpoints.close()


def test_only_the_latest_are_kept(tmp_path):
  checkpoints = ckpt.Checkpoints(tmp_path, keep=2, async_save=False)
  for step in (1, 2, 3):
    checkpoints.save(step, state(float(step)), {"step": step})
  assert checkpoints.all_steps() == [2, 3] and checkpoints.latest_step() == 3
  checkpoints.close()


@pytest.mark.parametrize(
  "field, value",
  [("model", {"name": "mlp", "width": 32}), ("dataset.num_train_examples", 50), ("loss", "l2")],
)
def test_a_config_that_changes_a_binding_field_is_refused_naming_it(tmp_path, field, value):
  checkpoints = ckpt.Checkpoints(tmp_path, async_save=False)
  checkpoints.save(4, state(1.0), {"step": 4, "config": CONFIG})
  changed = {**CONFIG, "dataset": dict(CONFIG["dataset"])}
  if "." in field:
    changed["dataset"][field.split(".")[1]] = value
  else:
    changed[field] = value
  assert checkpoints.check_compatible(4, {**CONFIG, "log_every_steps": 5})["step"] == 4
  with pytest.raises(ckpt.CheckpointError, match=f"^{field}: the checkpoint at step 4 in "):
    checkpoints.check_compatible(4, changed)
  checkpoints.close()


def test_a_checkpoint_from_before_the_loss_field_counts_as_cross_entropy(tmp_path):
  checkpoints = ckpt.Checkpoints(tmp_path, async_save=False)
  old = {k: v for k, v in CONFIG.items() if k != "loss"}
  checkpoints.save(4, state(1.0), {"step": 4, "config": old})
  assert checkpoints.check_compatible(4, CONFIG)["step"] == 4
  checkpoints.close()


def test_a_changed_array_is_caught_by_its_fingerprint():
  a, b = ckpt.fingerprint(state(1.0)), ckpt.fingerprint(state(1.0))
  assert a == b
  assert ckpt.fingerprint(state(1.0 + 2**-20)) != a  # one bit of one leaf
