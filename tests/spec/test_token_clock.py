"""The token clock: a language model's config in tokens, converted in one place."""

import dataclasses

import pytest

from bigbatch.recipe import load_recipe
from bigbatch.spec import ConfigError, RunSpec
from bigbatch.spec.clock import TOKEN_FIELDS
from bigbatch.train import build

T = 128  # lm_tiny's sequence length
N = 232_204  # training sequences of 128 in the standard library of Python 3.11.7


def lm_config(**changes):
  config = load_recipe("lm_tiny_base").get_config()
  config.update_from_flattened_dict(changes)
  return config


def test_batches_are_read_in_sequences_and_durations_kept_in_tokens():
  spec = RunSpec.read(lm_config())
  assert spec.batch_size == 4_096 // T and spec.num_epochs is None and not spec.resolved
  assert spec.token_fields["num_tokens"] == 2_048_000
  assert spec.token_fields["schedule.boundaries_tokens"] == (614_400, 1_228_800, 1_638_400)


def test_resolving_turns_tokens_into_epochs_of_the_corpus():
  spec = RunSpec.read(lm_config(**{"plan.max_batch_tokens": 32_768}))
  resolved = spec.resolve(N)
  per_epoch = N * T
  assert resolved.num_epochs == pytest.approx(2_048_000 / per_epoch)
  assert resolved.eval.every_epochs == pytest.approx(204_800 / per_epoch)
  fields = resolved.schedule.fields
  assert fields["warmup_epochs"] == pytest.approx(102_400 / per_epoch)
  assert fields["boundaries"] == pytest.approx(
    [b / per_epoch for b in (614_400, 1_228_800, 1_638_400)]
  )
  assert resolved.plan.max_batch_size == 32_768 // T
  assert resolved.dataset.num_train_examples == N  # the corpus's, from now on
  assert spec.resolve(N) == resolved  # the same arithmetic every time


def test_a_record_keeps_the_token_fields_as_given():
  spec = RunSpec.read(lm_config())
  assert RunSpec.read(spec.to_dict()) == spec
  record = spec.resolve(N).to_dict()
  assert record["num_tokens"] == 2_048_000 and "num_epochs" not in record
  assert tuple(record["schedule"]["boundaries_tokens"]) == (614_400, 1_228_800, 1_638_400)
  assert RunSpec.read(record).resolve(N) == spec.resolve(N)


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    (
      {"batch_tokens": 1_000},
      r"^batch_tokens: 1000 is not a whole number of sequences of 128 tokens",
    ),
    ({"plan.max_batch_tokens": 100}, r"^plan\.max_batch_tokens: 100 is not a whole number of"),
    (
      {"num_tokens": None},
      r"^num_tokens: missing from the config \(a language model counts in tokens\)",
    ),
  ],
)
def test_a_bad_token_field_is_one_line(changes, message):
  with pytest.raises(ConfigError, match=message):
    RunSpec.read(lm_config(**changes))


def test_an_example_field_in_a_language_models_config_is_refused():
  config = lm_config()
  config.batch_size = 32
  with pytest.raises(
    ConfigError, match=r"^batch_size: a language model counts in tokens .* set batch_tokens"
  ):
    RunSpec.read(config)
  config = lm_config()
  config.schedule.boundaries = (0.3, 0.6)
  with pytest.raises(
    ConfigError, match=r"^schedule\.boundaries: .* set schedule\.boundaries_tokens"
  ):
    RunSpec.read(config)
  # a field at its default is what a record holds: not refused
  assert RunSpec.read(lm_config(eval_every_epochs=1.0)).eval.every_epochs == 1.0


def test_a_token_field_in_an_image_config_is_refused():
  config = load_recipe("mnist1d_base").get_config()
  config.num_tokens = 1_000_000
  with pytest.raises(
    ConfigError, match=r"^num_tokens: only for a language model .* set num_epochs"
  ):
    RunSpec.read(config)


def test_every_token_field_stands_for_a_field_a_spec_holds():
  record = RunSpec.read(load_recipe("mnist1d_base").get_config()).to_dict()
  record["plan"]["adapt"] = dict(record["plan"]["adapt"])
  for name, (twin, kind) in TOKEN_FIELDS.items():
    *parents, last = twin.split(".")
    block = record
    for part in parents:
      block = block[part]
    assert last in block, twin
    assert kind in ("batch", "duration", "ramp") and name.endswith("_tokens")


def test_a_ramp_leaves_the_schedules_token_positions_where_the_baseline_has_them():
  # Megatron-Bridge #2609: iterations converted with the final batch stretch the
  # schedule. Here a phase starts at the first sequence at or past its boundary in
  # tokens, whatever the batches before it were.
  base = RunSpec.read(lm_config()).resolve(N)
  ramp = dataclasses.replace(
    base, plan=dataclasses.replace(base.plan, strategy="increase_batch", adam_rule="sqrt")
  )
  ramp = RunSpec.read(ramp.to_dict()).resolve(N)
  plans = {name: build.plan_of(spec) for name, spec in (("base", base), ("ramp", ramp))}
  assert [p.batch_size for p in plans["ramp"].phases] == [32, 32, 128, 512, 2_048]
  for plan in plans.values():
    starts = [p.first_example * T for p in plan.phases]
    assert starts[0] == 0
    for boundary in (102_400, 614_400, 1_228_800, 1_638_400):  # warm-up end, the 3 decays
      at = next(s for s, p in zip(starts, plan.phases) if s >= boundary)
      before = plan.phases[starts.index(at) - 1]
      assert boundary <= at < boundary + before.batch_size * T, (boundary, at)
  # the baseline's rate at any token position is the same function in both plans
  for tokens in (0, 51_200, 700_000, 1_300_000, 2_000_000):
    epoch = tokens / (N * T)
    assert plans["ramp"].baseline_at(epoch)[0] == plans["base"].baseline_at(epoch)[0]
  # and the ramp's total is the baseline's token budget: the last phase ends at the whole
  # step nearest it (1,957,888 tokens: a second step of 262,144 would pass it by 172,032)
  last = plans["ramp"].phases[-1]
  end = (last.first_example + last.steps * last.batch_size) * T
  assert abs(end - 2_048_000) <= last.batch_size * T / 2 and end == 1_957_888


def test_a_ramp_in_tokens_is_read_in_sequences_and_resolved_in_epochs():
  config = lm_config(**{"plan.strategy": "ramp"})
  config.plan.ramp_tokens = ((204_800, 8_192), (614_400, 16_384))
  spec = RunSpec.read(config)
  assert spec.plan.ramp == ((204_800, 64), (614_400, 128))  # positions: once N is known
  resolved = spec.resolve(N)
  assert resolved.plan.ramp == ((204_800 / (N * T), 64), (614_400 / (N * T), 128))
  plan = build.plan_of(resolved)
  assert [p.batch_size for p in plan.phases if p.first_example * T >= 204_800][:1] == [64]
  assert RunSpec.read(resolved.to_dict()).resolve(N) == resolved
  config.plan.ramp_tokens = ((204_800, 1_000),)
  with pytest.raises(ConfigError, match=r"^plan\.ramp_tokens: 1000 is not a whole number"):
    RunSpec.read(config)
