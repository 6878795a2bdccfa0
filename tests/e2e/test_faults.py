"""Fault injection: `bigbatch train` killed, signalled, and given broken files.

Each kill trial runs `bigbatch train` in subprocesses, kills it (SIGKILL at a
named fault point, `bigbatch.workdir.faults`, or after a seeded random delay), starts
it again until it completes, and checks that it ends bitwise equal to an
uninterrupted run (the fingerprint of every array of the final checkpoint, and
every logged value), with metrics.jsonl holding each (step, metric) once. The
CI set is one chain of kills at every kind of moment; `slow` adds one trial per
moment and the random-delay trials.
"""

import json
import pathlib
import random
import signal
import subprocess
import time

import numpy as np
import pytest
from small_run import metrics_rows, small_config, start, tensorboard_scalars

from bigbatch import config as bbconfig
from bigbatch.workdir import checkpoint as ckpt

# Keys whose values differ between runs by nature (timings), not by state.
TIMING_KEYS = {"examples_per_second"}


def small_plan(data_dir):
  return bbconfig.plan_from_config(small_config(data_dir))


def train(workdir, data_dir, *extra, fault=None, devices=1, kill_after=None, timeout=300):
  """Runs the small run in a subprocess; returns (exit status, output).

  `fault`: a `BIGBATCH_FAULT` point; `kill_after`: SIGKILL after that many seconds.
  """
  proc = start(workdir, data_dir, *extra, fault=fault, devices=devices)
  try:
    output, _ = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
  except subprocess.TimeoutExpired:
    if kill_after is None:
      raise
    proc.kill()
    output, _ = proc.communicate()
  return proc.returncode, output


def logged(workdir):
  """{(step, metric): value} of metrics.jsonl, asserting each pair appears once."""
  values = {}
  for row in metrics_rows(workdir):
    for key, value in row.items():
      if key == "step":
        continue
      assert (row["step"], key) not in values, f"({row['step']}, {key}) logged twice"
      values[row["step"], key] = value
  return values


def final_fingerprint(workdir):
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  step = checkpoints.latest_step()
  record = checkpoints.record(step)
  checkpoints.close()
  return step, record["fingerprint"], record.get("final_eval")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The uninterrupted run every trial must end equal to. A good run prints nothing on
  stderr, to its exit: no TensorFlow lines, no library records."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = start(workdir, data_dir, stderr=subprocess.PIPE)
  output, errors = proc.communicate(timeout=300)
  assert proc.returncode == 0, (output + errors)[-3000:]
  assert errors == "" and "completed at step" in output
  return workdir


def assert_same_run(workdir, reference):
  """Bitwise the reference's final state and logged values; each (step, metric) once."""
  step, prints, final = final_fingerprint(workdir)
  ref_step, ref_prints, ref_final = final_fingerprint(reference)
  assert step == ref_step and final == ref_final
  assert prints == ref_prints  # every array of the state, bit for bit
  ours, theirs = logged(workdir), logged(reference)
  assert ours.keys() == theirs.keys()
  for key, value in theirs.items():
    if key[1] not in TIMING_KEYS:
      assert ours[key] == value, key
  assert_tensorboard_shows_each_step_once(workdir, ours)
  summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["step"] == ref_step
  return summary


def assert_tensorboard_shows_each_step_once(workdir, values):
  """The curves TensorBoard draws from the event files of every start (a restart's
  points dropped from its step on): each (step, metric) once, as metrics.jsonl has it."""
  curves = tensorboard_scalars(workdir)
  seen = {}
  for tag, points in curves.items():
    for step, value in points:
      assert (step, tag) not in seen, f"TensorBoard shows ({step}, {tag}) twice"
      seen[step, tag] = value
  numbers = {k: v for k, v in values.items() if isinstance(v, int | float)}
  assert seen.keys() == numbers.keys()
  for key, value in numbers.items():
    if key[1] not in TIMING_KEYS:
      assert seen[key] == np.float32(value), key


def resume_to_completion(workdir, data_dir, limit=8):
  for _ in range(limit):
    code, output = train(workdir, data_dir)
    assert code == 0, output[-3000:]
    if "completed at step" in output or "is complete" in output:
      return output
  raise AssertionError("the run did not complete")


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_chain_of_kills_at_every_kind_of_moment_ends_bitwise_equal(data_dir, reference, tmp_path):
  """SIGKILL at start-up, inside a save, on the steps before and after a phase
  boundary, after the final evaluation and before the summary: one run, killed
  at each in turn, then finished."""
  plan = small_plan(data_dir)
  boundary = plan.phases[1].first_step
  chain = [
    "startup",
    "save@10",
    f"step@{boundary - 1}",
    f"step@{boundary + 1}",
    f"save@{plan.phases[2].first_step}",
    "final_eval",
    "summary",
  ]
  for fault in chain:
    code, output = train(tmp_path, data_dir, fault=fault)
    assert code == -signal.SIGKILL, f"{fault}: {output[-2000:]}"
  assert not (tmp_path / "summary.json").exists()  # killed before it was written
  output = resume_to_completion(tmp_path, data_dir)
  assert "is complete" in output  # the final checkpoint carried the final evaluation
  summary = assert_same_run(tmp_path, reference)
  # the summary describes the whole run: every phase's steps, over several starts
  assert [p["steps"] for p in summary["phases"]] == [p.steps for p in plan.phases]
  assert summary["sessions"] > 1


def test_a_finished_run_started_again_changes_nothing(data_dir, reference):
  before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
  code, output = train(reference, data_dir)
  assert code == 0 and "is complete (step 40 of 40); nothing to do" in output, output[-2000:]
  after = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
  assert after == before


def test_sigterm_saves_and_a_resume_on_fewer_devices_finishes_close(data_dir, tmp_path):
  """SIGTERM on 4 devices: exit 0 with a checkpoint; the resume runs on 2 devices."""
  proc = start(tmp_path, data_dir, devices=4)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 120
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and metrics.read_text().count("\n") >= 2:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "preempted at step" in output, output[-2000:]
  stopped = ckpt.Checkpoints(tmp_path / "checkpoints").latest_step()
  assert 0 < stopped < 40
  code, output = train(tmp_path, data_dir, devices=2)
  assert code == 0 and f"resuming from the checkpoint at step {stopped}" in output
  logged(tmp_path)  # each (step, metric) once, the preemption's extra row included
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["sessions"] == 2
  assert summary["final_test_accuracy"] > 0.2


@pytest.mark.slow
@pytest.mark.parametrize(
  # 32 steps at batch 32, 7 at 160 from step 32, 1 at 800 from step 39
  "fault",
  ["startup", "save@20", "step@31", "step@32", "step@33", "save@39", "final_eval", "summary"],
)
def test_one_kill_at_a_named_moment_ends_bitwise_equal(data_dir, reference, tmp_path, fault):
  code, _ = train(tmp_path, data_dir, fault=fault)
  assert code == -signal.SIGKILL
  resume_to_completion(tmp_path, data_dir)
  assert_same_run(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_a_kill_after_a_random_delay_ends_bitwise_equal(data_dir, reference, tmp_path, seed):
  """SIGKILL after a delay drawn (seeded) over the whole run, start-up included."""
  delay = random.Random(seed).uniform(2.0, 16.0)
  train(tmp_path, data_dir, kill_after=delay)
  resume_to_completion(tmp_path, data_dir)
  assert_same_run(tmp_path, reference)


# the small run's first two epochs with each phase on its slice: phase 0 (batch 32) on 2
# devices, phase 1 (batch 160, steps 32-37) on 8
ELASTIC = ["--config.num_epochs=2", "--config.schedule.boundaries=(1.0,)",
           "--config.elastic.slice_sizes=(1,2,4,8)", "--config.elastic.per_device_batch=16",
           "--until_phase_end"]  # fmt: skip


@pytest.mark.slow
def test_kills_around_an_elastic_move_end_bitwise_equal_to_the_move_uninterrupted(
  data_dir, tmp_path
):
  """Inside the phase-end save on 2 devices, and on the first step after the move to 8:
  the run ends as the same move without kills does."""
  reference = tmp_path / "reference"
  assert train(reference, data_dir, *ELASTIC, devices=2)[0] == 75
  assert train(reference, data_dir, *ELASTIC, devices=8)[0] == 0
  trial = tmp_path / "trial"
  for fault, devices in [("save@32", 2), ("step@33", 8)]:
    if devices == 8:  # the phase end reached again after the kill in its save
      code, output = train(trial, data_dir, *ELASTIC, devices=2)
      assert code == 75 and "resuming from the checkpoint at step 30" in output, output[-2000:]
    code, output = train(trial, data_dir, *ELASTIC, fault=fault, devices=devices)
    assert code == -signal.SIGKILL, f"{fault}: {output[-2000:]}"
  code, output = train(trial, data_dir, *ELASTIC, devices=8)
  assert code == 0 and "resuming from the checkpoint at step 32" in output, output[-2000:]
  assert_same_run(trial, reference)
