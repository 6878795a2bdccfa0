"""`bigbatch cbs`: branches from a checkpoint, the critical batch, resumes, and bad input.

The parent is the small MNIST-1D run (`small_run`: batch 32 -> 160 -> 800, a checkpoint
every 10 steps, here all kept), trained once on this process's 8 devices.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from small_run import small_config
from xla_env import xla_flags

from bigbatch.cli import main
from bigbatch.train import train_and_evaluate
from bigbatch.workdir import Lock
from bigbatch.workdir import checkpoint as ckpt

CODE = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def parent(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("parent")
  config = small_config(data_dir, keep_checkpoints=10)
  train_and_evaluate(config, workdir, progress=False)
  return workdir


def cbs(capsys, *flags):
  status = main(["cbs", *map(str, flags)])
  captured = capsys.readouterr()
  return status, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def record_of(workdir):
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  step = checkpoints.latest_step()
  record = checkpoints.record(step)
  checkpoints.close()
  return record


def test_branches_at_each_batch_follow_the_g_rule_and_give_a_critical_batch(parent, capsys):
  flags = ("--workdir", parent, "--step", 20, "--batch-sizes", "32,64", "--examples", 256)
  status, out, err = cbs(capsys, *flags, "--tolerance", "0.05", "--json")
  assert status == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  branches = {b["batch_size"]: b for b in result["branches"]}
  assert [branches[b]["steps"] for b in (32, 64)] == [8, 4]  # 256 examples each
  root = pathlib.Path(parent) / "cbs" / "step_20"
  # each branch is a run of its own: the g-rule's rate (B ∝ lr from the run's 32 at step 20,
  # exactly: N/B - 1 as the plan's noise rule is approx, N/B), momentum held, reseeded
  configs = {b: record_of(root / str(b))["config"] for b in (32, 64)}
  assert configs[32]["optimizer"]["learning_rate"] == pytest.approx(0.1)
  assert configs[64]["optimizer"]["learning_rate"] == pytest.approx(0.2)
  assert configs[64]["optimizer"]["momentum"] == pytest.approx(0.9)
  assert configs[32]["seed"] != 0 and configs[32]["seed"] == configs[64]["seed"]
  losses = [branches[b]["final_loss"] for b in (32, 64)]
  within = [b for b, loss in zip((32, 64), losses) if loss <= losses[0] + 0.05]
  assert result["critical_batch"] == max(within)
  assert result["tolerance"] == 0.05 and result["b_simple"]["grad_noise_scale_low"] is not None
  assert (root / "cbs.png").stat().st_size > 1000 and (root / "cbs.json").exists()
  # a second call reads the finished branches back: nothing is trained again
  stamps = {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}
  status, out, _ = cbs(capsys, *flags, "--tolerance", "0.05")
  assert status == 0 and "critical batch (largest within the tolerance" in out
  # step 20 of batch 32: 640 examples in, epoch 640 / 1,024 = 0.625; the warm-up from it
  assert result["position_examples"] == 640
  warmup = out.strip().splitlines()[-1]
  assert warmup.startswith("warm-up from the critical batches measured at steps 20: ")
  if result["critical_batch"] == 64:
    assert warmup.endswith("--config.plan.strategy=ramp --config.plan.ramp='((0.625,64),)'")
  else:
    assert warmup.endswith("none, no critical batch is above the run's first batch (32 examples)")
  assert {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")} == stamps


def test_the_automatic_tolerance_comes_from_a_repeat_of_the_smallest_batch(parent, capsys):
  flags = ("--workdir", parent, "--step", 30, "--batch-sizes", "32,64", "--examples", 128)
  status, out, err = cbs(capsys, *flags, "--json")
  assert status == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  first = result["branches"][0]["final_loss"]
  expected = max(2**0.5 * abs(first - result["tolerance_from_repeat"]), 1e-4)
  assert result["tolerance"] == pytest.approx(expected)
  repeat = record_of(pathlib.Path(parent) / "cbs" / "step_30" / "32_repeat")["config"]
  assert (
    repeat["seed"] != record_of(pathlib.Path(parent) / "cbs" / "step_30" / "32")["config"]["seed"]
  )


def run(args, fault=None):
  env = {**os.environ, "XLA_FLAGS": xla_flags(8)}
  env.pop("BIGBATCH_FAULT", None)
  if fault:
    env["BIGBATCH_FAULT"] = fault
  done = subprocess.run(
    [sys.executable, "-c", CODE, "cbs", *map(str, args)],
    env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  return done.returncode, done.stdout + done.stderr


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_branch_killed_midway_resumes_bitwise(parent, tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  for copy in (whole, killed):
    shutil.copytree(parent, copy, ignore=shutil.ignore_patterns("cbs"))
  flags = ["--step", 10, "--batch-sizes", "32", "--examples", 320, "--tolerance", "0.01"]
  code, output = run(["--workdir", whole, *flags])
  assert code == 0, output[-2000:]
  code, output = run(["--workdir", killed, *flags], fault="step@6")
  assert code == -9, output[-2000:]  # SIGKILL at the branch's step 6 (of 10)
  code, output = run(["--workdir", killed, *flags])
  assert code == 0, output[-2000:]
  branch = pathlib.Path("cbs") / "step_10" / "32"
  assert record_of(killed / branch)["fingerprint"] == record_of(whole / branch)["fingerprint"]


@pytest.mark.parametrize(
  ("flags", "message"),
  [
    (("--step", 15, "--batch-sizes", "32", "--examples", 64),
     "--step 15: no checkpoint at that step"),
    (("--step", 20, "--batch-sizes", "36", "--examples", 64),
     "--batch-sizes: 36 must be a positive multiple of 32"),
    (("--step", 20, "--batch-sizes", "32,64", "--examples", 48),
     "--examples: 48 is less than one step of the largest batch (64 examples)"),
    (("--step", 20, "--batch-sizes", "32", "--tokens", 4096),
     "--tokens: only for a language model; give --examples"),
    (("--step", 20, "--batch-sizes", "32"), "--examples is required"),
    (("--step", 20, "--batch-sizes", "32", "--examples", 64, "--tolerance", "wide"),
     "--tolerance: 'wide' is not auto or a number"),
  ],
)  # fmt: skip
def test_bad_input_is_one_line(parent, capsys, flags, message):
  status, _, err = cbs(capsys, "--workdir", parent, *flags)
  assert status == 2 and len(err) == 1 and err[0].startswith("bigbatch cbs: error: "), err
  assert message in err[0], err[0]


def test_a_workdir_that_is_no_run_or_is_in_use_is_one_line(parent, capsys, tmp_path):
  flags = ("--step", 20, "--batch-sizes", "32", "--examples", 64)
  status, _, err = cbs(capsys, "--workdir", tmp_path, *flags)
  assert status == 2 and "holds no run (no checkpoints in it)" in err[0]
  held = Lock(pathlib.Path(parent))
  try:
    status, _, err = cbs(capsys, "--workdir", parent, *flags)
  finally:
    held.release()
  assert status == 2 and "is in use by another bigbatch run" in err[0], err
