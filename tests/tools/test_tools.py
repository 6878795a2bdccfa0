"""The TPU-pod launch script, run against a stand-in `gcloud` that records its calls."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from small_run import CONFIG, overrides
from xla_env import xla_flags

SCRIPT = pathlib.Path(__file__).parents[2] / "tools" / "launch_tpu_pod.sh"


def test_launch_creates_the_slice_and_runs_the_same_command_on_every_worker(tmp_path):
  log = tmp_path / "calls"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(
    f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {log}\necho --- >> {log}\n'
  )
  fake.chmod(0o755)
  env = {
    **os.environ,
    "PATH": f"{fake.parent}:{os.environ['PATH']}",
    "REPO": "https://example.invalid/bigbatch.git",
    "REF": "abc123",
  }
  args = [
    "bb",
    "us-central2-b",
    "v4-64",
    "configs/imagenet_resnet50_8192_16384.py",
    "/mnt/shared/r50",
    "--config.seed=3",
  ]
  done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  create, ssh = log.read_text().split("---\n")[:2]
  assert create.split("\n")[:5] == ["compute", "tpus", "tpu-vm", "create", "bb"]
  assert "--accelerator-type=v4-64" in create and "--zone=us-central2-b" in create
  assert "--worker=all" in ssh
  command = ssh.split("--command=")[1]
  assert "git checkout -q abc123" in command
  assert (
    "bigbatch train --config configs/imagenet_resnet50_8192_16384.py --workdir /mnt/shared/r50 --noprogress --config.seed=3"
    in command
  )
  usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
  assert usage.returncode == 2 and "usage: tools/launch_tpu_pod.sh NAME ZONE" in usage.stdout


FAKE_GCLOUD = """#!{python}
# gcloud's stand-in: a slice is a number of CPU devices ("cpu-8"), `ssh` runs the command
# here on that many, and every call is recorded
import json, os, pathlib, subprocess, sys
state = pathlib.Path({state!r})
verb, options = sys.argv[4], dict(a[2:].split("=", 1) for a in sys.argv if a[:2] == "--" and "=" in a)
with open(state / "calls", "a") as calls:
  calls.write(f"{{verb}} {{options.get('accelerator-type', '')}}".strip() + "\\n")
if verb == "create":
  (state / "slice").write_text(options["accelerator-type"])
elif verb == "delete":
  (state / "slice").unlink()
elif verb == "ssh":
  devices = int((state / "slice").read_text().split("-")[1])
  env = {{**os.environ, "XLA_FLAGS": json.loads({flags!r})[str(devices)]}}
  sys.exit(subprocess.run(["bash", "-c", options["command"]], env=env).returncode)
"""


def elastic_launch(tmp_path, data_dir, slices, **env):
  """The launcher on the small run (phase 0 wants 2 devices, phase 1 eight) against a
  gcloud whose slices are CPU device counts; (exit status, stderr, the calls made)."""
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir(exist_ok=True)
  flags = json.dumps({str(n): xla_flags(n) for n in (2, 4, 8)})
  fake.write_text(FAKE_GCLOUD.format(python=sys.executable, state=str(tmp_path), flags=flags))
  fake.chmod(0o755)
  (tmp_path / "calls").unlink(missing_ok=True)
  path = f"{fake.parent}:{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"
  env = {**os.environ, "PATH": path, "REF": "HEAD", "REMOTE_SETUP": "true", "SLICES": slices, **env}
  elastic = ["--config.num_epochs=2", "--config.schedule.boundaries=(1.0,)",
             "--config.elastic.slice_sizes=(1,2,4,8)", "--config.elastic.per_device_batch=16"]  # fmt: skip
  args = ["bb", "zone", "cpu-2", CONFIG, str(tmp_path / "run"), *overrides(data_dir), *elastic]
  done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True)
  assert (tmp_path / "calls").exists(), done.stderr[-3000:]
  return done.returncode, done.stderr, (tmp_path / "calls").read_text().split("\n")[:-1]


def test_the_launcher_moves_each_phase_to_the_slice_it_wants(data_dir, tmp_path):
  status, errors, calls = elastic_launch(tmp_path, data_dir, "2=cpu-2 8=cpu-8")
  assert status == 0, errors[-3000:]
  assert calls == ["create cpu-2", "ssh", "delete", "create cpu-8", "ssh"]
  assert "launch_tpu_pod.sh: moving to cpu-8 (8 devices)" in errors
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["sessions"] == 2
  assert summary["step"] == 38  # 32 steps of 32, then 6 of 160: 2 epochs of 1,024
  assert [(p["phase"], p["devices"]) for p in summary["phases"]] == [(0, 2), (1, 8)]


@pytest.mark.slow  # three runs; CI keeps the move above
def test_the_launcher_stops_where_slices_has_no_slice_and_goes_on_given_one(data_dir, tmp_path):
  # no slice of 8: the run stops at phase 0's end, checkpointed, and the launcher says why
  status, errors, calls = elastic_launch(tmp_path, data_dir, "2=cpu-2 4=cpu-4")
  assert status == 75 and calls == ["create cpu-2", "ssh"]
  assert errors.splitlines()[-1].startswith(
    "launch_tpu_pod.sh: the next phase wants 8 devices and SLICES has no slice of 8 "
  )
  assert (tmp_path / "run" / "checkpoints" / "32").is_dir()
  # given one, the same command resumes on the 2-device slice, moves, and finishes on 8
  status, errors, calls = elastic_launch(tmp_path, data_dir, "2=cpu-2 8=cpu-8", SKIP_CREATE="1")
  assert status == 0, errors[-3000:]
  assert calls == ["ssh", "delete", "create cpu-8", "ssh"]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  # two sessions trained: the one on 2 devices, the one on 8 (the start on 2 that found
  # itself at the phase end trained nothing and saved nothing)
  assert summary["status"] == "completed" and summary["sessions"] == 2


def test_the_launcher_refuses_a_slices_entry_it_cannot_read_before_creating_anything(tmp_path):
  env = {**os.environ, "SLICES": "2=cpu-2 8:v4-16", "REF": "HEAD", "REPO": "x"}
  args = ["bb", "zone", "cpu-2", "config.py", str(tmp_path / "run")]
  done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr == (
    "launch_tpu_pod.sh: SLICES: '8:v4-16' is not DEVICES=ACCELERATOR_TYPE (e.g. 8=v4-16)\n"
  )
