"""Cyclical learning rates against Smith (2015)'s formulas, alone and planned."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_flags

import bigbatch as bb
from bigbatch import cli, config
from bigbatch.schedules import make_schedule

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"
MODES = ("triangular", "triangular2", "exp_range")


def smith_clr(iteration, step_size, base_lr, max_lr, mode, gamma=1.0):
  """The paper's policy, in float64: `iteration` and `step_size` in iterations."""
  iteration = np.asarray(iteration, np.float64)
  cycle = np.floor(1 + iteration / (2 * step_size))
  x = np.abs(iteration / step_size - 2 * cycle + 1)
  if mode == "triangular":
    scale = 1.0
  elif mode == "triangular2":
    scale = 1 / (2 ** (cycle - 1))
  else:
    scale = gamma**iteration
  return base_lr + (max_lr - base_lr) * np.maximum(0, 1 - x) * scale


def test_the_formula_gives_the_papers_triangles():
  # base 1, max 5, s = 2: up 2 per step, down again, the triangular2 peak halved
  t = np.arange(9)
  np.testing.assert_allclose(smith_clr(t, 2, 1, 5, "triangular"), [1, 3, 5, 3, 1, 3, 5, 3, 1])
  np.testing.assert_allclose(smith_clr(t, 2, 1, 5, "triangular2"), [1, 3, 5, 3, 1, 2, 3, 2, 1])
  np.testing.assert_allclose(
    smith_clr(t, 2, 1, 5, "exp_range", 0.5), [1, 2, 2, 1.25, 1, 1.0625, 1.0625, 1.015625, 1]
  )


@pytest.mark.parametrize("mode", MODES)
def test_multiplier_is_smiths_formula_at_every_epoch(mode):
  s, base, gamma = 2.5, 0.2, 0.9
  schedule = make_schedule(mode, 40, step_size_epochs=s, base_fraction=base, gamma=gamma)
  corners = np.arange(17) * s  # troughs at even multiples of s, peaks at odd ones
  epochs = np.unique(
    np.concatenate([np.linspace(0, 40, 4001), corners, corners + 1e-6, corners[1:] - 1e-6])
  )
  expected = smith_clr(epochs, s, base, 1.0, mode, gamma)
  np.testing.assert_allclose(schedule.multiplier(epochs), expected, rtol=1e-12, atol=1e-12)
  # the same code in jax.numpy, as inside an optax schedule (float32)
  traced = np.asarray(schedule.multiplier(jnp.asarray(epochs, jnp.float32), jnp))
  np.testing.assert_allclose(traced, expected, rtol=2e-6, atol=2e-6)
  # at the corners themselves: the rate is base at troughs and the (scaled) peak at peaks
  at_corners = schedule.multiplier(corners)
  np.testing.assert_allclose(at_corners[::2], base, rtol=1e-12)
  amplitude = {
    "triangular": np.ones(8),
    "triangular2": 0.5 ** np.arange(8),
    "exp_range": gamma ** corners[1::2],
  }[mode]
  np.testing.assert_allclose(at_corners[1::2], base + (1 - base) * amplitude, rtol=1e-12)
  assert set(schedule.knots()) == {float(c) for c in corners}


N, B, EPOCHS, LR = 50_000, 100, 10, 0.1  # 500 iterations per epoch


@pytest.mark.parametrize("mode", MODES)
def test_decay_lr_plan_follows_the_schedule_in_iterations(mode):
  schedule = make_schedule(mode, EPOCHS, step_size_epochs=2, base_fraction=0.25, gamma=0.97)
  plan = bb.plan_phases(
    dataset_size=N,
    epochs=EPOCHS,
    learning_rate=LR,
    batch_size=B,
    momentum=0.9,
    schedule=schedule,
    strategy="decay_lr",
  )
  steps = np.arange(plan.total_steps)
  lr = np.asarray(plan.schedule("learning_rate")(jnp.asarray(steps)), np.float64)
  # Smith counts iterations: s = 2 epochs = 1,000 of them; gamma 0.97 per epoch is
  # 0.97 ** (1/500) per iteration
  expected = smith_clr(steps, 1000, LR * 0.25, LR, mode, 0.97 ** (1 / 500))
  np.testing.assert_allclose(lr, expected, rtol=1e-5, atol=LR * 1e-6)
  assert plan.batch_sizes == (B,)


def test_increasing_batch_plan_takes_falls_by_the_batch_and_rises_by_the_rate():
  plan = bb.plan_phases(
    dataset_size=N,
    epochs=EPOCHS,
    learning_rate=LR,
    batch_size=B,
    momentum=0.9,
    schedule=make_schedule("triangular2", EPOCHS, step_size_epochs=1, base_fraction=0.25),
    strategy="increase_batch",
    noise_rule="exact",
    batch_multiple=20,
    min_phase_epochs=0.1,
  )
  assert len(plan.batch_sizes) > 2 and list(plan.batch_sizes) == sorted(plan.batch_sizes)
  steps = jnp.arange(plan.total_steps)
  lr = np.asarray(plan.schedule("learning_rate")(steps), np.float64)
  batch = np.asarray(plan.schedule("batch_size")(steps), np.float64)
  first_example = np.concatenate(
    [p.first_example + np.arange(p.steps) * p.batch_size for p in plan.phases]
  )
  base_lr, _ = plan.baseline_at(first_example / N)
  # the noise scale is the baseline's at every step
  g, g_base = lr * (N / batch - 1), base_lr * (N / B - 1)
  np.testing.assert_allclose(g, g_base, rtol=2e-5, atol=1e-6 * g_base.max())
  # the batch grows only while the baseline's rate falls, and the rate takes the rises
  rising = np.diff(base_lr) > 0
  assert not np.any(rising & (np.diff(batch) != 0))
  assert np.all(np.diff(lr)[rising] > 0)
  # until the batch grows the rate stays at or below the peak; a rise after it grew
  # goes above the peak (B ∝ lr), as an SGDR restart does
  assert lr[first_example < 2 * N].max() <= LR * (1 + 1e-6)
  assert lr.max() > 2 * LR


def load(path, *overrides):
  module = config_flags.config_flags._LoadConfigModule("test_config", str(path))
  cfg = module.get_config()
  for key, value in overrides:
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return cfg


def test_bigbatch_plan_turns_a_cyclical_config_into_phases(capsys):
  path = CONFIGS / "mnist1d_decay_lr.py"
  args = ["--config.schedule.name=triangular", "--config.schedule.step_size_epochs=4"]
  assert cli.main(["plan", "--config", str(path), *args, "--json"]) == 0
  out, err = capsys.readouterr()
  assert err == ""
  printed = json.loads(out)
  assert printed["total_steps"] == 15_625 and len(printed["phases"]) == 1
  assert printed["phases"][0]["learning_rate"] == pytest.approx(0.1 * 0.25)
  # the same config in-process, per step: s = 4 epochs of 390.625 iterations each
  cfg = load(path, ("schedule.name", "triangular"), ("schedule.step_size_epochs", 4.0))
  plan = config.plan_from_config(cfg)
  steps = np.arange(plan.total_steps)
  lr = np.asarray(plan.schedule("learning_rate")(jnp.asarray(steps)), np.float64)
  expected = smith_clr(steps, 4 * 50_000 / 128, 0.025, 0.1, "triangular")
  np.testing.assert_allclose(lr, expected, rtol=1e-5, atol=1e-7)


def test_the_plan_table_shows_the_cycle_and_says_when_nothing_is_saved(capsys, tmp_path):
  """First→last would read 0.025→0.02505 over five cycles: the row gives the range the
  rate spans in the phase (every step's value) and the cycle's length instead."""
  from bigbatch.plan import report

  path = CONFIGS / "mnist1d_decay_lr.py"
  args = ["--config.schedule.name=triangular", "--config.schedule.step_size_epochs=4"]
  assert cli.main(["plan", "--config", str(path), *args, "--plot", str(tmp_path / "p.png")]) == 0
  out = capsys.readouterr().out
  cfg = load(path, ("schedule.name", "triangular"), ("schedule.step_size_epochs", 4.0))
  plan = config.plan_from_config(cfg)
  steps = np.arange(plan.total_steps)
  every = smith_clr(steps, 4 * 50_000 / 128, 0.025, 0.1, "triangular")
  row = next(line for line in out.splitlines() if line.lstrip().startswith("0  0–40"))
  assert f"0.025–{every.max():.4g}, cycle 8 ep" in row and "0.02505" not in row
  assert "updates: 15,625, as many as the baseline (none saved)" in out
  assert "fewer" not in out
  # the drawing samples each cycle 64 times, so that every peak is there
  epochs, lrs, _, _ = report._plan_curves(plan)
  peaks = [lrs[(epochs > 8 * k) & (epochs < 8 * k + 8)].max() for k in range(5)]
  assert min(peaks) > 0.098  # 12 points a cycle (64 a phase) miss a peak by up to 0.006
  # a plan that saves nothing, saves some, or spends more, in words
  saved = config.plan_from_config(load(CONFIGS / "mnist1d_increase_batch.py"))
  assert report.saving_words(saved) == f"{saved.saving:.2f}x fewer than the baseline"
  assert report.saving_words(plan) == "as many as the baseline"


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"name": "triangular"}, "schedule.step_size_epochs"),
    ({"name": "exp_range", "step_size_epochs": 2, "gamma": 1.5}, "schedule.gamma"),
    (
      {"name": "triangular2", "step_size_epochs": 2, "base_fraction": 1.0},
      "schedule.base_fraction",
    ),
    ({"name": "triangular", "step_size_epochs": 2, "warmup_epochs": 1}, "schedule.warmup_epochs"),
  ],
)
def test_cyclical_errors_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_schedule(epochs=EPOCHS, **kwargs)


def test_a_config_without_the_half_cycle_is_refused():
  cfg = load(CONFIGS / "mnist1d_decay_lr.py", ("schedule.name", "triangular"))
  with pytest.raises(config.ConfigError, match=r"schedule\.step_size_epochs: triangular needs"):
    config.plan_from_config(cfg)
