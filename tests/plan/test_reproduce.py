"""tools/reproduce.py: the runs it promises, their command lines, and a short real run."""

import importlib.util
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys

import pytest
from xla_env import xla_flags

from bigbatch import config as bbconfig
from bigbatch.cli import args as cli_args

ROOT = pathlib.Path(__file__).parents[2]
TOOL = ROOT / "tools" / "reproduce.py"


def load_tool():
  spec = importlib.util.spec_from_file_location("reproduce", TOOL)
  module = importlib.util.module_from_spec(spec)
  sys.modules["reproduce"] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def test_the_runs_cover_both_sections_and_the_control():
  tool = load_tool()
  names = [r.name for r in tool.runs()]
  assert len(names) == len(set(names)) == 12 + 3 + 1
  for optimizer in ("momentum", "nesterov", "sgd", "adam"):
    for schedule in ("decay_lr", "hybrid", "increase_batch"):
      assert f"5.1/{optimizer}/{schedule}" in names
  assert {"5.2/increase_batch", "5.2/initial_lr", "5.2/momentum", "control/final_noise"} < set(
    names
  )


@pytest.mark.parametrize("epochs", [20, 5])
def test_plans_follow_the_papers_arithmetic_at_20_epochs(epochs):
  """N = 50,000, batch 128: 390.6 steps an epoch; noise /5 at 30%, 60% and 80% of training."""
  tool = load_tool()
  common = tool.common_fields(epochs)
  plans = {
    r.name: bbconfig.plan_from_config(tool.make_config(r, common, 0, None)) for r in tool.runs()
  }
  decay = plans["5.1/momentum/decay_lr"]
  assert decay.total_steps == -(-50_000 * epochs // 128)
  assert plans["5.1/adam/increase_batch"].batch_sizes == (128, 640, 3200, 16000)
  assert plans["5.1/sgd/hybrid"].batch_sizes == (128, 640)
  assert plans["5.2/increase_batch"].batch_sizes == (128, 640, 3200, 5120)
  assert plans["5.2/initial_lr"].batch_sizes == (640, 3200, 5120)
  assert plans["5.2/momentum"].batch_sizes == (3200, 5120)
  final = decay.phases[-1]
  control = plans["control/final_noise"]
  assert control.batch_sizes == (128,) and control.total_steps == decay.total_steps
  # the control runs at the decaying schedule's last noise scale from the first step
  assert control.phases[0].noise_scale == pytest.approx(final.noise_scale)
  assert control.phases[0].noise_scale == pytest.approx(decay.phases[0].noise_scale / 125)
  if epochs == 20:
    ratio = decay.total_steps / plans["5.1/momentum/increase_batch"].total_steps
    assert 2.5 < ratio < 3.0  # the paper: about 2.5-3x fewer updates
    assert decay.total_steps == 7_813


def test_each_printed_command_makes_the_config_the_tool_trains(monkeypatch):
  tool = load_tool()
  monkeypatch.chdir(ROOT)
  common = tool.common_fields(20)
  for run in tool.runs():
    args = shlex.split(run.command(common, seed=2))
    assert args[:2] == ["bigbatch", "train"]
    parsed = cli_args.parse("train", args[2:], lambda values: None).config
    assert parsed.to_dict() == tool.make_config(run, common, 2, None).to_dict(), run.name


@pytest.mark.slow
def test_a_short_reproduction_writes_tables_figures_and_matching_results(tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags()}
  env["TFDS_DATA_DIR"] = str(tmp_path / "tfds")
  args = [
    sys.executable,
    str(TOOL),
    *("--epochs", "2", "--seeds", "2"),
    *("--only", "5.1/momentum/decay_lr", "5.1/momentum/increase_batch", "control"),
    *("--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")),
  ]
  done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  runs = results["runs"]
  assert set(runs) == {
    "5.1/momentum/decay_lr",
    "5.1/momentum/increase_batch",
    "control/final_noise",
  }
  for name, result in runs.items():
    summaries = [
      json.loads(p.read_text())
      for p in sorted(
        (tmp_path / "work" / "e2" / name.replace("/", "_")).glob("seed*/summary.json")
      )
    ]
    assert len(summaries) == 2
    accuracies = [s["final_test_accuracy"] for s in summaries]
    assert result["accuracy_mean"] == pytest.approx(statistics.fmean(accuracies))
    assert result["accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    assert result["updates"] == summaries[0]["updates"]
    assert result["curve"]["epoch"][-1] >= 2.0 and len(result["curve"]["test_accuracy"]) == 2
  assert runs["5.1/momentum/decay_lr"]["updates"] == 782
  assert runs["5.1/momentum/increase_batch"]["updates"] < 782 / 2
  table = (tmp_path / "out" / "results.md").read_text()
  # with --only, the tables hold the runs that were trained
  assert "**5.1, momentum**" in table and "| increasing batch | " in table
  assert "| hybrid |" not in table and "**5.2" not in table
  assert "final noise scale from the start" in table
  assert (tmp_path / "out" / "5_1_momentum.png").stat().st_size > 10_000
  # a second start reads the finished runs back instead of training them again
  marker = tmp_path / "work" / "e2" / "control_final_noise" / "seed0" / "summary.json"
  before = marker.stat().st_mtime_ns
  again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
  assert again.returncode == 0 and marker.stat().st_mtime_ns == before
  assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"] == runs


def test_bad_arguments_get_one_line():
  done = subprocess.run(
    [sys.executable, str(TOOL), "--only", "5.3"], capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 2
  assert "--only: '5.3' matches no run" in done.stderr.strip().splitlines()[-1]
