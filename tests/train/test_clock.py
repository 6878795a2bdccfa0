"""The clock: each phase's steps and seconds, summed across the starts of a run."""

import pytest

from bigbatch import schedules
from bigbatch.plan import planner
from bigbatch.step import CompileRecord
from bigbatch.train import clock as clock_lib


class FakeTime:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.fixture
def fake_time(monkeypatch):
  fake = FakeTime()
  monkeypatch.setattr(clock_lib.time, "perf_counter", fake)
  return fake


def two_phase_plan():
  schedule = schedules.make_schedule("step", 2.0, boundaries=(1.0,), factor=4.0)
  return planner.plan_phases(
    dataset_size=64, epochs=2.0, learning_rate=0.1, batch_size=8, momentum=0.9,
    schedule=schedule, strategy="increase_batch",
  )  # fmt: skip


def test_a_phase_counts_its_steps_seconds_and_time_spent_apart(fake_time):
  plan = two_phase_plan()
  assert [p.batch_size for p in plan.phases] == [8, 32] and plan.phases[0].steps == 8
  clock = clock_lib.Clock(plan, None)
  clock.start_phase(0, 0, 8)
  fake_time.now += 4.0
  clock.spend(0, "eval_seconds", 0.5)
  clock.spend(0, "checkpoint_seconds", 0.25)
  clock.note(0, "grad_noise_scale", 123.0)
  clock.end_phase(8)
  clock.start_phase(1, 8, 32)
  fake_time.now += 1.0
  totals = clock.totals(
    10, [CompileRecord(8, 2.0, False), CompileRecord(32, 3.0, True), CompileRecord(7, 9.0, True)]
  )
  first, second = totals["phases"]
  assert totals["sessions"] == 1 and totals["wall_seconds"] == pytest.approx(5.0)
  assert (first["steps"], first["seconds"], first["compile_seconds"]) == (8, 4.0, 2.0)
  assert (first["eval_seconds"], first["checkpoint_seconds"]) == (0.5, 0.25)
  assert first["grad_noise_scale"] == 123.0
  # the phase in progress counts up to the step asked for; 7 is no phase's batch
  assert (second["steps"], second["seconds"], second["compile_seconds"]) == (2, 1.0, 3.0)


def test_a_resumed_run_adds_to_the_totals_its_checkpoint_carried(fake_time):
  plan = two_phase_plan()
  before = clock_lib.Clock(plan, None)
  before.start_phase(0, 0, 8)
  fake_time.now += 2.0
  before.note(0, "grad_noise_scale_low", 50.0)
  saved = before.totals(5, [CompileRecord(8, 1.5, False)])
  after = clock_lib.Clock(plan, saved)  # a new start from the checkpoint at step 5
  after.start_phase(0, 5, 8)
  fake_time.now += 3.0
  after.end_phase(8)
  totals = after.totals(8, [CompileRecord(8, 0.5, False)])
  first = totals["phases"][0]
  assert totals["sessions"] == 2
  assert (first["steps"], first["seconds"], first["compile_seconds"]) == (8, 5.0, 2.0)
  assert first["grad_noise_scale_low"] == 50.0  # carried over from the first start
  assert totals["wall_seconds"] == pytest.approx(2.0 + 3.0)


def test_a_phase_decided_while_training_is_kept_across_a_restart(fake_time):
  plan = two_phase_plan()
  elapsed = {"sessions": 1, "wall_seconds": 1.0, "phases": [
    {"phase": 2, "batch_size": 128, "steps": 3, "seconds": 0.5, "compile_seconds": 0.1},
  ]}  # fmt: skip
  totals = clock_lib.Clock(plan, elapsed).totals(0)
  assert [(p["phase"], p["batch_size"], p["steps"]) for p in totals["phases"]] == [
    (0, 8, 0),
    (1, 32, 0),
    (2, 128, 3),
  ]


def test_time_spent_for_a_phase_after_its_clock_stopped_is_added_where_it_is_subtracted():
  """The final evaluation and checkpoint come after the last phase's clock has stopped:
  they join its seconds, so its training rate is its steps over its steps' time alone."""
  from bigbatch.plan import summary as run_summary

  fake = FakeTime()
  plan = two_phase_plan()
  clock = clock_lib.Clock(plan, None, timer=fake)
  clock.start_phase(0, 0, 8)
  fake.now += 0.5  # the compile wait, inside the phase's clock
  clock.spend(0, "compile_wait_seconds", 0.5)
  fake.now += 2.0  # 8 steps of 8 examples: 32 examples/s
  fake.now += 1.0  # an evaluation inside the phase
  clock.spend(0, "eval_seconds", 1.0)
  clock.end_phase(8)
  clock.start_phase(1, 8, 32)
  fake.now += 1.0  # 2 steps of 32 examples: 64 examples/s
  clock.end_phase(10)
  clock.spend(1, "eval_seconds", 3.0)  # the final evaluation, after the clock stopped
  clock.spend(1, "checkpoint_seconds", 0.25)  # and the final checkpoint
  first, second = clock.totals(10)["phases"]
  assert first["seconds"] == pytest.approx(3.5)  # nothing added: all of it was inside
  assert second["seconds"] == pytest.approx(4.25)
  assert run_summary._phase_examples_per_second(first) == pytest.approx(32.0)
  assert run_summary._phase_examples_per_second(second) == pytest.approx(64.0)


def test_each_phase_records_the_devices_its_steps_ran_on_across_a_move(fake_time):
  """Phase 0 on 2 devices, stopped at its end; the next start, on 8, runs phase 1."""
  plan = two_phase_plan()
  before = clock_lib.Clock(plan, None, devices=2)
  before.start_phase(0, 0, 8)
  fake_time.now += 2.0
  before.end_phase(8)
  saved = before.totals(8)
  assert [p.get("devices") for p in saved["phases"]] == [2, None]  # phase 1 never ran
  after = clock_lib.Clock(plan, saved, devices=8)
  after.start_phase(1, 8, 32)
  fake_time.now += 1.0
  after.end_phase(10)
  assert [p["devices"] for p in after.totals(10)["phases"]] == [2, 8]
  # a run from before phases recorded their devices: none is made up
  assert "devices" not in clock_lib.Clock(plan, None).totals(0)["phases"][0]
