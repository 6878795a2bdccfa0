"""Phases decided while training: the rules by hand, and a run that decides, stops and resumes."""

import dataclasses
import signal

import pytest
from small_run import metrics_rows, small_config, start

from bigbatch import config as bbconfig
from bigbatch import train as bbtrain
from bigbatch.plan import adaptive
from bigbatch.train import data_position
from bigbatch.workdir import checkpoint as ckpt

# The small run (1,024 examples, batch 32, 3 epochs) deciding at every half epoch.
PLATEAU = {
  "plan.strategy": "plateau",
  "plan.max_batch_size": 800,
  "plan.adapt.patience": 0,
  "plan.adapt.threshold": 0.2,  # a 20% better smoothed loss every half epoch, or grow
  "eval_every_epochs": 0.5,
}


def settings(**changes):
  return adaptive.Settings(**{"strategy": "plateau", "batch_multiple": 32, **changes})


def phase_of(batch_size, learning_rate=0.1, first_example=0):
  config = small_config(None, **{"batch_size": batch_size, "plan.strategy": "decay_lr"})
  plan = adaptive.initial_plan(bbconfig.plan_from_config(config), "plateau", learning_rate)
  return dataclasses.replace(plan.phases[0], first_example=first_example)


def test_plateau_follows_reduce_lr_on_plateau():
  """PyTorch's rule: improve by more than the threshold, or count; act past `patience`."""
  policy = adaptive.Policy(settings(patience=1, threshold=0.1, cooldown=1), 1024, None)
  seen = [policy._plateau(v) for v in [1.0, 0.85, 0.80, 0.79, 0.78, 0.78, 0.78, 0.78]]
  # 0.85 improves on 1.0 by more than 10%; 0.80 and 0.79 do not: the second is past
  # patience 1; then one evaluation of cooldown, then two more without improvement
  assert seen == [False, False, False, True, False, False, True, False]
  # Keras's min_delta, in mode max: 0.54 is not 0.05 better than 0.5; 0.56 is
  policy = adaptive.Policy(
    settings(mode="max", threshold=0.0, min_delta=0.05, patience=0), 1024, None
  )
  assert [policy._plateau(v) for v in [0.5, 0.54, 0.56, 0.70]] == [False, True, False, False]


def next_change(*args):
  """`adaptive.next_phase`'s batch and learning rate (None: no change)."""
  change = adaptive.next_phase(*args)
  return None if change is None else (change.batch_size, change.learning_rate)


def test_a_decision_lowers_the_noise_scale_by_the_factor():
  s = settings(factor=5.0, max_batch_size=800)
  assert next_change(s, phase_of(32), 1024) == (160, pytest.approx(0.1))
  # 160 x 5 = 800, the cap: the batch takes it all
  assert next_change(s, phase_of(160), 1024) == (800, pytest.approx(0.1))
  # at the cap the learning rate takes the whole factor
  assert next_change(s, phase_of(800), 1024) == (800, pytest.approx(0.02))
  # a cap of 640 takes 4 of the 5: the learning rate the remaining 5/4
  capped = settings(factor=5.0, max_batch_size=640)
  assert next_change(capped, phase_of(160), 1024) == (640, pytest.approx(0.08))
  classic = settings(strategy="plateau_lr", factor=10.0, min_learning_rate=0.005)
  assert next_change(classic, phase_of(32), 1024) == (32, pytest.approx(0.01))
  assert next_change(classic, phase_of(32, 0.01), 1024) == (32, pytest.approx(0.005))
  assert next_change(classic, phase_of(32, 0.005), 1024) is None


def measured(value, low, high):
  """A step's noise metrics as the step reports them (NaN: unknown, inf: unbounded)."""
  return {
    "grad_noise_scale": value,
    "grad_noise_scale_low": low,
    "grad_noise_scale_high": high,
  }


def test_the_noise_rule_grows_when_the_lower_bound_passes_the_batch():
  s = settings(strategy="noise", factor=2.0, noise_ratio=1.0, min_phase_epochs=1.0)
  policy = adaptive.Policy(s, 1024, None)
  phase = phase_of(32)
  sure = measured(500.0, 400.0, 700.0)
  assert policy.decide(10, 512, phase, sure) is None  # the phase is too short
  assert policy.decide(40, 1280, phase, measured(20.0, 15.0, 26.0)) is None  # B_simple < B
  # the estimate is above the batch but its interval reaches below it: not yet
  assert policy.decide(40, 1280, phase, measured(500.0, 20.0, 4000.0)) is None
  decision = policy.decide(40, 1280, phase, sure)
  assert (decision.batch_size, decision.learning_rate) == (64, pytest.approx(0.1))
  assert decision.measurement == 400.0 and "lower bound" in decision.reason
  # the predicted saving of steps at B_noise = the lower bound, (1 + 400/32) / (1 + 400/64)
  # - 1 = 0.86, passes 5%; at 33 it is (1 + 33/32) / (1 + 33/64) - 1 = 0.34, and a
  # min_gain of 0.5 refuses
  strict = adaptive.Policy(settings(strategy="noise", factor=2.0, min_gain=0.5), 1024, None)
  assert strict.decide(40, 1280, phase, measured(40.0, 33.0, 50.0)) is None


def test_the_noise_rule_grows_where_the_gradient_never_stands_out_of_its_noise():
  """|G|^2 not resolved at any evaluation of a phase (only a lower bound, here below the
  batch): B_simple is far above the batch, so the batch grows; a negative point estimate
  (which the rule once read as "do not grow") is never a value here."""
  nan, inf = float("nan"), float("inf")
  s = settings(strategy="noise", factor=2.0, noise_ratio=1.0, min_phase_epochs=1.0)
  phase = phase_of(32)
  policy = adaptive.Policy(s, 1024, None)
  assert policy.decide(10, 512, phase, measured(nan, 12.0, inf)) is None  # too short
  decision = policy.decide(40, 1280, phase, measured(nan, 12.0, inf))
  assert decision.batch_size == 64 and "not resolved" in decision.reason
  assert decision.measurement == 12.0
  # once resolved in the phase, a later unresolved evaluation alone does not grow it
  policy = adaptive.Policy(s, 1024, None)
  assert policy.decide(10, 512, phase, measured(20.0, 12.0, 30.0)) is None
  assert policy.decide(40, 1280, phase, measured(nan, 12.0, inf)) is None
  # nothing known (tr(S) not resolved either) is no reason to grow
  policy = adaptive.Policy(s, 1024, None)
  assert policy.decide(40, 1280, phase, measured(nan, nan, nan)) is None
  # the phase's record travels in the checkpoint: a resumed policy decides the same
  policy = adaptive.Policy(s, 1024, None)
  assert policy.decide(10, 512, phase, measured(20.0, 12.0, 30.0)) is None
  resumed = adaptive.Policy(s, 1024, policy.state_dict())
  assert resumed.decide(40, 1280, phase, measured(nan, 12.0, inf)) is None


def test_the_plan_is_a_function_of_the_decisions():
  config = small_config(None, **PLATEAU)
  initial = bbconfig.plan_from_config(config)
  assert initial.strategy == "plateau" and initial.total_steps == 3 * 1024 // 32
  decisions = [
    adaptive.Decision(40, 1280, 160, 0.1, "r", 1.0),
    adaptive.Decision(46, 2240, 800, 0.1, "r", 1.0),
  ]
  plan = adaptive.plan_from_decisions(initial, decisions)
  assert [(p.first_step, p.steps, p.batch_size, p.first_example) for p in plan.phases] == [
    (0, 40, 32, 0),
    (40, 6, 160, 1280),
    (46, 1, 800, 2240),  # 3,072 - 2,240 = 832 examples: one batch of 800 is the nearest
  ]
  assert data_position(plan, 46) == 2240 and data_position(plan, 47) == 3040


@pytest.fixture(scope="module")
def decided(data_dir, tmp_path_factory):
  """An uninterrupted plateau run."""
  workdir = tmp_path_factory.mktemp("plateau")
  summary = bbtrain.train_and_evaluate(small_config(data_dir, **PLATEAU), workdir, progress=False)
  return workdir, summary


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_plateau_run_grows_the_batch_then_the_learning_rate_takes_the_rest(decided):
  workdir, summary = decided
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  record = checkpoints.record(checkpoints.latest_step())
  checkpoints.close()
  decisions = record["policy"]["decisions"]
  batches = [32] + [d["batch_size"] for d in decisions]
  assert batches[:3] == [32, 160, 800] and set(batches[3:]) <= {800}
  assert all(d["learning_rate"] < 0.1 for d in decisions[2:])  # at the cap
  logged = [r for r in metrics_rows(workdir) if "decision_batch_size" in r]
  assert [r["step"] for r in logged] == [d["step"] for d in decisions]
  assert summary["status"] == "completed" and summary["updates"] == summary["step"]
  assert [p["batch_size"] for p in summary["phases"]][:3] == [32, 160, 800]
  assert summary["step"] < 3 * 1024 // 32  # fewer updates than the fixed batch


def test_a_stop_right_after_a_decision_resumes_to_the_same_run(decided, data_dir, tmp_path):
  workdir, _ = decided
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  final = checkpoints.record(checkpoints.latest_step())
  checkpoints.close()
  first = final["policy"]["decisions"][0]["step"]
  config = small_config(data_dir, **PLATEAU)
  stopped = bbtrain.train_and_evaluate(config, tmp_path, stop_at_step=first + 1, progress=False)
  assert stopped["status"] == "preempted"
  bbtrain.train_and_evaluate(small_config(data_dir, **PLATEAU), tmp_path, progress=False)
  again = ckpt.Checkpoints(tmp_path / "checkpoints")
  record = again.record(again.latest_step())
  again.close()
  assert record["policy"]["decisions"] == final["policy"]["decisions"]
  assert record["fingerprint"] == final["fingerprint"]  # bitwise the same state


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_kill_right_after_a_decision_before_its_checkpoint_resumes_bitwise(
  decided, data_dir, tmp_path
):
  workdir, _ = decided
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  final = checkpoints.record(checkpoints.latest_step())
  checkpoints.close()
  first = final["policy"]["decisions"][0]["step"]
  flags = [f"--config.{k}={v}" for k, v in PLATEAU.items()]
  proc = start(tmp_path, data_dir, *flags, fault=f"decision@{first}", devices=8)
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL, output[-2000:]
  proc = start(tmp_path, data_dir, *flags, devices=8)
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, output[-2000:]
  again = ckpt.Checkpoints(tmp_path / "checkpoints")
  record = again.record(again.latest_step())
  again.close()
  assert record["policy"]["decisions"] == final["policy"]["decisions"]
  assert record["fingerprint"] == final["fingerprint"]
  steps = [(r["step"], k) for r in metrics_rows(tmp_path) for k in r if k != "step"]
  assert len(steps) == len(set(steps))  # each (step, metric) once


@pytest.mark.parametrize(
  "field,value,word",
  [
    ("plan.adapt.factor", 1.0, "plan.adapt.factor: must be > 1"),
    ("plan.adapt.monitor", "accuracy", "plan.adapt.monitor: must be one of"),
    ("plan.adapt.threshold_mode", "relative", "plan.adapt.threshold_mode: must be rel or abs"),
    ("plan.min_phase_epochs", -1.0, "plan.min_phase_epochs: must be >= 0"),
  ],
)
def test_bad_adaptive_fields_are_named(field, value, word):
  config = small_config(None, **{**PLATEAU, field: value})
  with pytest.raises(bbconfig.ConfigError, match=word.replace("[", r"\[")):
    bbconfig.plan_from_config(config)
