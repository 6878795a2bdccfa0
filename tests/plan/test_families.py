"""A batch-change rule per optimizer family: `sgd` keeps the g-rule; `adaptive` (Adam's kin,
LAMB, Lion, Muon, LARS, a factory that says so) takes Adam's rules, in fixed plans and in
decisions taken while training."""

import math

import jax
import jax.numpy as jnp
import pytest

from bigbatch import optim
from bigbatch.plan import adaptive
from bigbatch.spec import ConfigError, RunSpec
from bigbatch.train import build

N, B0 = 50_000, 128
BASE = {
  "num_epochs": 200,
  "batch_size": B0,
  "schedule": {"name": "step", "boundaries": (60.0, 120.0, 160.0), "factor": 5.0},
  "model": {"name": "mlp"},
  "dataset": {"name": "mnist1d", "num_train_examples": N},
}


def spec_of(optimizer, **plan):
  return RunSpec.read({**BASE, "optimizer": optimizer, "plan": plan})


@pytest.mark.parametrize(
  "optimizer",
  [
    {"name": "lars", "learning_rate": 2.0, "momentum": 0.9, "weight_decay": 1e-4},
    {"name": "lamb", "learning_rate": 2.0},
    {"name": "lion", "learning_rate": 2.0},
    {"name": "muon", "learning_rate": 2.0},
    {"name": "optax:adamw", "learning_rate": 2.0},
  ],
  ids=lambda o: o["name"],
)
def test_an_adaptive_optimizer_takes_adams_square_root_rule(optimizer):
  # Seesaw: where the baseline divides the rate by 5, the batch x 5 and the rate / sqrt(5)
  plan = build.plan_of(spec_of(optimizer, strategy="increase_batch", adam_rule="sqrt"))
  assert [p.batch_size for p in plan.phases] == [128, 640, 3200, 16000]
  assert [p.learning_rate for p in plan.phases] == pytest.approx(
    [2.0 / 5 ** (i / 2) for i in range(4)]
  )
  # unset: the paper's (its section 5.1 ran Adam on SGD's batch steps): the rate held
  held = build.plan_of(spec_of(optimizer, strategy="increase_batch"))
  assert [p.learning_rate for p in held.phases] == [2.0] * 4
  # the optimizer the config builds takes the plan's rate in its first phase
  spec = spec_of(optimizer, strategy="increase_batch", adam_rule="sqrt")
  tx = build.optimizer_of(spec, plan)
  params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert float(optim.current_hyperparams(state)["learning_rate"]) == pytest.approx(2.0)


def test_lars_is_of_the_adaptive_family_and_why():
  # its per-layer step, lr eta ||w|| (g + wd w) / (||g|| + wd ||w||), keeps its length
  # whatever the gradient's scale: the normalised update Seesaw's sqrt(k) is argued for
  assert optim.FAMILY["lars"] == "adaptive"
  tx = optim.lars(1.0, 0.0, weight_decay_mask=None, trust_mask=None)
  w = {"kernel": jnp.ones((4, 4))}
  steps = [tx.update({"kernel": s * jnp.arange(16.0).reshape(4, 4)}, tx.init(w), w)[0]
           for s in (1.0, 100.0)]  # fmt: skip
  assert float(jnp.linalg.norm(steps[0]["kernel"])) == pytest.approx(
    float(jnp.linalg.norm(steps[1]["kernel"])), rel=1e-5
  )
  # MLPerf's two LARS recipes: 32k -> 64k moved lr / (1 - m) by 1.22, near sqrt(2), not 2
  ratio = (23.08 / (1 - 0.9537)) / (29.0 / (1 - 0.929))
  assert abs(math.log(ratio) - math.log(math.sqrt(2))) < abs(math.log(ratio) - math.log(2))


@pytest.mark.parametrize(
  "optimizer, rule, message",
  [
    (
      {"name": "sgd_momentum"},
      "sqrt",
      "plan.adam_rule: only for the adaptive family (adam, adamw, amsgrad, lars, lamb, lion, muon, "
      "or a factory with optimizer.family adaptive); sgd_momentum is of the sgd family",
    ),
    ({"name": "power_sign"}, "sqrt", "plan.adam_rule: only for the adaptive family"),
    ({"name": "optax:sgd"}, "paper", "plan.adam_rule: only for the adaptive family"),
    (
      {"name": "lars"},
      "sde",
      "plan.adam_rule: sde moves b2 and eps, which lars does not hold in its state (adam, adamw, "
      "amsgrad, lamb do); allowed for lars: paper, sqrt",
    ),
    (
      {"name": "optax:lion"},
      "beta2_halflife",
      "plan.adam_rule: beta2_halflife moves b2 and eps, which optax:lion does not hold",
    ),
  ],
)
def test_a_rule_the_family_cannot_take_is_one_line(optimizer, rule, message):
  with pytest.raises(ConfigError) as raised:
    spec_of({**optimizer, "learning_rate": 0.1}, adam_rule=rule)
  assert str(raised.value).startswith(message), str(raised.value)


def test_lamb_under_sde_holds_b2_and_eps_in_its_state_and_follows_the_plan():
  spec = spec_of({"name": "lamb", "learning_rate": 1e-3}, strategy="increase_batch",
                 adam_rule="sde")  # fmt: skip
  plan = build.plan_of(spec)
  tx = build.optimizer_of(spec, plan)
  state = tx.init({"w": jnp.ones((2, 2))})
  held = state.hyperparams
  assert {"b2", "eps"} <= set(held)
  assert plan.phases[1].b2 == pytest.approx(1 - 5 * (1 - 0.999))
  assert plan.phases[1].eps == pytest.approx(1e-6 / math.sqrt(5))


def test_a_decision_for_lars_follows_the_square_root_rule():
  spec = spec_of({"name": "lars", "learning_rate": 2.0}, strategy="plateau", adam_rule="sqrt",
                 max_batch_size=N)  # fmt: skip
  settings = spec.plan.settings()
  phase = build.plan_of(spec).phases[0]
  change = adaptive.next_phase(settings, phase, N)
  k = change.batch_size / phase.batch_size  # the factor, 5: lr x sqrt(5) / 5
  assert k == 5 and change.learning_rate == pytest.approx(2.0 * math.sqrt(k) / 5)
