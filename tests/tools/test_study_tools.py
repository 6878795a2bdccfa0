"""The study tools' bookkeeping: a partial re-run keeps the other runs' results."""

import importlib.util
import json
import pathlib

import pytest

TOOLS = pathlib.Path(__file__).parents[2] / "tools"


def load(name: str):
  spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_kept_results_replaces_rerun_runs_and_keeps_the_rest_in_study_order(tmp_path):
  study = load("study_adaptive")
  settings = {"epochs": 20, "seeds": [0, 1, 2]}
  earlier = {
    "adaptive/noise": {"v": "old"},
    "fixed/decay_lr": {"v": "old"},
    "adaptive/plateau": {"v": 1},
  }
  (tmp_path / "results.json").write_text(json.dumps({"settings": settings, "runs": earlier}))
  merged = study.kept_results(tmp_path, settings, {"adaptive/noise": {"v": "new"}})
  assert list(merged) == ["fixed/decay_lr", "adaptive/plateau", "adaptive/noise"]
  assert merged["adaptive/noise"] == {"v": "new"}
  assert merged["fixed/decay_lr"] == {"v": "old"}


def test_kept_results_refuses_results_made_with_other_seeds(tmp_path):
  study = load("study_adaptive")
  earlier = {"settings": {"epochs": 20, "seeds": [0]}, "runs": {}}
  (tmp_path / "results.json").write_text(json.dumps(earlier))
  with pytest.raises(
    SystemExit, match=r"--keep: .*results.json has seeds \[0\], this run \[0, 1\]"
  ):
    study.kept_results(tmp_path, {"epochs": 20, "seeds": [0, 1]}, {})
