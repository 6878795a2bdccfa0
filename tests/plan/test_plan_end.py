"""Where a plan ends: its last phase's steps end nearest the baseline's end, and the table
says where it ends whenever that is not the budget."""

import dataclasses

import pytest

import bigbatch as bb
from bigbatch.plan import report
from bigbatch.plan.phases import steps_to_end
from bigbatch.schedules import make_schedule


def three_epochs(n, **kwargs):
  """3 epochs at batch 32, the noise scale /5 at epochs 1 and 2: batches 32, 160, 800."""
  kwargs = {"learning_rate": 0.1, "momentum": 0.9, "batch_size": 32, "batch_multiple": 32,
            **kwargs}  # fmt: skip
  schedule = make_schedule("step", 3, boundaries=(1, 2), factor=5)
  return bb.plan_phases(dataset_size=n, epochs=3, schedule=schedule, **kwargs)


def end_line(plan):
  lines = [line for line in report.format_plan(plan).splitlines() if line.startswith("end: ")]
  assert len(lines) <= 1
  return lines[0] if lines else None


@pytest.mark.parametrize(
  "position, batch, budget, baseline_batch, steps",
  [
    (8_256, 800, 12_288, 32, 5),  # 4,032 left: 5.04 steps
    (2_144, 800, 3_072, 32, 1),  # 928 left: 1.16 steps
    (8_000_384, 16_000, 10_000_000, 128, 125),  # 124.98 steps
    (0, 800, 1_200, 400, 1),  # 1.5 steps: a tie takes the fewer
    (0, 800, 1_201, 401, 2),  # the baseline ends at 1,203: 1.504 steps
    (0, 128, 1_000_000, 128, 7_813),  # the baseline's own 7,812.5 steps, rounded up
    (3_000, 800, 3_072, 32, 1),  # 72 left: under half a step, but the phase keeps one
    (3_072, 800, 3_072, 32, 0),  # nothing left
    (3_200, 800, 3_072, 32, 0),  # the phase before passed the end
  ],
)
def test_the_last_phase_ends_at_the_step_nearest_the_baselines_end(
  position, batch, budget, baseline_batch, steps
):
  assert steps_to_end(position, batch, budget, baseline_batch) == steps


def test_three_epochs_of_4096_end_32_examples_short_not_at_epoch_3_19():
  plan = three_epochs(4_096)
  # 128 steps of 32 (4,096); 26 of 160 (4,160, 64 into epoch 2); then 12,288 - 8,256 =
  # 4,032 examples at 800: 5 steps end 32 short, 6 would end at 13,056 (epoch 3.19)
  assert [(p.batch_size, p.steps, p.first_example) for p in plan.phases] == [
    (32, 128, 0), (160, 26, 4_096), (800, 5, 8_256)
  ]  # fmt: skip
  assert plan.total_steps == 159 and plan.examples_before(159) == 12_256
  assert end_line(plan) == (
    "end: epoch 2.99219, 32 examples short of the budget (12,256 of 12,288): one more step "
    "of 800 would pass it by 768"
  )


def test_the_small_run_of_1024_ends_128_short_rather_than_672_past():
  plan = three_epochs(1_024)
  # 32 steps of 32, 7 of 160 (1,120: 96 into epoch 2), then 928 left at 800: 1.16 steps
  assert [p.steps for p in plan.phases] == [32, 7, 1] and plan.examples_before(40) == 2_944
  assert end_line(plan) == (
    "end: epoch 2.875, 128 examples short of the budget (2,944 of 3,072): one more step of "
    "800 would pass it by 672"
  )


def test_a_last_step_that_passes_the_budget_says_by_how_much():
  schedule = make_schedule("step", 200, boundaries=(60, 120, 160), factor=5)
  plan = bb.plan_phases(dataset_size=50_000, epochs=200, learning_rate=0.1, momentum=0.9,
                        batch_size=128, batch_multiple=128, schedule=schedule)  # fmt: skip
  # each phase rounded up leaves the last 1,999,616 examples: 124.98 steps of 16,000
  assert plan.phases[-1].first_example == 8_000_384 and plan.phases[-1].steps == 125
  assert end_line(plan) == (
    "end: epoch 200.008, 384 examples past the budget (10,000,384 of 10,000,000): the last "
    "step of 16,000 holds 384 more than remained; one fewer would end 15,616 short"
  )


def test_a_plan_at_the_baseline_batch_is_the_baseline_and_says_where_both_end():
  plan = bb.plan_phases(dataset_size=50_000, epochs=20, learning_rate=0.1, batch_size=128,
                        strategy="decay_lr")  # fmt: skip
  # 1,000,000 / 128 = 7,812.5: the baseline's 7,813 steps, 64 examples past the budget
  assert plan.total_steps == plan.baseline_total_steps == 7_813
  assert end_line(plan) == (
    "end: epoch 20.0013, 64 examples past the budget (1,000,064 of 1,000,000), as the "
    "baseline's last step"
  )


def test_a_last_phase_shorter_than_half_its_batch_keeps_one_step_and_says_so():
  # 1,024 sequences, batch 8 -> 32 -> 128 -> 512 at 256, 512 and 768: the last phase's
  # 256 sequences are half a step of 512, which the phase keeps (its batch is the plan's)
  schedule = make_schedule("step", 1, boundaries=(0.25, 0.5, 0.75), factor=4)
  plan = bb.plan_phases(dataset_size=1_024, epochs=1, learning_rate=0.1, batch_size=8,
                        schedule=schedule, batch_multiple=8)  # fmt: skip
  assert [(p.batch_size, p.steps) for p in plan.phases] == [(8, 32), (32, 8), (128, 2), (512, 1)]
  assert end_line(plan) == (
    "end: epoch 1.25, 256 examples past the budget (1,280 of 1,024): the last step of 512 "
    "holds 256 more than remained; one fewer would end 256 short"
  )


def test_a_plan_that_ends_at_its_budget_says_nothing_of_it():
  plan = three_epochs(800, batch_size=16, batch_multiple=16)  # batches 16, 80, 400
  assert [p.steps for p in plan.phases] == [50, 10, 2] and end_line(plan) is None


def test_a_language_models_end_is_in_tokens():
  plan = dataclasses.replace(three_epochs(4_096), tokens_per_example=128)
  assert end_line(plan) == (
    "end: 1.569M tokens, 4,096 tokens short of the budget (1,568,768 of 1,572,864): one more "
    "step of 102,400 would pass it by 98,304"
  )
