"""`bigbatch lr-find` on the small MNIST-1D run, sharded over the 8 test devices."""

import json
import math
import pathlib

import numpy as np
import pytest
from small_run import CONFIG, overrides, small_config

from bigbatch import config as bbconfig
from bigbatch.cli import main
from bigbatch.measure import lr_find, lr_range


def files(path):
  return {p: p.read_bytes() for p in pathlib.Path(path).rglob("*") if p.is_file()}


def lr_find_json(capsys, workdir, data_dir, *flags):
  status = main(
    ["lr-find", "--config", CONFIG, "--workdir", str(workdir), *overrides(data_dir), "--json"]
    + list(flags)
  )
  out = capsys.readouterr()
  return status, json.loads(out.out), out.err


def test_the_rate_grows_through_the_optimizer_state_until_the_loss_diverges(
  capsys, tmp_path, data_dir
):
  workdir = tmp_path / "run"
  # a run's workdir: the test reads none of it and must leave all of it as it was
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "checkpoints" / "10" / "state").write_bytes(bytes(range(256)))
  (workdir / "metrics.jsonl").write_text('{"step": 10, "loss": 2.3}\n')
  before = files(workdir)

  flags = ["--start", "1e-4", "--end", "1e6", "--steps", "40"]
  status, result, err = lr_find_json(capsys, workdir, data_dir, *flags)

  assert status == 0, err
  assert result["compiles"] == 1  # every rate through one executable
  (curve,) = result["curves"]
  done = curve["steps"]
  assert curve["batch_size"] == 32
  # a huge --end: the smoothed loss passes 4x its minimum and the test stops there
  assert curve["stopped_early"] and 3 <= done < 40
  smoothed = [math.inf if s is None else s for s in curve["smoothed"]]
  assert smoothed[-1] > 4 * min(smoothed[:-1])
  np.testing.assert_allclose(curve["rates"], lr_find.exponential_rates(1e-4, 1e6, 40)[:done])
  assert all(math.isfinite(loss) for loss in curve["losses"][:-1])
  assert curve["losses"][0] == pytest.approx(math.log(10), rel=0.2)  # 10 classes at init
  suggestion = curve["suggestion"]
  for key in ("steepest", "largest_stable", "minimum"):
    assert 1e-4 <= suggestion[key] <= curve["rates"][-1], key
  assert suggestion["diverged"] == done - 1
  assert "largest stable rate" in err and result["problems"] == []
  png = workdir / "lr_find.png"
  assert result["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  after = files(workdir)
  assert after.pop(png) and after == before


def test_two_batch_sizes_fit_the_noise_scale_and_propose_a_start(capsys, tmp_path, data_dir):
  flags = ["--start", "1e-3", "--end", "1e3", "--steps", "16", "--batch-sizes", "32,64"]
  out = tmp_path / "plots" / "two.png"
  status, result, err = lr_find_json(capsys, tmp_path / "w", data_dir, *flags, "--out", str(out))

  assert result["compiles"] == 2  # one executable per batch size, none per rate
  assert [c["batch_size"] for c in result["curves"]] == [32, 64]
  assert out.is_file() and not (tmp_path / "w").exists()
  steepest = [c["suggestion"]["steepest"] for c in result["curves"]]
  try:
    fit = lr_find.fit_noise_scale([32, 64], steepest)
  except ValueError as error:  # the measured rates need not fit: then it says why, status 1
    assert status == 1 and result["fit"] is None
    assert str(error) in result["problems"][0] and str(error) in err
    return
  assert status == 0 and result["problems"] == []
  assert result["fit"] == pytest.approx({"lr_max": fit.lr_max, "b_noise": fit.b_noise})
  assert f"lr_max = {fit.lr_max:.4g}" in err  # the arithmetic, printed
  assert result["proposal"]["batch_size"] % 32 == 0


@pytest.mark.parametrize(
  "flags, flag",
  [
    (["--steps", "0"], "--steps"),
    (["--start", "1", "--end", "1"], "--end"),
    (["--start", "-1"], "--start"),
    (["--start", "abc"], "--start"),
    (["--batch-sizes", "abc"], "--batch-sizes"),
    (["--batch-sizes", "32"], "--batch-sizes"),
    (["--batch-sizes", "32,32"], "--batch-sizes"),
    (["--batch-sizes", "32,48"], "--batch-sizes"),  # not whole ghost batches on 8 devices
  ],
)
def test_a_bad_flag_is_refused_naming_it_before_any_work(capsys, tmp_path, data_dir, flags, flag):
  workdir = tmp_path / "w"
  status = main(
    ["lr-find", "--config", CONFIG, "--workdir", str(workdir), *overrides(data_dir)] + flags
  )
  err = capsys.readouterr().err.strip()
  assert status == 2
  assert len(err.splitlines()) == 1 and err.startswith("bigbatch lr-find: error:"), err
  assert f"{flag}=" in err or f"{flag}:" in err, err
  assert not workdir.exists()


def synthetic_curve(batch_size, best_rate, rates):
  """Losses that fall fastest at `best_rate` (against log lr), then diverge."""
  x = np.log(rates / best_rate)
  losses = 2.0 - np.tanh(x / 1.5) + 1e-3 * np.exp(3.0 * x)
  return lr_range.Curve(batch_size, rates, losses, len(rates))


def test_the_fit_and_proposal_follow_the_curves_and_the_config(tmp_path, data_dir):
  config = small_config(data_dir)  # lr 0.1 at batch 32, multiples of 32, 1,024 examples
  rates = lr_find.exponential_rates(1e-4, 1e3, 200)
  best = lambda batch: 1.0 / (1.0 + 100.0 / batch)  # noqa: E731  lr_max 1, B_noise 100
  curves = [synthetic_curve(b, best(b), rates) for b in (32, 256)]
  noise = lr_range.fit(curves)
  steepest = [c.suggestion().steepest for c in curves]
  assert noise == lr_find.fit_noise_scale([32, 256], steepest)
  # the smoothing's lag moves both steepest rates by about the same factor, which leaves
  # B_noise; each rate is read on a grid of 8% steps
  assert noise.b_noise == pytest.approx(100.0, rel=0.2)
  start = lr_range.propose(noise, bbconfig.read(config))
  assert start.batch_size % 32 == 0 and 32 <= start.batch_size <= 1024
  assert start.learning_rate == pytest.approx(0.1 * start.batch_size / 32)
  assert start.batch_size == (noise.lr_max * 32 / 0.1 - noise.b_noise) // 32 * 32
  capped = lr_range.propose(
    noise, bbconfig.read(small_config(data_dir, **{"plan.max_batch_size": 64}))
  )
  assert capped.batch_size == 64
  table = lr_range.format_table(curves, rates)
  assert f"{steepest[0]:.4g}" in table and f"{steepest[1]:.4g}" in table
  lr_range.plot(curves, str(tmp_path / "synthetic.png"))
  assert (tmp_path / "synthetic.png").read_bytes()[:4] == b"\x89PNG"
