"""The critical batch's arithmetic on branch results, against numbers worked by hand."""

import math

import pytest

from bigbatch.measure.critical_batch import (
  BranchResult,
  critical_batch,
  steps_to,
  tolerance_from_repeat,
  warmup_ramp,
  zhang_critical_batch,
)


def test_the_tolerance_is_two_sigma_from_a_repeat():
  # d = 0.03 has standard deviation sqrt(2) sigma: sigma = 0.03 / sqrt(2), 2 sigma = sqrt(2) 0.03
  assert tolerance_from_repeat(2.10, 2.07) == pytest.approx(math.sqrt(2) * 0.03)
  assert tolerance_from_repeat(2.0, 2.0) == 1e-4  # the floor


def test_the_critical_batch_is_the_largest_within_the_tolerance():
  results = [
    BranchResult(512, 10, 2.31),
    BranchResult(64, 80, 2.30),
    BranchResult(128, 40, 2.304),
    BranchResult(256, 20, 2.35),
  ]
  assert critical_batch(results, 0.02) == 512  # 2.31 within, 2.35 not: the largest within
  assert critical_batch(results, 0.005) == 128  # 2.304 - 2.30 <= 0.005 < 2.31 - 2.30
  assert critical_batch(results, 0.06) == 512  # all four within: the largest
  assert critical_batch(results, 0.0) == 64


def test_steps_to_a_target_interpolate_between_evaluations():
  curve = ((10, 3.0), (20, 2.5), (30, 2.0))
  assert steps_to(curve, 2.25) == pytest.approx(25.0)  # halfway from 2.5 to 2.0
  assert steps_to(curve, 3.5) == 10.0  # already there at the first evaluation
  assert steps_to(curve, 1.0) is None


def test_zhang_crosses_where_steps_exceed_ideal_scaling_by_a_fifth():
  # batch 32 reaches 2.0 at step 100; ideal at 64: 50, at 128: 25, at 256: 12.5
  results = [
    BranchResult(32, 100, 2.0, ((50, 2.5), (100, 2.0))),
    BranchResult(64, 50, 1.99, ((25, 2.4), (55, 2.0))),  # 55 <= 1.2 x 50
    BranchResult(128, 25, 2.02, ((20, 2.2), (40, 2.0))),  # 40 > 1.2 x 25: crossed
    BranchResult(256, 13, 2.0, ((13, 2.0),)),  # 13 <= 15, but past the crossing
  ]
  batch, table = zhang_critical_batch(results, target=2.0)
  assert batch == 64
  assert table[64] == (pytest.approx(55.0), pytest.approx(50.0))
  assert table[128] == (pytest.approx(40.0), pytest.approx(25.0))
  # the smallest batch never reaching the target leaves nothing to scale from
  assert zhang_critical_batch(results, target=1.0)[0] is None


def test_a_warmup_ramp_follows_the_running_largest_critical_batch():
  # Merrill's warm-up: measured 8,192 at 81,920 tokens, then 4,096 (noise, not a fall),
  # 16,384 (a rise), unmeasured, 12,288 (below the largest so far): two rises
  measured = [
    (737_280, 16_384),
    (81_920, 8_192),
    (409_600, 4_096),
    (800_000, None),
    (901_120, 12_288),
  ]
  assert warmup_ramp(measured, base_batch=4_096) == ((81_920, 8_192), (737_280, 16_384))
  # rounded down to the plan's multiple, and the base batch itself is no rise
  assert warmup_ramp([(1.0, 700), (2.0, 1_000)], base_batch=512, multiple=256) == ((2.0, 768),)
  assert warmup_ramp([(0.5, 4_096), (1.0, None)], base_batch=4_096) == ()
  with pytest.raises(ValueError, match="base_batch and multiple"):
    warmup_ramp([], base_batch=0)
