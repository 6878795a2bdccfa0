"""The range test's arithmetic: rates, smoothing, stopping, suggestions, the noise-scale fit."""

import math

import numpy as np
import pytest

from bigbatch.measure import lr_find


def test_exponential_rates_are_fastais_schedule_ending_at_end():
  np.testing.assert_allclose(
    lr_find.exponential_rates(1e-7, 10.0, 5), [1e-7, 1e-5, 1e-3, 1e-1, 10.0], rtol=1e-12
  )
  rates = lr_find.exponential_rates()
  assert len(rates) == 100 and rates[0] == 1e-7
  assert rates[-1] == pytest.approx(10.0, rel=1e-12)
  # one constant ratio: even steps in log lr
  np.testing.assert_allclose(rates[1:] / rates[:-1], 1e8 ** (1 / 99), rtol=1e-12)


def test_smooth_is_the_debiased_moving_average():
  # beta 0.5: m = 0.5, 1.25, 2.125 divided by 1 - 0.5^i = 0.5, 0.75, 0.875
  np.testing.assert_allclose(lr_find.smooth([1.0, 2.0, 3.0], beta=0.5), [1.0, 5 / 3, 17 / 7])
  # a constant loss stays constant: the debiasing removes the pull towards m_0 = 0
  np.testing.assert_allclose(lr_find.smooth(np.full(50, 2.5)), 2.5)
  assert np.all(np.isnan(lr_find.smooth([1.0, np.nan, 1.0])[1:]))


def test_should_stop_at_four_times_the_minimum_or_a_non_finite_loss():
  assert not lr_find.should_stop(4.0, 1.0)
  assert lr_find.should_stop(4.01, 1.0)
  assert lr_find.should_stop(1.5, 1.0, factor=1.4)
  assert lr_find.should_stop(math.nan, 1.0) and lr_find.should_stop(math.inf, 1.0)


# a synthetic range test over fastai's rates: the loss falls fastest (against
# log lr) at 1e-2, bottoms out, then diverges a few decades later
RATES = lr_find.exponential_rates(1e-7, 10.0, 200)
CENTRE, WIDTH = math.log(1e-2), 1.5


def synthetic_loss(rates, centre=CENTRE):
  x = np.log(rates)
  # the divergence term is small enough at the centre not to move the steepest point
  return 2.0 - np.tanh((x - centre) / WIDTH) + 1e-4 * np.exp(2.0 * (x - centre))


def test_suggest_finds_the_steepest_point_against_log_lr():
  loss = synthetic_loss(RATES)
  found = lr_find.suggest(RATES, loss)
  step = RATES[1] / RATES[0]  # one grid step
  assert 1e-2 / step <= found.steepest <= 1e-2 * step
  # against linear lr the slope is divided by lr: its minimum moves to where
  # tanh((x - c) / w) = -w / 2, about 1.46 in log, a factor 4.3 too small
  linear = RATES[np.argmin(np.gradient(loss, RATES))]
  assert linear == pytest.approx(1e-2 * math.exp(WIDTH * math.atanh(-WIDTH / 2)), rel=0.05)
  assert linear < found.steepest / 4
  assert found.minimum == RATES[np.argmin(loss[: found.diverged])]
  assert found.minimum_over_10 == pytest.approx(found.minimum / 10)
  assert found.diverged == np.argmax(loss > 4 * np.minimum.accumulate(loss))


def test_largest_stable_is_the_last_rate_within_rise_of_the_running_minimum():
  # flat, falls to 1 at step 3, then rises: 1.05 (within 10%), 1.2 (not)
  rates = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
  loss = [3.0, 2.9, 2.0, 1.0, 1.05, 1.2, 5.0]
  found = lr_find.suggest(rates, loss)
  assert found.diverged == 6  # 5.0 > 4 x 1.0
  assert found.minimum == 1e-1 and found.largest_stable == 1.0
  assert lr_find.suggest(rates, loss, rise=0.25).largest_stable == 10.0


def test_skip_start_leaves_the_noisy_first_steps_out_of_the_steepest_descent():
  loss = synthetic_loss(RATES)
  loss[:3] = [4.0, 2.0, 4.0]  # one lucky batch: the steepest fall of the curve
  assert lr_find.suggest(RATES, loss).steepest == RATES[0]
  found = lr_find.suggest(RATES, loss, skip_start=len(RATES) // 10)
  step = RATES[1] / RATES[0]
  assert 1e-2 / step <= found.steepest <= 1e-2 * step
  assert found.minimum == RATES[np.argmin(loss[: found.diverged])]
  # never fewer than three steps read: a short test reads its last three
  short = lr_find.suggest([1.0, 2.0, 4.0, 8.0], [3.0, 2.0, 1.0, 0.9], skip_start=10)
  assert short.steepest in (2.0, 4.0, 8.0) and short.minimum == 8.0


def test_suggest_ignores_what_comes_after_the_divergence():
  loss = synthetic_loss(RATES)
  loss[150:] = np.nan  # the test stopped: nothing recorded, or NaN
  loss[170] = -100.0  # a garbage value after the stop must not count
  found = lr_find.suggest(RATES, loss)
  assert found.diverged == 150
  assert found.minimum == RATES[np.argmin(loss[:150])]


A_LR_MAX, A_B_NOISE = 0.8, 1000.0


def best(batch):
  return A_LR_MAX / (1.0 + A_B_NOISE / batch)


def test_two_tests_recover_lr_max_and_b_noise_exactly():
  fit = lr_find.fit_noise_scale((128, 2048), (best(128), best(2048)))
  assert fit.lr_max == pytest.approx(A_LR_MAX, rel=1e-12)
  assert fit.b_noise == pytest.approx(A_B_NOISE, rel=1e-12)
  assert fit.best_rate(A_B_NOISE) == pytest.approx(A_LR_MAX / 2)


BATCHES = np.array([64, 256, 1024, 4096])


def test_the_fit_from_rates_read_off_range_tests_stays_close():
  # range tests of 400 steps: each reading within half a grid step (2.3%) of the truth
  rates = lr_find.exponential_rates(1e-7, 10.0, 400)
  curves = [synthetic_loss(rates, math.log(best(b))) for b in BATCHES]
  found = np.array([lr_find.suggest(rates, curve).steepest for curve in curves])
  assert np.all(np.abs(np.log(found / best(BATCHES))) <= math.log(1.024))
  fit = lr_find.fit_noise_scale(BATCHES, found)
  # measured: +7.6% and +10.1%; the readings at the two largest batches (+2%),
  # where the curve flattens towards lr_max, move the intercept most
  assert fit.lr_max == pytest.approx(A_LR_MAX, rel=0.1)
  assert fit.b_noise == pytest.approx(A_B_NOISE, rel=0.15)


def test_the_fit_from_noisy_rates_is_centred_and_mostly_close():
  # 200 sets of four readings, each off by a log-normal factor of sd 3% (seeded)
  rng = np.random.default_rng(0)
  fits = [
    lr_find.fit_noise_scale(BATCHES, best(BATCHES) * np.exp(rng.normal(0.0, 0.03, 4)))
    for _ in range(200)
  ]
  lr_error = np.array([fit.lr_max for fit in fits]) / A_LR_MAX - 1
  noise_error = np.array([fit.b_noise for fit in fits]) / A_B_NOISE - 1
  # measured: medians -1.4% and -1.3%; 90% of fits within 12% and 16%
  assert abs(np.median(lr_error)) < 0.03 and abs(np.median(noise_error)) < 0.03
  assert np.quantile(np.abs(lr_error), 0.9) < 0.15
  assert np.quantile(np.abs(noise_error), 0.9) < 0.2


def test_propose_start_scales_the_config_along_b_proportional_to_lr():
  # the paper's CIFAR config, lr 0.1 at batch 128: B' = 0.8 x 128 / 0.1 - 100 = 924
  start = lr_find.propose_start(0.8, 100.0, learning_rate=0.1, batch_size=128)
  assert start.unrounded == pytest.approx(924.0)
  assert start.batch_size == 924 and start.learning_rate == pytest.approx(0.1 * 924 / 128)
  # at that batch the scaled rate is the best rate: the ray meets McCandlish's curve
  assert start.learning_rate == pytest.approx(0.8 / (1 + 100 / 924))
  capped = lr_find.propose_start(
    0.8, 100.0, learning_rate=0.1, batch_size=128, batch_multiple=64, max_batch_size=800
  )
  assert capped.batch_size == 768 and capped.learning_rate == pytest.approx(0.6)
  # with B_noise 1000 the config's rate is above lr_opt(128) = 0.091: the batch shrinks
  smaller = lr_find.propose_start(0.8, 1000.0, learning_rate=0.1, batch_size=128)
  assert smaller.batch_size == 24 and smaller.learning_rate == pytest.approx(0.1 * 24 / 128)


def test_explain_prints_the_arithmetic():
  fit = lr_find.fit_noise_scale((128, 2048), (best(128), best(2048)))
  start = lr_find.propose_start(
    fit.lr_max, fit.b_noise, learning_rate=0.01, batch_size=128, batch_multiple=8
  )
  lines = lr_find.explain(fit, start)
  assert lines[1] == "  range tests: batch 128 -> lr 0.09078; batch 2048 -> lr 0.5375"
  assert lines[3] == "  lr_max = 0.8, B_noise = 1250 x 0.8 = 1000"
  assert "B = lr_max x 128 / 0.01 - B_noise = 1.024e+04 - 1000 = 9240" in lines[5]
  assert lines[-1].startswith("  start: batch_size = 9240, learning_rate = 0.01 x 9240 / 128")
  assert lr_find.explain(fit) == lines[:4]


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: lr_find.exponential_rates(0.0), "start: must be a positive number"),
    (lambda: lr_find.exponential_rates(1.0, 0.5), "end: must be larger than start"),
    (lambda: lr_find.exponential_rates(steps=1), "steps: must be an integer >= 2"),
    (lambda: lr_find.smooth([1.0], beta=1.0), r"beta: must be in \[0, 1\)"),
    (lambda: lr_find.should_stop(1.0, 1.0, factor=0.5), "factor: must be >= 1"),
    (lambda: lr_find.suggest([1.0, 0.5, 2.0], [1.0, 1.0, 1.0]), "rates: must be positive"),
    (lambda: lr_find.suggest([1.0, 2.0, 3.0], [1.0, 1.0]), "smoothed: needs one loss per rate"),
    (lambda: lr_find.suggest([1.0, 2.0, 3.0], [1.0, 9.0, 1.0]), "smoothed: the loss diverges"),
    (lambda: lr_find.suggest([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], skip_start=-1), "skip_start:"),
    (lambda: lr_find.fit_noise_scale((128,), (0.1,)), "batch_sizes: needs two or more"),
    (lambda: lr_find.fit_noise_scale((128, 128), (0.1, 0.2)), "batch_sizes: must be distinct"),
    (lambda: lr_find.fit_noise_scale((128, 256), (0.1,)), "best_rates: needs one positive"),
    (lambda: lr_find.fit_noise_scale((128, 256), (0.2, 0.1)), "best_rates: must grow with"),
    (lambda: lr_find.fit_noise_scale((128, 256), (0.1, 0.25)), "best_rates: grow as fast as"),
    (
      lambda: lr_find.propose_start(0.8, 1000.0, learning_rate=0.2, batch_size=128),
      r"learning_rate: 0.2 at batch 128 .* lower it to at most lr_opt\(128\) = 0.09078",
    ),
    (
      lambda: lr_find.propose_start(0.8, 1000.0, learning_rate=0.01, batch_size=0),
      "batch_size: must be a positive integer",
    ),
  ],
)
def test_bad_inputs_name_the_argument(call, message):
  with pytest.raises(ValueError, match=message):
    call()
