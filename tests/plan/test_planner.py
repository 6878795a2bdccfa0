"""The planner against the paper's arithmetic, and its invariants."""

import jax.numpy as jnp
import numpy as np
import pytest

import bigbatch as bb
from bigbatch.schedules import make_schedule

CIFAR_N, IMAGENET_N = 50_000, 1_281_167
CIFAR_STEPS = make_schedule("step", 200, boundaries=(60, 120, 160), factor=5)
INCEPTION_STEPS = make_schedule("step", 90, boundaries=(30, 60, 80), factor=10)
GOYAL = make_schedule(
  "step", 90, boundaries=(30, 60, 80), factor=10, warmup_epochs=5, warmup_init=1 / 32
)


def cifar(**kwargs):
  kwargs = {
    "learning_rate": 0.1,
    "momentum": 0.9,
    "batch_size": 128,
    "batch_multiple": 128,
    **kwargs,
  }
  return bb.plan_phases(dataset_size=CIFAR_N, epochs=200, schedule=CIFAR_STEPS, **kwargs)


# Section 5.2: (lr, m, B0) with the cap 5120; the paper's update counts.
SECTION_5_2 = {
  "original": ({"strategy": "decay_lr"}, 78_125, (128,)),
  "increasing batch": (
    {"strategy": "hybrid", "max_batch_size": 5120},
    29_141,
    (128, 640, 3200, 5120),
  ),
  "increased initial lr": (
    {"strategy": "hybrid", "max_batch_size": 5120, "learning_rate": 0.5, "batch_size": 640},
    6_406,
    (640, 3200, 5120),
  ),
  "increased momentum": (
    {
      "strategy": "hybrid",
      "max_batch_size": 5120,
      "learning_rate": 0.5,
      "momentum": 0.98,
      "batch_size": 3200,
    },
    2_305,
    (3200, 5120),
  ),
}


@pytest.mark.parametrize("row", SECTION_5_2)
def test_cifar_section_5_2(row):
  kwargs, updates, batches = SECTION_5_2[row]
  plan = cifar(**kwargs)
  assert plan.total_steps == pytest.approx(updates, rel=0.01)
  assert plan.batch_sizes == batches
  assert plan.baseline_total_steps == 200 * CIFAR_N // kwargs.get("batch_size", 128)


def test_cifar_section_5_2_learning_rates():
  # past the cap the learning rate takes the rest: 0.1 * 5120 / 16000 = 0.032
  plan = cifar(strategy="hybrid", max_batch_size=5120)
  assert [p.learning_rate for p in plan.phases] == pytest.approx([0.1, 0.1, 0.1, 0.032])
  plan = cifar(strategy="hybrid", max_batch_size=5120, learning_rate=0.5, batch_size=640)
  assert [p.learning_rate for p in plan.phases] == pytest.approx([0.5, 0.5, 0.16, 0.032])


def test_cifar_section_5_1():
  decay = cifar(strategy="decay_lr")
  hybrid = cifar(strategy="hybrid", max_batch_size=640)
  increase = cifar(strategy="increase_batch")
  assert [p.learning_rate for p in decay.phases] == pytest.approx([0.1, 0.02, 0.004, 0.0008])
  assert [p.batch_size for p in hybrid.phases] == [128, 640, 640, 640]
  assert [p.learning_rate for p in hybrid.phases] == pytest.approx([0.1, 0.1, 0.02, 0.004])
  assert [p.batch_size for p in increase.phases] == [128, 640, 3200, 16000]
  assert [p.learning_rate for p in increase.phases] == pytest.approx([0.1] * 4)
  # 23,438 + 140 epochs at 640 (10,937.5 steps from 0 to 200 epochs, but the first phase
  # ended 64 examples late): 10,937 ends 256 examples short, 10,938 would pass by 384
  assert hybrid.total_steps == 23_438 + 10_937
  # 23,438 + 4,688 + 625 + 125: the last step passes the budget by 384 of its 16,000
  assert increase.total_steps == 23_438 + 4_688 + 625 + 125
  assert decay.saving == 1.0 and increase.saving == pytest.approx(78_125 / 28_876)


@pytest.mark.parametrize(
  "batch, lr, strategy, cap, updates",
  [
    (8192, 3.2, "decay_lr", None, 14_076),  # 90 epochs at 8192
    (8192, 3.2, "hybrid", 16384, 9_384),  # 8192 for 30 epochs, then 16384
    (16384, 6.4, "decay_lr", None, 7_038),  # 16384 from the start
  ],
)
def test_resnet50_recipes(batch, lr, strategy, cap, updates):
  plan = bb.plan_phases(
    dataset_size=IMAGENET_N,
    epochs=90,
    learning_rate=lr,
    momentum=0.9,
    batch_size=batch,
    schedule=GOYAL,
    strategy=strategy,
    max_batch_size=cap,
    batch_multiple=256,
  )
  assert plan.total_steps == updates
  if strategy == "hybrid":
    assert [(p.start_epoch, p.batch_size) for p in plan.phases] == [
      (0, 8192),
      (5, 8192),
      (30, 16384),
      (60, 16384),
      (80, 16384),
    ]
    assert [p.learning_rate for p in plan.phases[2:]] == pytest.approx([0.64, 0.064, 0.0064])


@pytest.mark.parametrize(
  "momentum, batch, cap, bound",
  [
    (0.9, 8192, 81920, 6_000),  # increasing batch: < 6,000
    (0.9, 8192, 65536, 6_000),  # capped: just under 6,000
    (0.95, 16384, 65536, 3_500 * 1.01),  # ~3,500
    (0.975, 32768, 65536, 2_500),  # < 2,500
  ],
)
def test_inception_resnet_v2_recipes(momentum, batch, cap, bound):
  plan = bb.plan_phases(
    dataset_size=IMAGENET_N,
    epochs=90,
    learning_rate=3.0,
    momentum=momentum,
    batch_size=batch,
    schedule=INCEPTION_STEPS,
    strategy="hybrid",
    max_batch_size=cap,
    batch_multiple=512,
  )
  assert plan.total_steps < bound
  assert plan.phases[1].batch_size == cap
  decay = bb.plan_phases(
    dataset_size=IMAGENET_N,
    epochs=90,
    learning_rate=3.0,
    momentum=0.9,
    batch_size=8192,
    schedule=INCEPTION_STEPS,
    strategy="decay_lr",
  )
  assert decay.total_steps == pytest.approx(14_000, rel=0.01)


def test_boundaries_fall_where_the_baselines_do():
  plan = cifar(strategy="hybrid", max_batch_size=5120)
  for phase, following in zip(plan.phases, plan.phases[1:] + (None,)):
    # the first example of a phase is the first at or after its boundary
    boundary = round(phase.start_epoch * CIFAR_N)
    assert boundary <= phase.first_example < boundary + phase.batch_size
    if following is not None:
      assert following.first_step == phase.end_step
      assert following.first_example == phase.first_example + phase.steps * phase.batch_size
  assert plan.phases[-1].first_example + plan.phases[-1].steps * 5120 >= 200 * CIFAR_N
  assert sum(p.baseline_steps for p in plan.phases) == plan.baseline_total_steps


def test_plan_schedules_switch_exactly_at_phase_boundaries():
  plan = cifar(strategy="hybrid", max_batch_size=5120)
  lr, batch = plan.schedule("learning_rate"), plan.schedule("batch_size")
  for before, phase in zip(plan.phases, plan.phases[1:]):
    assert float(lr(phase.first_step - 1)) == pytest.approx(before.learning_rate)
    assert float(lr(phase.first_step)) == pytest.approx(phase.learning_rate)
    assert int(batch(phase.first_step - 1)) == before.batch_size
    assert int(batch(phase.first_step)) == phase.batch_size
    assert plan.phase_at(phase.first_step - 1) is before
    assert plan.phase_at(phase.first_step) is phase


def test_noise_deviation_approx_vs_exact():
  approx = cifar(strategy="increase_batch")
  # the approx rule multiplies B by 5 per drop; the exact noise then falls short:
  # (N/16000 - 1) / ((N/128 - 1) / 125) - 1 at the last phase
  expected = (CIFAR_N / 16000 - 1) / ((CIFAR_N / 128 - 1) / 125) - 1
  assert approx.phases[-1].noise_deviation == pytest.approx(expected)
  assert approx.phases[-1].noise_deviation < -0.3
  exact = cifar(strategy="increase_batch", noise_rule="exact", batch_multiple=1)
  assert max(abs(d) for d in exact.noise_deviations) < 1e-9
  # the exact rule needs a smaller batch for the same noise scale
  assert exact.phases[-1].batch_size < 16000
  assert exact.phases[-1].batch_size == int(CIFAR_N / ((CIFAR_N / 128 - 1) / 125 + 1))


CONTINUOUS = {
  "warmup_cosine": make_schedule("cosine", 200, warmup_epochs=5),
  "exponential": make_schedule("exponential", 200, rate=0.98),
  "sgdr": make_schedule("sgdr", 200, cycle_epochs=50, final_fraction=0.01),
  "one_cycle": make_schedule("one_cycle", 200, momentum_range=(0.85, 0.95)),
  "inverse_sqrt": make_schedule("inverse_sqrt", 200, warmup_epochs=10),
}


@pytest.mark.parametrize("name", CONTINUOUS)
def test_exact_rule_tracks_the_baseline_noise_at_every_step(name):
  plan = bb.plan_phases(
    dataset_size=CIFAR_N,
    epochs=200,
    learning_rate=0.1,
    momentum=0.9,
    batch_size=128,
    schedule=CONTINUOUS[name],
    strategy="hybrid",
    max_batch_size=4096,
    batch_multiple=64,
    noise_rule="exact",
    min_phase_epochs=10,
  )
  assert len(plan.batch_sizes) > 2, "the batch should grow"
  assert list(plan.batch_sizes) == sorted(plan.batch_sizes)
  steps = jnp.arange(plan.total_steps)
  lr = np.asarray(plan.schedule("learning_rate")(steps), np.float64)
  m = np.asarray(plan.schedule("momentum")(steps), np.float64)
  batch = np.asarray(plan.schedule("batch_size")(steps), np.float64)
  first_example = np.concatenate(
    [p.first_example + np.arange(p.steps) * p.batch_size for p in plan.phases]
  )
  base_lr, base_m = plan.baseline_at(first_example / CIFAR_N)
  np.testing.assert_allclose(m, base_m, rtol=1e-6)
  g = lr * (CIFAR_N / batch - 1) / (1 - m)
  g_base = base_lr * (CIFAR_N / 128 - 1) / (1 - base_m)
  np.testing.assert_allclose(g, g_base, rtol=2e-5, atol=1e-6 * g_base.max())
  if name != "sgdr":  # a restart at a grown batch is a rise: lr goes above the peak
    # the batch takes the drops: the learning rate never exceeds the baseline's peak
    assert lr.max() <= 0.1 * (1 + 1e-6)
  # phases cut from a continuous schedule (not at its jumps) last min_phase_epochs
  forced = {0.0, *CONTINUOUS[name].breakpoints()}
  for phase in plan.phases:
    if phase.start_epoch not in forced:
      assert phase.end_epoch - phase.start_epoch >= 10 - 1e-9


def test_rises_are_taken_by_the_learning_rate():
  plan = bb.plan_phases(
    dataset_size=CIFAR_N,
    epochs=200,
    learning_rate=0.1,
    momentum=0.9,
    batch_size=128,
    schedule=CONTINUOUS["sgdr"],
    strategy="hybrid",
    max_batch_size=4096,
    batch_multiple=64,
    min_phase_epochs=10,
  )
  restart = next(p for p in plan.phases if p.start_epoch == 100)
  before = plan.phases[restart.index - 1]
  assert restart.batch_size == before.batch_size  # the batch never shrinks
  assert restart.learning_rate > 5 * before.final_learning_rate
  # warm-up: batch held, learning rate rises within the phase
  warm = bb.plan_phases(
    dataset_size=IMAGENET_N,
    epochs=90,
    learning_rate=3.2,
    momentum=0.9,
    batch_size=8192,
    schedule=GOYAL,
    strategy="hybrid",
    max_batch_size=65536,
  )
  assert warm.batch_sizes == (8192, 65536)
  assert warm.phases[1].start_epoch == 5 and warm.phases[1].batch_size == 8192
  assert warm.phases[0].learning_rate == pytest.approx(0.1)
  # the last warm-up step (781) starts at epoch 781 * 8192 / N, short of epoch 5
  last_epoch = 781 * 8192 / IMAGENET_N
  assert warm.phases[0].steps == 782
  assert warm.phases[0].final_learning_rate == pytest.approx(0.1 + 3.1 * last_epoch / 5)


def test_to_dict_has_the_json_fields():
  data = cifar(strategy="hybrid", max_batch_size=5120).to_dict()
  assert data["total_steps"] == 29_142 and data["baseline_total_steps"] == 78_125
  keys = {
    "start_epoch",
    "end_epoch",
    "batch_size",
    "learning_rate",
    "momentum",
    "steps",
    "noise_scale",
  }
  assert all(keys <= set(p) for p in data["phases"])
  assert [p["batch_size"] for p in data["phases"]] == [128, 640, 3200, 5120]


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"batch_size": 60_000, "batch_multiple": 1}, "batch_size: 60000 is larger than the dataset"),
    ({"learning_rate": 0.0}, "learning_rate: must be > 0"),
    ({"learning_rate": -1.0}, "learning_rate: must be > 0"),
    ({"momentum": 1.0}, r"momentum: must be in \[0, 1\)"),
    ({"momentum": -0.1}, r"momentum: must be in \[0, 1\)"),
    ({"strategy": "hybrid", "max_batch_size": 64}, "max_batch_size: 64 is below"),
    ({"strategy": "hybrid", "max_batch_size": 1000}, "max_batch_size: 1000 is not a multiple"),
    ({"strategy": "hybrid"}, "max_batch_size: strategy 'hybrid' needs a cap"),
    ({"strategy": "increase_batch", "max_batch_size": 5120}, "increase_batch needs batch"),
    ({"strategy": "grow"}, "strategy: 'grow' is not one of"),
    ({"noise_rule": "rough"}, "noise_rule: 'rough' is not one of"),
    ({"batch_size": 100}, "batch_size: 100 is not a multiple of batch_multiple=128"),
    ({"min_phase_epochs": 0.0}, "min_phase_epochs"),
  ],
)
def test_errors_name_the_field(kwargs, match):
  with pytest.raises(bb.PlanError, match=match):
    cifar(**kwargs)


def test_increase_batch_refuses_to_pass_the_dataset():
  with pytest.raises(bb.PlanError, match="above the dataset size 50,000; use strategy 'hybrid'"):
    cifar(strategy="increase_batch", batch_size=640)  # 640 * 125 = 80,000 > N


def test_a_ramp_sets_the_batch_and_the_rate_keeps_the_noise_on_the_baseline():
  schedule = make_schedule("step", 20, boundaries=(12.0,), factor=4.0)
  common = dict(dataset_size=50_000, epochs=20, learning_rate=0.1, batch_size=32, momentum=0.9,
                schedule=schedule, strategy="ramp", ramp=((2.0, 64), (5.0, 128)))  # fmt: skip
  sgd = bb.plan_phases(**common)
  assert [(p.start_epoch, p.batch_size) for p in sgd.phases] == [
    (0.0, 32), (2.0, 64), (5.0, 128), (12.0, 128)
  ]  # fmt: skip
  # SGD's g-rule: batch x k takes lr x k; after the decay by 4, a quarter of that
  assert [p.learning_rate for p in sgd.phases] == pytest.approx([0.1, 0.2, 0.4, 0.1])
  adam = bb.plan_phases(**common, adam_rule="sqrt", b2=0.95, eps=1e-8)
  assert [p.learning_rate for p in adam.phases] == pytest.approx(
    [0.1, 0.1 * 2**0.5, 0.2, 0.05]
  )  # fmt: skip
  # the steps: each phase's examples at its batch, rounded up (16 examples late at epoch 5,
  # 96 at epoch 12), the last's nearest the budget: 399,904 / 128 = 3,124.25
  assert [p.steps for p in sgd.phases] == [3_125, 2_344, 2_735, 3_124]


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"ramp": ((5.0, 64), (2.0, 128))}, "ramp: epoch 2 is not in (5, 20)"),
    ({"ramp": ((2.0, 16),)}, "ramp: batch 16 must be a multiple of 1 from 32"),
    ({"ramp": ()}, "ramp: strategy 'ramp' needs (epoch, batch) pairs"),
    ({"ramp": ((2.0, 64),), "strategy": "increase_batch"}, "ramp: only with strategy 'ramp'"),
  ],
)
def test_a_bad_ramp_is_named(changes, message):
  options = dict(dataset_size=50_000, epochs=20, learning_rate=0.1, batch_size=32,
                 strategy="ramp")  # fmt: skip
  with pytest.raises(bb.PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
    bb.plan_phases(**{**options, **changes})


def test_the_note_on_a_batch_far_above_b_simple_shows_its_figures_as_measured():
  from bigbatch.plan import noise

  # a language model's B_simple in sequences is under 1: not rounded to "0, at most 1"
  small = noise.batch_above_noise_scale_note(2, 128, 0.94, 0.751)
  assert "B_simple (0.751, at most 0.94)" in small and "136.2x the upper bound" in small
  assert "at least 137.2x the minimum examples" in small  # 1 + 128 / 0.94
  large = noise.batch_above_noise_scale_note(3, 8192, 512.4, 300.2)
  assert "B_simple (300, at most 512)" in large and "16.0x the upper bound" in large
