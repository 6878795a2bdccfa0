"""Each schedule, as a `decay_lr` plan's optax schedule, equals optax's own."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigbatch as bb
from bigbatch.schedules import make_schedule

N, B, EPOCHS, LR = 50_000, 100, 10, 0.1
STEPS = EPOCHS * N // B  # 500 steps per epoch


def _plan_lr(schedule, **kwargs):
  plan = bb.plan_phases(
    dataset_size=N,
    epochs=EPOCHS,
    learning_rate=LR,
    batch_size=B,
    momentum=0.9,
    schedule=schedule,
    strategy="decay_lr",
    **kwargs,
  )
  assert plan.total_steps == STEPS
  return np.asarray(plan.schedule("learning_rate")(jnp.arange(STEPS)))


CASES = {
  "step": (
    make_schedule("step", EPOCHS, boundaries=(3, 6), factor=10),
    optax.piecewise_constant_schedule(LR, {1500: 0.1, 3000: 0.1}),
  ),
  "warmup_cosine": (
    make_schedule("cosine", EPOCHS, warmup_epochs=1, final_fraction=0.01),
    optax.warmup_cosine_decay_schedule(0.0, LR, 500, STEPS, end_value=LR * 0.01),
  ),
  "exponential": (
    make_schedule("exponential", EPOCHS, rate=0.5),
    optax.exponential_decay(LR, 500, 0.5),
  ),
  "exponential_staircase": (
    make_schedule("exponential", EPOCHS, rate=0.5, every_epochs=2, staircase=True),
    optax.exponential_decay(LR, 1000, 0.5, staircase=True),
  ),
  "sgdr": (
    make_schedule("sgdr", EPOCHS, cycle_epochs=2),
    optax.sgdr_schedule(
      [
        {
          "init_value": LR,
          "peak_value": LR,
          "decay_steps": 1000,
          "warmup_steps": 0,
          "end_value": 0.0,
        }
      ]
      * 5
    ),
  ),
  "one_cycle": (
    make_schedule("one_cycle", EPOCHS),
    optax.cosine_onecycle_schedule(STEPS, LR, 0.3, 25.0, 1e4),
  ),
  "constant": (make_schedule("constant", EPOCHS), optax.constant_schedule(LR)),
  "warmup_poly": (  # MLPerf's LARS ResNet-50: a linear warm-up, then (1 - t)^2 to a floor
    make_schedule("poly", EPOCHS, warmup_epochs=1, power=2, final_fraction=0.01),
    optax.join_schedules(
      [
        optax.linear_schedule(0.0, LR, 500),
        optax.polynomial_schedule(LR, LR * 0.01, 2, STEPS - 500),
      ],
      [500],
    ),
  ),
}


@pytest.mark.parametrize("name", CASES)
def test_decay_lr_plan_equals_optax_schedule(name):
  schedule, reference = CASES[name]
  expected = np.asarray(jnp.vectorize(reference)(jnp.arange(STEPS)))
  # float32 cancellation in 1 + cos(x) near a cycle's end: ~3e-9 absolute at a 0.1 peak
  np.testing.assert_allclose(_plan_lr(schedule), expected, rtol=2e-5, atol=LR * 1e-7)


def test_inverse_sqrt_by_hand():
  lr = _plan_lr(make_schedule("inverse_sqrt", EPOCHS, warmup_epochs=2))
  # linear warm-up to the peak at epoch 2 (step 1000), then 0.1 * sqrt(2 / epoch)
  assert lr[0] == 0.0
  assert lr[500] == pytest.approx(0.05, rel=1e-6)
  assert lr[1000] == pytest.approx(0.1, rel=1e-6)
  assert lr[4000] == pytest.approx(0.1 * np.sqrt(2 / 8), rel=1e-6)


def test_one_cycle_momentum_moves_against_the_rate():
  schedule = make_schedule("one_cycle", EPOCHS, momentum_range=(0.85, 0.95))
  plan = bb.plan_phases(
    dataset_size=N,
    epochs=EPOCHS,
    learning_rate=LR,
    batch_size=B,
    momentum=0.9,
    schedule=schedule,
    strategy="decay_lr",
  )
  m = np.asarray(plan.schedule("momentum")(jnp.arange(STEPS)))
  assert m[0] == pytest.approx(0.95) and m[1500] == pytest.approx(0.85)
  assert m[-1] == pytest.approx(0.95, abs=1e-6)
  lr = _plan_lr(schedule)
  assert np.argmax(lr) == np.argmin(m) == 1500


def test_breakpoints_split_phases():
  schedule = make_schedule("step", EPOCHS, boundaries=(3, 6), factor=10, warmup_epochs=1)
  assert schedule.breakpoints() == (1.0, 3.0, 6.0)
  plan = bb.plan_phases(
    dataset_size=N,
    epochs=EPOCHS,
    learning_rate=LR,
    batch_size=B,
    schedule=schedule,
    strategy="decay_lr",
  )
  assert [p.start_epoch for p in plan.phases] == [0.0, 1.0, 3.0, 6.0]
  assert [p.constant_learning_rate for p in plan.phases] == [False, True, True, True]


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"name": "linear"}, "schedule.name"),
    ({"name": "step"}, "schedule.boundaries"),
    ({"name": "step", "boundaries": (3, 2)}, "strictly increasing"),
    ({"name": "step", "boundaries": (3, 12)}, "before the last epoch"),
    ({"name": "step", "boundaries": (3,), "factor": 0.5}, "schedule.factor"),
    ({"name": "exponential", "rate": 1.5}, "schedule.rate"),
    ({"name": "sgdr"}, "schedule.cycle_epochs"),
    ({"name": "one_cycle", "warmup_epochs": 1}, "schedule.warmup_epochs"),
    ({"name": "cosine", "warmup_epochs": 10}, "schedule.warmup_epochs"),
    ({"name": "inverse_sqrt"}, "schedule.timescale_epochs"),
  ],
)
def test_schedule_errors_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_schedule(epochs=EPOCHS, **kwargs)
