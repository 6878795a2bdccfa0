"""Hooks of the loop: when each runs, what it sees, and the trainer's own hooks."""

import json
import types

import jax
import numpy as np
import pytest
from small_run import small_config

from bigbatch import config as bbconfig
from bigbatch.train import Trainer, hooks
from bigbatch.train.experiment import Experiment
from bigbatch.workdir.checkpoint import Checkpoints


def info(step=10, position=320, values=None, batch=32, index=0, said=None):
  phase = types.SimpleNamespace(index=index, batch_size=batch)
  plan = types.SimpleNamespace(total_steps=41, dataset_size=1024)
  return hooks.StepInfo(step, None, phase, plan, position, position - batch, values,
                        (said if said is not None else []).append)  # fmt: skip


@pytest.mark.parametrize(
  "every, step, moment, due",
  [(5, 10, "step", True), (5, 11, "step", False), (5, 10, "log", False), ("log", 3, "log", True),
   ("eval", 3, "log", False), ("eval", 3, "eval", True)],
)  # fmt: skip
def test_a_hook_is_due_at_its_every(every, step, moment, due):
  assert hooks.Hook(print, every).due(step, moment) is due


class Keeper:
  """A snapshot keeper of cycles ending at 512 and 1,024 examples, recording what it saves."""

  ends = (512, 1_024)

  def __init__(self):
    self.saved = []

  def due(self, before, after):
    crossed = [i for i, end in enumerate(self.ends) if before < end <= after]
    return crossed[-1] + 1 if crossed else None

  def save(self, state, step, position, cycle):
    self.saved.append((step, position, cycle))


def test_the_last_step_keeps_the_last_cycle_where_it_ends_short_of_the_budget():
  keeper = Keeper()
  hook = hooks.SnapshotHook(keeper)
  hook(info(step=16, position=512))  # the first cycle's end, reached
  hook(info(step=30, position=960))  # not yet the end of the budget, and not the last step
  hook(info(step=41, position=992))  # the last step: 32 examples short of 1,024
  assert keeper.saved == [(16, 512, 1), (41, 992, 2)]


@pytest.mark.parametrize("every", [0, -2, 1.5, "epoch", True])
def test_a_bad_every_is_one_line_naming_it(every):
  with pytest.raises(ValueError, match=r"^every: must be a whole number >= 1, 'log' or 'eval'"):
    hooks.Hook(print, every)
  with pytest.raises(ValueError, match=r"^hook: 3 is not callable"):
    hooks.Hook(3, 1)


def test_the_noise_warning_waits_for_the_horizon_and_says_once_a_phase():
  said = []
  warn = hooks.NoiseWarning(horizon=300.0, ratio=8.0)
  far = {"grad_noise_scale": 2.0, "grad_noise_scale_low": 1.0, "grad_noise_scale_high": 3.0}
  warn(info(position=200, values=far, said=said))  # before the smoothing saw a horizon
  assert said == []
  warn(info(position=320, values={**far, "grad_noise_scale_high": 5.0}, said=said))  # 32 < 8x5
  assert said == []
  warn(info(position=320, values=far, said=said))  # 32 > 8 x 3
  warn(info(position=352, values=far, said=said))  # the same phase: said already
  warn(info(position=400, values={"loss": 1.0}, said=said))  # not measured
  assert len(said) == 1 and "batch 32" in said[0]
  warn(info(position=640, values=far, batch=160, index=1, said=said))
  assert len(said) == 2


def test_the_snapshot_hook_saves_the_cycle_that_ends_at_the_step():
  saved = []
  keeper = types.SimpleNamespace(
    due=lambda before, after: 1 if before < 320 <= after else None,
    save=lambda state, step, position, cycle: saved.append((step, position, cycle)),
  )
  hook = hooks.SnapshotHook(keeper)
  hook(info(step=9, position=288))
  hook(info(step=10, position=320))
  assert saved == [(10, 320, 1)]


def test_the_policy_hook_decides_nothing_at_the_final_evaluation():
  calls = []
  policy = types.SimpleNamespace(decide=lambda *args: calls.append(args) or "decision")
  hook = hooks.PolicyHook(policy)
  assert hook(info(step=41)) is None and calls == []
  assert hook(info(step=32)) == "decision" and len(calls) == 1


def test_the_trainer_calls_a_users_hooks_at_their_times(data_dir, tmp_path):
  experiment = Experiment.from_spec(bbconfig.read(small_config(data_dir)))
  seen = {"step": [], "log": [], "eval": []}
  trainer = Trainer(experiment, tmp_path / "run", progress=False)
  trainer.add_hook(lambda i: seen["step"].append((i.step, i.phase.index)), every=8)
  trainer.add_hook(lambda i: seen["log"].append((i.step, i.values["loss"])), every="log")
  trainer.add_hook(lambda i: seen["eval"].append((i.step, i.values["eval_accuracy"])), "eval")
  summary = trainer.run()
  assert summary["updates"] == 40
  assert seen["step"] == [(8, 0), (16, 0), (24, 0), (32, 0), (40, 2)]
  rows = [
    json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  logged = [(r["step"], r["loss"]) for r in rows if "loss" in r]
  assert [(s, pytest.approx(v)) for s, v in seen["log"]] == logged  # each logged row, as logged
  evaluated = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
  assert seen["eval"] == evaluated and seen["eval"][-1][0] == 40  # the final evaluation too
  assert seen["eval"][-1][1] == summary["final_test_accuracy"]


def test_a_hook_sees_the_state_after_its_step(data_dir, tmp_path):
  config = small_config(
    data_dir, num_epochs=1, keep_checkpoints=10, **{"schedule.boundaries": (0.5,)}
  )
  experiment = Experiment.from_spec(bbconfig.read(config))
  trainer = Trainer(experiment, tmp_path / "run", progress=False)
  states = {}
  trainer.add_hook(lambda i: states.setdefault(i.step, jax.device_get(i.state.params)), every=1)
  trainer.run()
  checkpoints = Checkpoints(tmp_path / "run" / "checkpoints", async_save=False)
  # 16 steps of 32, then 3 of 160 (the step nearest the epoch's end): 19
  saved = checkpoints.all_steps()
  assert sorted(states) == list(range(1, 20)) and {10, 19} <= set(saved)
  for step in saved:  # the checkpoint of the same step holds the same bits
    params = states[step]
    saved = jax.device_get(checkpoints.restore(step, experiment.abstract_state()).params)
    assert jax.tree.all(jax.tree.map(np.array_equal, params, saved)), step
  checkpoints.close()
