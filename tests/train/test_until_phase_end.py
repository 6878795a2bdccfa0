"""`elastic.until_phase_end`: a run stops where its next phase wants more devices than it
has, and resumed on them it continues as a run on those devices throughout."""

import jax
import numpy as np
from small_run import CONFIG, metrics_rows, overrides, small_config

from bigbatch.cli import main
from bigbatch.train import train_and_evaluate
from bigbatch.workdir import checkpoint as ckpt

# the small run's first two epochs, batches 32 -> 160, at 16 examples a device: phase 0
# wants 2 devices, phase 1 the largest slice, 8
SHORT = {"num_epochs": 2, "schedule.boundaries": (1.0,)}
ELASTIC = {
  "elastic.slice_sizes": (1, 2, 4, 8),
  "elastic.per_device_batch": 16,
  "elastic.until_phase_end": True,
}


def losses(workdir):
  return {r["step"]: r["loss"] for r in metrics_rows(workdir) if "loss" in r}


def test_a_run_stopped_on_2_devices_resumes_on_8_as_a_run_on_8_throughout(
  capsys, data_dir, tmp_path
):
  config = small_config(data_dir, **SHORT, **ELASTIC)
  two, eight = jax.devices()[:2], jax.devices()[:8]
  stopped = train_and_evaluate(config, tmp_path / "elastic", devices=two, progress=False)
  assert stopped["status"] == "needs_devices" and stopped["step"] == 32  # phase 0's end
  assert (stopped["next_phase"], stopped["next_devices"], stopped["devices"]) == (1, 8, 2)
  assert stopped["next_batch_size"] == 160
  # resumed there on too few devices again: nothing trains, the same answer at once
  again = train_and_evaluate(config, tmp_path / "elastic", devices=two, progress=False)
  assert again["status"] == "needs_devices" and again["step"] == 32
  done = train_and_evaluate(config, tmp_path / "elastic", devices=eight, progress=False)
  whole = train_and_evaluate(
    small_config(data_dir, **SHORT), tmp_path / "whole", devices=eight, progress=False
  )
  assert done["status"] == whole["status"] == "completed"
  assert done["updates"] == whole["updates"] and done["sessions"] == 2
  elastic, reference = losses(tmp_path / "elastic"), losses(tmp_path / "whole")
  assert sorted(elastic) == sorted(reference)  # the same steps, logged alike
  steps = sorted(reference)
  # the same data in the same order: only the sums' order differs between 2 and 8 devices
  np.testing.assert_allclose([elastic[s] for s in steps], [reference[s] for s in steps], rtol=1e-4)
  assert done["final_test_loss"] == np.float32(done["final_test_loss"])
  np.testing.assert_allclose(done["final_test_loss"], whole["final_test_loss"], rtol=1e-4)
  # each phase records the devices it ran on; `bigbatch plan --workdir` fits its step times
  assert [(p["phase"], p["devices"]) for p in done["phases"]] == [(0, 2), (1, 8)]
  assert_plan_uses_the_measured_step_times(capsys, data_dir, tmp_path / "elastic")


def test_until_phase_end_exits_75_with_the_devices_wanted_and_the_command(
  capsys, data_dir, tmp_path
):
  """On this process's 8 devices, 8 examples a device: phase 1 (160) wants 16."""
  argv = ["--config", CONFIG, "--workdir", str(tmp_path / "w"), "--noprogress",
          *overrides(data_dir), "--config.elastic.slice_sizes=(1,2,4,8,16)",
          "--config.elastic.per_device_batch=8", "--until_phase_end"]  # fmt: skip
  assert main(["train", *argv]) == 75
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert err[-1].startswith(
    "bigbatch train: phase 1 (batch 160) wants 16 devices, this run has 8: checkpointed at "
    "step 32; resume on 16 devices with: bigbatch train --config "
  )
  assert err[-1].endswith("--until_phase_end")
  assert (tmp_path / "w" / "checkpoints" / "32").is_dir()


def assert_plan_uses_the_measured_step_times(capsys, data_dir, workdir):
  """The device-hours line of `bigbatch plan --workdir` on the run's own step times, by hand:
  per-device batches 16 (32 steps on 2 devices) and 20 (6 steps of 160 on 8)."""
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  phases = checkpoints.record(checkpoints.latest_step())["elapsed"]["phases"]
  checkpoints.close()
  per_step = []
  for p in phases:
    spent = sum(p[k] for k in ("eval_seconds", "checkpoint_seconds", "compile_wait_seconds"))
    per_step.append((p["seconds"] - spent) / p["steps"])
  slope = (per_step[1] - per_step[0]) / (20 - 16)  # two points: the line through them
  fixed = per_step[0] - 16 * slope
  if fixed < 0 or slope <= 0:  # refitted through 0, weighed by steps
    slope = (32 * 16 * per_step[0] + 6 * 20 * per_step[1]) / (32 * 16**2 + 6 * 20**2)
    fixed = 0.0
  used = 32 * (fixed + 16 * slope) * 2 + 6 * (fixed + 20 * slope) * 8
  whole = 32 * (fixed + 4 * slope) * 8 + 6 * (fixed + 20 * slope) * 8
  capsys.readouterr()
  flags = [f"--config.{k}={v}" for k, v in SHORT.items()] + [
    "--config.elastic.slice_sizes=(1,2,4,8)",
    "--config.elastic.per_device_batch=16",
  ]
  argv = ["plan", "--config", CONFIG, *overrides(data_dir), *flags, "--workdir", str(workdir)]
  assert main(argv) == 0
  [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("device-hours:")]
  assert line.startswith(
    f"device-hours: {used / 3600:,.4g} against {whole / 3600:,.4g} on 8 devices throughout "
    f"({1 - used / whole:.1%} fewer), by the step times measured at per-device batches 16, 20"
  )
  assert line.endswith(f" in {workdir}")
