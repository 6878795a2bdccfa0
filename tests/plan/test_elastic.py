"""Each phase on the devices it needs (`bigbatch.plan.elastic`), and `bigbatch plan`'s table."""

import json
import pathlib
import types

import pytest

from bigbatch import cli
from bigbatch.config import load_sibling, read
from bigbatch.plan import elastic
from bigbatch.spec import ConfigError, ElasticSpec
from bigbatch.train import build

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"
POWERS = (1, 2, 4, 8, 16, 32, 64, 128)


def paper_plan():
  """The paper's increasing batch on MNIST-1D's 50,000: 128 -> 640 -> 3,200 -> 16,000."""
  return build.plan_of(
    read(load_sibling(str(CONFIGS / "x.py"), "mnist1d_increase_batch").get_config())
  )


def test_a_phase_takes_its_batch_over_the_per_device_batch_rounded_up_to_a_slice():
  plan = paper_plan()
  parts = elastic.slices(plan, POWERS, 128, example_seconds=1e-4, step_seconds=0.01)
  # 128 / 128 = 1 device; 640 / 128 = 5 -> 8 (80 each); 3,200 -> 25 -> 32 (100 each);
  # 16,000 -> 125 -> 128 (125 each)
  assert [(p.batch_size, p.devices, p.per_device) for p in parts] == [
    (128, 1, 128), (640, 8, 80), (3_200, 32, 100), (16_000, 128, 125),
  ]  # fmt: skip
  assert [p.steps for p in parts] == [p.steps for p in plan.phases]
  # device-seconds = steps x (0.01 + batch / devices x 1e-4) x devices
  first = parts[0]
  assert first.device_seconds == pytest.approx(first.steps * (0.01 + 128e-4))
  assert first.largest_seconds == pytest.approx(first.steps * (0.01 + 1e-4) * 128)
  last = parts[-1]
  assert last.device_seconds == pytest.approx(last.largest_seconds)  # the largest slice
  line = elastic.device_hours_line(parts, 128)
  used = sum(p.steps * (0.01 * p.devices + p.batch_size * 1e-4) for p in parts) / 3600
  whole = sum(p.steps * (0.01 * 128 + p.batch_size * 1e-4) for p in parts) / 3600
  assert line.startswith(f"device-hours: {used:,.4g} against {whole:,.4g} on 128 devices")
  assert f"({1 - used / whole:.1%} fewer)" in line


def test_past_the_largest_slice_each_device_takes_its_share_in_micro_batches():
  parts = elastic.slices(paper_plan(), (1, 2, 4, 8), 128)
  assert [(p.devices, p.per_device, p.micro_batches) for p in parts] == [
    (1, 128, 1), (8, 80, 1), (8, 400, 4), (8, 2_000, 16),
  ]  # fmt: skip
  assert all(p.device_seconds is None for p in parts)  # no step-time model
  text = elastic.format_slices(parts, (1, 2, 4, 8), 128)
  assert "2,000 (16x)" in text and "device-hours: not known (set elastic.example_seconds" in text


def fake_plan(*batches):
  phases = [types.SimpleNamespace(index=i, steps=10, batch_size=b) for i, b in enumerate(batches)]
  return types.SimpleNamespace(phases=phases)


def test_bad_slices_are_one_line_naming_the_field():
  with pytest.raises(elastic.ElasticError, match=r"^elastic.per_device_batch: 48 does not "
                     r"divide phase 1's batch of 640$"):  # fmt: skip
    elastic.slices(fake_plan(96, 640), POWERS, 48)
  # 3 of 1 each wants 3 devices: a slice of 4 cannot hold 3 whole examples evenly
  with pytest.raises(elastic.ElasticError, match=r"^elastic.slice_sizes: phase 0's batch of 3 "
                     r"does not split evenly over its slice of 4 devices$"):  # fmt: skip
    elastic.slices(fake_plan(3), (1, 2, 4), 1)
  with pytest.raises(elastic.ElasticError, match=r"^elastic.per_device_batch: needed where "
                     "plan.max_batch_size does not give it"):  # fmt: skip
    elastic.per_device_batch(None, None, 8)
  assert elastic.per_device_batch(None, 1_024, 8) == 128
  assert elastic.per_device_batch(64, 1_024, 8) == 64


@pytest.mark.parametrize(
  "sizes, said",
  [
    (
      (3, 8),
      "elastic.slice_sizes: 3 does not divide the largest slice, 8: the devices cannot form it",
    ),
    ((8, 2), "elastic.slice_sizes: must be ascending, each once, got (8, 2)"),
    ((), "elastic.slice_sizes: must be a tuple of device counts, e.g. (2, 4, 8), got ()"),
    ((0, 2), "elastic.slice_sizes: must be a whole number >= 1, got 0"),
  ],
)
def test_slice_sizes_the_devices_cannot_form_are_refused(sizes, said):
  with pytest.raises(ConfigError) as error:
    ElasticSpec(slice_sizes=sizes)
  assert str(error.value) == said


def test_bigbatch_plan_shows_devices_per_phase_and_device_hours(capsys):
  flags = [
    f"--config={CONFIGS / 'mnist1d_increase_batch.py'}",
    "--config.elastic.slice_sizes=(1,2,4,8,16,32,64,128)",
    "--config.elastic.per_device_batch=128",
    "--config.elastic.example_seconds=1e-4",
    "--config.elastic.step_seconds=0.01",
  ]
  assert cli.main(["plan", *flags]) == 0
  out = capsys.readouterr().out
  rows = [line.split() for line in out.splitlines()[-6:-1]]
  assert rows[0][:4] == ["phase", "batch", "devices", "per"]
  assert [r[2] for r in rows[1:]] == ["1", "8", "32", "128"]
  assert out.splitlines()[-1].endswith(
    "on 128 devices throughout (94.8% fewer), by the step-time model"
  )
  assert cli.main(["plan", *flags, "--json"]) == 0
  data = json.loads(capsys.readouterr().out)
  assert [p["devices"] for p in data["elastic"]] == [1, 8, 32, 128]
  # a per-device batch that does not divide a phase's batch: one line, exit 2
  assert cli.main(["plan", *flags[:2], "--config.elastic.per_device_batch=2000"]) != 0
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [
    "bigbatch plan: error: elastic.per_device_batch: 2,000 does not divide phase 0's batch of 128"
  ]


def timed(batch, devices, steps, per_step, **spent):
  """A phase as a checkpoint's `elapsed` records it: its seconds hold `spent` too."""
  seconds = steps * per_step + sum(spent.values())
  return {"batch_size": batch, "devices": devices, "steps": steps, "seconds": seconds, **spent}


def test_the_step_time_is_fitted_to_the_measured_phases_by_hand():
  # per-device batches 16 and 20 at 0.026 and 0.030 s a step (evaluation and a compile
  # wait in the phases' seconds, not in their steps): 0.001 s an example, 0.010 fixed
  phases = [
    timed(32, 2, 32, 0.026, eval_seconds=1.5, compile_wait_seconds=0.7),
    timed(160, 8, 6, 0.030, checkpoint_seconds=0.2),
    {"batch_size": 800, "devices": 8, "steps": 0, "seconds": 0.0},  # never trained
  ]
  fitted = elastic.measured_step_time(phases)
  assert fitted.example_seconds == pytest.approx(0.001) and fitted.step_seconds == pytest.approx(
    0.010
  )
  assert fitted.source == "the step times measured at per-device batches 16, 20"
  # three per-device batches off a line: least squares weighed by steps, by hand
  points = [(4, 0.010, 10), (8, 0.013, 30), (16, 0.026, 20)]  # (b, t, steps)
  w = sum(s for _, _, s in points)
  mb, mt = sum(b * s for b, _, s in points) / w, sum(t * s for _, t, s in points) / w
  slope = sum(s * (b - mb) * (t - mt) for b, t, s in points) / sum(
    s * (b - mb) ** 2 for b, _, s in points
  )
  fitted = elastic.measured_step_time([timed(b * 2, 2, s, t) for b, t, s in points])
  assert fitted.example_seconds == pytest.approx(slope)
  assert fitted.step_seconds == pytest.approx(mt - slope * mb)
  # one per-device batch: no fixed part to be had, taken as 0 and said so
  fitted = elastic.measured_step_time([timed(64, 4, 10, 0.032)])
  assert (fitted.example_seconds, fitted.step_seconds) == (pytest.approx(0.002), 0.0)
  assert fitted.source.endswith("one per-device batch 16 (fixed part taken as 0)")
  # a line through the points that would need a negative fixed part: through 0 instead
  steep = [timed(16, 1, 10, 0.010), timed(40, 2, 10, 0.030)]  # b 16, 20: slope 0.005
  fitted = elastic.measured_step_time(steep)
  by_hand = (16 * 0.010 + 20 * 0.030) / (16**2 + 20**2)
  assert (fitted.example_seconds, fitted.step_seconds) == (pytest.approx(by_hand), 0.0)
  # phases recorded before their devices were: nothing to fit
  assert elastic.measured_step_time([{"batch_size": 32, "steps": 5, "seconds": 1.0}]) is None
