"""Adam's rules when the batch changes: each plan value against the formulas by hand."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch import optim, plan_phases
from bigbatch.plan import adam_rules, adaptive, report
from bigbatch.schedules import make_schedule
from bigbatch.spec import ConfigError, RunSpec

N, B0, LR, B1, B2, EPS = 50_000, 128, 1e-3, 0.9, 0.999, 1e-8
# CIFAR-10's steps: the rate / 5 at epochs 60, 120, 160
SCHEDULE = make_schedule("step", 200, boundaries=(60.0, 120.0, 160.0), factor=5.0)


def adam_plan(rule, **changes):
  options = dict(
    dataset_size=N, epochs=200, learning_rate=LR, batch_size=B0, momentum=B1,
    schedule=SCHEDULE, strategy="increase_batch", adam_rule=rule, b2=B2, eps=EPS,
  )  # fmt: skip
  return plan_phases(**{**options, **changes})


def by_hand(rule, k, baseline_lr):
  """(lr, b1, b2, eps) at batch ratio k where the baseline's rate is `baseline_lr`."""
  lr = baseline_lr * (math.sqrt(k) if rule in ("sqrt", "sde") else k)
  if rule == "sde":
    return lr, max(1 - k * (1 - B1), 0.0), max(1 - k * (1 - B2), 0.0), EPS / math.sqrt(k)
  if rule == "beta2_halflife":
    return lr, B1, B2**k, EPS
  return lr, B1, B2, EPS


@pytest.mark.parametrize("rule", adam_rules.ADAM_RULES)
def test_each_rule_sets_lr_betas_and_eps_by_its_formula(rule):
  plan = adam_plan(rule)
  assert [p.batch_size for p in plan.phases] == [128, 640, 3200, 16000]
  for index, phase in enumerate(plan.phases):
    k = phase.batch_size / B0  # 5^index: each decay of 5 taken by the batch
    lr, b1, b2, eps = by_hand(rule, k, LR / 5**index)
    assert phase.learning_rate == pytest.approx(lr, rel=1e-9)
    assert (phase.momentum, phase.b2, phase.eps) == pytest.approx((b1, b2, eps), rel=1e-9)
    # the schedules the optimizer reads give the same values inside the phase
    middle = phase.first_step + phase.steps // 2
    assert float(plan.schedule("b2")(middle)) == pytest.approx(b2, rel=1e-6)
    assert float(plan.schedule("momentum")(middle)) == pytest.approx(b1, rel=1e-6, abs=1e-7)


def test_seesaw_divides_the_rate_by_the_root_of_each_decay():
  # sqrt: where the baseline divides the rate by 5, batch x 5 and lr / sqrt(5)
  lrs = [p.learning_rate for p in adam_plan("sqrt").phases]
  assert lrs == pytest.approx([LR / 5 ** (i / 2) for i in range(4)])
  # SGD (no rule) holds it, as the paper's rule
  assert [p.learning_rate for p in adam_plan(None, b2=None, eps=None).phases] == [LR] * 4


def test_past_the_cap_the_rate_takes_the_rest_under_the_square_root_rule():
  plan = adam_plan("sqrt", strategy="hybrid", max_batch_size=640)
  assert [p.batch_size for p in plan.phases] == [128, 640, 640, 640]
  # at the cap, k = 5: the baseline's rate (LR / 25, LR / 125) times sqrt(5)
  lrs = [p.learning_rate for p in plan.phases]
  assert lrs == pytest.approx([LR, LR / 5 * 5**0.5, LR / 25 * 5**0.5, LR / 125 * 5**0.5])


def test_the_noise_column_holds_the_quantity_each_rule_keeps():
  for rule, power in (("paper", 1.0), ("sqrt", 0.5)):
    for phase in adam_plan(rule, noise_rule="exact").phases:
      g = phase.learning_rate * (N / phase.batch_size - 1) ** power / (1 - B1)
      assert phase.noise_scale == pytest.approx(g)
  # exact under sqrt: lr sqrt(N/B - 1) follows the baseline's at each phase's start
  deviations = [p.noise_deviation for p in adam_plan("sqrt", noise_rule="exact").phases]
  assert max(abs(d) for d in deviations) < 0.01


def test_the_plan_table_shows_b1_b2_and_eps_and_where_sde_clips():
  text = report.format_plan(adam_plan("sde"))
  header = next(line for line in text.splitlines() if line.startswith("phase"))
  assert header.split()[3:7] == ["lr", "β1", "β2", "ε"]
  row = next(line for line in text.splitlines() if line.split()[:1] == ["1"])
  assert row.split()[3:7] == ["0.0004472", "0.5", "0.995", "4.47e-09"]
  assert "clipped at 0" in text and "phase(s) 2, 3" in text
  assert "lr sqrt(N/B - 1)" in text
  sgd = report.format_plan(adam_plan(None, b2=None, eps=None))
  assert "momentum" in sgd and "β2" not in sgd


def test_b2_and_eps_join_the_optimizer_state_only_where_the_rule_moves_them():
  params = {"w": jnp.ones((3,))}
  moved = optim.adam(
    adam_plan("sde"), b1=adam_plan("sde"), b2=adam_plan("sde"), eps=adam_plan("sde")
  )
  assert {"b2", "eps"} <= set(moved.init(params).hyperparams)
  fixed = optim.adam(adam_plan("sqrt"), b1=adam_plan("sqrt"), b2=B2, eps=EPS)
  assert {"b2", "eps"}.isdisjoint(fixed.init(params).hyperparams)


def test_b2_and_eps_in_the_state_give_optaxs_own_update():
  params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  grads = {"w": jnp.asarray([0.3, -0.1, 0.2])}
  ours = optim.adam(0.1, b1=0.5, b2=lambda count: 0.995, eps=lambda count: 4e-9)
  theirs = optax.adam(0.1, b1=0.5, b2=0.995, eps=4e-9)
  a, b = ours.init(params), theirs.init(params)
  for _ in range(3):
    (ua, a), (ub, b) = ours.update(grads, a, params), theirs.update(grads, b, params)
    np.testing.assert_allclose(ua["w"], ub["w"], rtol=1e-6)


def settings(rule, **changes):
  return adaptive.Settings(strategy="noise", factor=5.0, adam_rule=rule, **changes)


def phase_of(batch, lr=0.1, b1=B1, b2=B2, eps=EPS):
  plan = adam_plan("paper", batch_size=batch, learning_rate=lr, strategy="decay_lr")
  return dataclasses.replace(plan.phases[0], momentum=b1, b2=b2, eps=eps)


def test_a_decision_follows_the_rule():
  sqrt = adaptive.next_phase(settings("sqrt"), phase_of(32), N)
  assert (sqrt.batch_size, sqrt.learning_rate) == (160, pytest.approx(0.1 * 5**0.5 / 5))
  assert (sqrt.b1, sqrt.b2, sqrt.eps, sqrt.surge) == (None, None, None, False)
  sde = adaptive.next_phase(settings("sde"), phase_of(32), N)
  assert (sde.b1, sde.b2, sde.eps) == pytest.approx((0.5, 1 - 5 * 0.001, EPS / 5**0.5))
  halflife = adaptive.next_phase(settings("beta2_halflife"), phase_of(32), N)
  assert halflife.learning_rate == pytest.approx(0.1) and halflife.b2 == pytest.approx(B2**5)
  # SGD's (no rule): the rate held while the batch takes the factor, as before
  sgd = adaptive.next_phase(settings(None), phase_of(32), N, b_simple=40.0)
  assert (sgd.batch_size, sgd.learning_rate, sgd.surge) == (160, pytest.approx(0.1), False)


def test_surge_no_rise_of_the_rate_past_the_measured_noise_scale():
  s = settings("sqrt")
  # B_simple 64: only 32 -> 64 of the batch's x5 raises the rate (by sqrt(2))
  capped = adaptive.next_phase(s, phase_of(32), N, b_simple=64.0)
  assert capped.batch_size == 160 and capped.surge
  assert capped.learning_rate == pytest.approx(0.1 * 2**0.5 / 5)
  # already past it: no rise at all, the whole factor from the rate
  past = adaptive.next_phase(s, phase_of(320), N, b_simple=100.0)
  assert past.learning_rate == pytest.approx(0.1 / 5) and past.surge
  # far below it: the rule's full rise
  below = adaptive.next_phase(s, phase_of(32), N, b_simple=1e6)
  assert below.learning_rate == pytest.approx(0.1 / 5**0.5) and not below.surge


def test_surge_caps_the_rate_only_at_a_resolved_noise_scale():
  """A decision of the noise rule at an evaluation: only a resolved B_simple (interval
  closed) caps the rate's rise; a lower bound alone says nothing of where B_simple is."""
  s = settings("sqrt", noise_ratio=1.0, min_phase_epochs=0.0)
  phase = phase_of(32)

  def decide(value, low, high):
    policy = adaptive.Policy(s, N, None)
    values = {"grad_noise_scale": value, "grad_noise_scale_low": low,
              "grad_noise_scale_high": high}  # fmt: skip
    return policy.decide(10, 320, phase, values)

  # |G|^2 not resolved: B_simple >= 2.5 only, far above the batch; the full sqrt(5) rise
  unresolved = decide(float("nan"), 2.5, float("inf"))
  assert unresolved.batch_size == 160 and "not resolved" in unresolved.reason
  assert unresolved.learning_rate == pytest.approx(0.1 * 5**0.5 / 5)
  assert "Surge" not in unresolved.reason
  # resolved at 64 [40, 100] with its lower bound past the batch: the rise stops at 64
  resolved = decide(64.0, 40.0, 100.0)
  assert resolved.batch_size == 160 and resolved.reason.endswith("(Surge)")
  assert resolved.learning_rate == pytest.approx(0.1 * 2**0.5 / 5)


def test_decisions_rebuild_the_phases_with_their_betas():
  initial = adaptive.initial_plan(adam_plan("sde", strategy="decay_lr"), "noise", LR)
  decision = adaptive.Decision(10, 1280, 640, 4e-4, "test", None, 0.5, 0.995, 4e-9)
  rebuilt = adaptive.plan_from_decisions(initial, [decision])
  last = rebuilt.phases[-1]
  assert (last.momentum, last.b2, last.eps, last.learning_rate) == (0.5, 0.995, 4e-9, 4e-4)
  assert float(rebuilt.schedule("b2")(last.first_step)) == pytest.approx(0.995)
  # a decision recorded before the Adam fields existed reads with none of them
  old = {k: v for k, v in decision.to_dict().items() if k not in ("b1", "b2", "eps")}
  assert adaptive.Decision.from_dict(old).b2 is None


def test_the_rule_is_checked_by_name_and_only_for_adam():
  base = {"num_epochs": 1, "batch_size": 32, "schedule": {"name": "constant"},
          "model": {"name": "mlp"}, "dataset": {"name": "mnist1d", "num_train_examples": 64}}  # fmt: skip
  adam = {"name": "adamw", "learning_rate": 1e-3}
  with pytest.raises(ConfigError, match=r"^plan\.adam_rule: 'cube' is not one of paper, sqrt"):
    RunSpec.read({**base, "optimizer": adam, "plan": {"adam_rule": "cube"}})
  sgd = {"name": "sgd_momentum", "learning_rate": 0.1}
  with pytest.raises(ConfigError, match=r"^plan\.adam_rule: only for the adaptive family \(adam, "):
    RunSpec.read({**base, "optimizer": sgd, "plan": {"adam_rule": "sqrt"}})
  assert RunSpec.read({**base, "optimizer": adam, "plan": {"adam_rule": "sde"}}).plan.adam_rule


def test_a_rules_moving_b1_follows_the_schedules_momentum_inside_a_phase():
  rule = adam_rules.rule("sde")
  assert float(rule.momentum(5.0, jnp.asarray(0.9))) == pytest.approx(0.5)
  assert float(rule.momentum(20.0, jnp.asarray(0.9))) == 0.0  # clipped
  assert jax.jit(lambda m: rule.momentum(2.0, m))(0.95) == pytest.approx(0.9)
