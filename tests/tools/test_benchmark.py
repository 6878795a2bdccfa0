"""tools/benchmark.py runs from a checkout and writes every comparison it promises."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from xla_env import xla_flags

TOOL = pathlib.Path(__file__).parents[2] / "tools" / "benchmark.py"


@pytest.mark.slow
def test_benchmark_quick_writes_the_table_and_results(tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags()}
  done = subprocess.run(
    [sys.executable, str(TOOL), "--quick", "--cpu-devices", "2", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "benchmark.json").read_text())
  assert results["device"].endswith("x 2")
  assert set(results["optimizers"]) == {"sgd_momentum", "adam", "adamw", "amsgrad"}
  assert set(results["phase_switch"]) == {"foreground", "background", "decided"}
  # row 1: the trainer's step on 1 and 2 devices, asked to measure and not
  assert set(results["step"]) == {"1", "2"}
  steps = [r for runs in results["step"].values() for r in runs.values()]
  assert [r["measures_noise"] for r in steps] == [True, False, True, False]
  ratios = [r["throughput_ratio"] for r in steps] + [results["input"]["ratio"]]
  ratios += [r["speed_ratio"] for r in results["optimizers"].values()]
  assert all(0 < r < 100 for r in ratios)
  cifar = results["input_cifar"]
  assert cifar["ratio"] == cifar["input_examples_per_second"] / cifar["train_examples_per_second"]
  scaling = results["scaling"]
  assert scaling["devices"] == [1, 2] and set(scaling["examples_per_second"]) == {"16", "128"}
  for row in scaling["examples_per_second"].values():
    assert all(0 < row[n]["min"] <= row[n]["median"] <= row[n]["max"] for n in ("1", "2"))
  # row 6: the Transformer on a tensor axis of the 2 devices against a data axis of them
  mesh = results["mesh"]
  assert (mesh["three_axes"], mesh["two_axes"]) == ([1, 1, 2], [2, 1, 1])
  assert 0 < mesh["throughput_ratio"] < 100
  table = (tmp_path / "benchmark.md").read_text()
  assert table.count("\n| ") == (1 + 4 + 2 + 4 + 1 + 3) + (1 + 2)
  assert "| 1. step (2 devices, noise measured): trainer's / minimal |" in table
  assert "| 128 | " in table and "| 2 / 1 |" in table


LM_TOOL = TOOL.parent / "benchmark_lm.py"


@pytest.mark.slow
def test_benchmark_lm_quick_writes_both_noise_settings(tmp_path):
  # one small batch: the run is the compiles of the three steps (about 25 s on 2 cores)
  env = {**os.environ, "XLA_FLAGS": xla_flags()}
  done = subprocess.run(
    [sys.executable, str(LM_TOOL), "--quick", "--batch-sizes", "8", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "lm_step.json").read_text())
  assert results["device"].endswith("x 1") and results["parameters"] == 3_225_088
  assert list(results["batches"]) == ["8"] and results["steps_per_timing"] == {"8": 1}
  runs = results["batches"]["8"]
  assert {name: r["measures_noise"] for name, r in runs.items()} == {
    "measured": True,
    "not_measured": False,
  }
  for r in runs.values():
    assert 0 < r["ratio_min"] <= r["throughput_ratio"] <= r["ratio_max"]
    assert r["a_tokens_per_second"] == 8 * 128 / r["a_seconds"]
    assert r["b_tokens_per_second"] == 8 * 128 / r["b_seconds"]
  table = (tmp_path / "lm_step.md").read_text()
  assert table.count("\n| ") == 1 + 2
  assert "| 8 x 128 | measured | " in table and "| 8 x 128 | not measured | " in table
