"""Any optax optimizer by import path: a plan's rate and momentum reach it at each phase, with
no recompile; its name and options are recorded; clipping and masks apply to it too."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch import optim
from bigbatch.spec import RunSpec
from bigbatch.train import build

BASE = {
  "num_epochs": 3,
  "batch_size": 100,
  "schedule": {"name": "step", "boundaries": (1.0, 2.0), "factor": 5.0},
  "model": {"name": "mlp"},
  "dataset": {"name": "mnist1d", "num_train_examples": 1000},
}


def spec_of(optimizer, **plan):
  return RunSpec.read({**BASE, "optimizer": optimizer, "plan": plan})


def with_momenta(plan, momenta):
  """`plan` with phase i's momentum `momenta[i]` (a schedule that moves it by phase)."""
  phases = [
    dataclasses.replace(p, momentum=m, final_momentum=m, momentum_fn=optax.constant_schedule(m))
    for p, m in zip(plan.phases, momenta)
  ]
  return dataclasses.replace(plan, phases=tuple(phases))


@pytest.mark.parametrize(
  "optimizer",
  [
    {"name": "optax:sgd", "learning_rate": 0.1, "momentum": 0.9},
    {
      "name": "plugin_optimizers:heavy_ball",
      "learning_rate": 0.1,
      "decay": 0.9,
      "momentum_arg": "decay",
      "family": "sgd",
    },
  ],
  ids=["optax_sgd", "named_momentum"],
)
def test_a_plans_rate_and_momentum_reach_a_factory_at_each_phase(optimizer):
  spec = spec_of(optimizer, strategy="hybrid", max_batch_size=500)
  plan = build.plan_of(spec)
  assert [p.batch_size for p in plan.phases] == [100, 500, 500]
  plan = with_momenta(plan, (0.9, 0.8, 0.5))
  tx = build.optimizer_of(spec, plan)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  state = tx.init(params)
  update = jax.jit(tx.update)
  trace = np.zeros(3)
  for step in range(plan.total_steps):
    grads = {"w": jnp.array([0.3, -0.1, 0.2]) * (step + 1)}
    updates, state = update(grads, state, params)
    phase = plan.phase_at(step)
    lr, m = phase.learning_rate, phase.momentum
    held = optim.current_hyperparams(state)
    assert (float(held["learning_rate"]), float(held["momentum"])) == pytest.approx((lr, m))
    trace = m * trace + np.asarray(grads["w"])  # optax.sgd: A <- m A + g; w <- w - lr A
    np.testing.assert_allclose(updates["w"], -lr * trace, rtol=1e-6)
  assert [p.learning_rate for p in plan.phases] == pytest.approx([0.1, 0.1, 0.02])
  assert update._cache_size() == 1  # every phase ran the one compiled update


def test_a_factory_by_path_or_by_function_records_its_shortest_path():
  by_function = spec_of({"name": optax.lion, "learning_rate": 1e-4, "b1": 0.95})
  by_private_path = spec_of({"name": "optax._src.alias:lion", "learning_rate": 1e-4})
  for spec in (by_function, by_private_path):
    recorded = spec.to_dict()["optimizer"]
    assert recorded["name"] == "optax:lion" and recorded["family"] == "adaptive"
    assert RunSpec.read(spec.to_dict()).to_dict() == spec.to_dict()  # the record reads back
  assert by_function.to_dict()["optimizer"]["options"] == {"b1": 0.95}
  assert by_function.optimizer.momentum == 0.95 and by_private_path.optimizer.momentum == 0.9
  # keyword arguments in a nested `options` block read as the block's own fields
  nested = spec_of({"name": "optax:lion", "learning_rate": 1e-4, "options": {"b1": 0.95}})
  assert nested.to_dict() == by_function.to_dict()


def test_a_factory_without_momentum_takes_the_rate_alone():
  spec = spec_of({"name": "optax:sgd", "learning_rate": 0.1})  # optax.sgd: momentum None
  assert spec.optimizer.momentum == 0.0 and spec.optimizer.momentum_field is None
  tx = build.optimizer_of(spec, build.plan_of(spec))
  state = tx.init({"w": jnp.ones(2)})
  assert set(optim.current_hyperparams(state)) == {"learning_rate"}


def test_clipping_and_the_decay_mask_reach_a_factory():
  spec = spec_of(
    {"name": "plugin_optimizers:sgdw", "learning_rate": 0.1, "momentum": 0.0,
     "weight_decay": 0.5, "family": "sgd", "clip_norm": 1.0, "decay_mask": "kernels"}
  )  # fmt: skip
  tx = build.optimizer_of(spec, build.plan_of(spec))
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  grads = {"dense": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 4.0)}}
  updates, state = tx.update(grads, tx.init(params), params)
  scale = 1.0 / float(optax.tree.norm(grads))  # clipped to norm 1 before the update
  np.testing.assert_allclose(updates["dense"]["bias"], -0.1 * 4.0 * scale, rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * (3.0 * scale + 0.5), rtol=1e-6)
  assert float(optim.clip_metrics(state)["clipped"]) == 1.0


def test_a_built_in_keeps_its_state_without_clipping_or_mask():
  # unset clip_norm and an every-parameter mask add nothing: old checkpoints restore
  spec = spec_of({"name": "sgd_momentum", "learning_rate": 0.1, "momentum": 0.9,
                  "weight_decay": 1e-4})  # fmt: skip
  plan = build.plan_of(spec)
  ours = build.optimizer_of(spec, plan)
  plain = optim.sgd_momentum(plan, plan, weight_decay=plan)  # as built before either existed
  params = {"w": jnp.ones(3)}
  assert jax.tree.structure(ours.init(params)) == jax.tree.structure(plain.init(params))
