"""`noise.every`: on one device the trainer measures one step in k, resumes as it ran."""

import json

import jax
import numpy as np
from small_run import metrics_rows, small_config

from bigbatch import config as bbconfig
from bigbatch.train import train_and_evaluate
from bigbatch.train.experiment import Experiment
from bigbatch.workdir.checkpoint import Checkpoints


def final_state(config, workdir):
  checkpoints = Checkpoints(workdir / "checkpoints")
  step = checkpoints.latest_step()
  state = checkpoints.restore(step, Experiment.from_spec(bbconfig.read(config)).abstract_state())
  checkpoints.close()
  return step, jax.device_get(state)


def test_one_step_in_k_is_measured_and_a_run_stopped_between_measurements_resumes_bitwise(
  data_dir, tmp_path
):
  """The small run's first epoch (16 steps of 32, 3 of 160) on one device, noise.every=4,
  logging every step: the smoothing's effective step count changes only after the steps
  numbered 0, 4, 8, ... (rows 1, 5, 9, ...), and a run stopped at step 6, between two measurements, ends bitwise equal to the
  uninterrupted one."""
  config = small_config(
    data_dir,
    num_epochs=1,
    **{"schedule.boundaries": (0.5,), "noise.every": 4, "log_every_steps": 1},
  )
  one = jax.devices()[:1]
  summary = train_and_evaluate(config, tmp_path / "whole", devices=one, progress=False)
  train_and_evaluate(config, tmp_path / "parts", devices=one, stop_at_step=6, progress=False)
  train_and_evaluate(config, tmp_path / "parts", devices=one, progress=False)

  rows = {r["step"]: r for r in metrics_rows(tmp_path / "whole") if "grad_noise_steps" in r}
  changed = [s for s in sorted(rows)[1:] if rows[s]["grad_noise_steps"] != rows[s - 1].get(
    "grad_noise_steps")]  # fmt: skip
  assert changed and all((s - 1) % 4 == 0 for s in changed), changed
  assert len(changed) == len([s for s in sorted(rows)[1:] if (s - 1) % 4 == 0])
  written = json.loads((tmp_path / "whole" / "summary.json").read_text())
  assert written["noise_every"] == 4 and summary["status"] == "completed"

  step_a, a = final_state(config, tmp_path / "whole")
  step_b, b = final_state(config, tmp_path / "parts")
  assert step_a == step_b == 19
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
