"""`bigbatch cbs`'s closing line: the warm-up built from every step measured so far."""

import json
import types

from bigbatch.cli.cbs import warmup_line


def parent_with(tmp_path, measured, *, length, batch, multiple=1, n=1_000):
  """A run's workdir holding `cbs.json` for each (step, position, critical batch), in the
  units `bigbatch cbs` writes them (sequences for a language model)."""
  for step, position, critical in measured:
    where = tmp_path / "cbs" / f"step_{step}"
    where.mkdir(parents=True)
    saved = {"step": step, "critical_batch": critical}
    if position is not None:
      saved["position_examples"] = position
    (where / "cbs.json").write_text(json.dumps(saved))
  spec = types.SimpleNamespace(
    batch_size=batch,
    plan=types.SimpleNamespace(batch_multiple=multiple),
    dataset=types.SimpleNamespace(num_train_examples=n),
  )
  return types.SimpleNamespace(workdir=tmp_path, spec=spec, tokens_per_example=length)


def test_a_language_model_s_warm_up_is_in_tokens(tmp_path):
  # batch 32 sequences of 128; critical batches 64 at step 20 (640 sequences in: 81,920
  # tokens), 32 at step 100, 128 at step 180 (5,760 sequences: 737,280 tokens)
  measured = [(100, 3_200, 32), (20, 640, 64), (180, 5_760, 128)]
  line = warmup_line(parent_with(tmp_path, measured, length=128, batch=32))
  assert line == (
    "warm-up from the critical batches measured at steps 20, 100, 180: "
    "--config.plan.strategy=ramp --config.plan.ramp_tokens='((81920,8192),(737280,16384))'"
  )


def test_an_image_model_s_warm_up_is_in_epochs_and_whole_multiples(tmp_path):
  # 1,000 examples, batch 128 in multiples of 128: 200 at epoch 0.25 rounds down to 128 (no
  # rise), 300 at epoch 0.5 to 256; a cbs.json without a position (older) is left out
  measured = [(2, 250, 200), (4, 500, 300), (6, None, 1_024)]
  line = warmup_line(parent_with(tmp_path, measured, length=None, batch=128, multiple=128))
  assert line.endswith(
    "at steps 2, 4: --config.plan.strategy=ramp --config.plan.ramp='((0.5,256),)'"
  )


def test_no_rise_says_so(tmp_path):
  line = warmup_line(parent_with(tmp_path, [(20, 640, 32)], length=128, batch=32))
  assert line == (
    "warm-up from the critical batches measured at steps 20: none, no critical batch is "
    "above the run's first batch (4,096 tokens)"
  )
