"""The TPU-pod launch script, run against a stand-in `gcloud` that records its calls."""

import os
import pathlib
import subprocess

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
