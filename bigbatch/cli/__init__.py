"""The `bigbatch` command line.

bigbatch plan --config RECIPE|FILE[:variant] [--config.FIELD=VALUE ...] [--json] [--plot out.png]
bigbatch train [--config RECIPE|FILE[:variant]] [--workdir DIR] [--config.FIELD=VALUE ...]

RECIPE is the name of a shipped recipe (bigbatch/recipes/, `configs/` in a checkout);
FILE any config file with a `get_config()`.
"""

from __future__ import annotations

import os
import sys

from bigbatch.cli.args import fail
from bigbatch.cli.cbs import cbs
from bigbatch.cli.ensemble import ensemble
from bigbatch.cli.lr_find import lr_find
from bigbatch.cli.noise import noise
from bigbatch.cli.plan import plan, probe
from bigbatch.cli.recipes import recipes
from bigbatch.cli.sharpness import sharpness
from bigbatch.cli.train import train

USAGE = """usage: bigbatch COMMAND --config RECIPE|FILE[:VARIANT] [--config.FIELD=VALUE ...] [options]

RECIPE: a shipped recipe's name (cifar10_5_2_increase_batch, ...: `bigbatch recipes` lists
them); FILE: a config file of your own with a get_config().

commands:
  plan    print the phase plan of a config beside its baseline
          options: --json (machine-readable), --plot PATH (lr, batch, noise vs epochs)
          --config.plan.max_batch_size=auto: cap the batch at what the probe measures
  probe   measure the largest batch whose compiled train step fits in device memory
          (per-device batch -> bytes needed vs available, and the global cap)
  noise   draw a run's batch, measured gradient noise scale and planned noise scale
          against epochs: --workdir DIR [--out PNG] (default DIR/noise.png)
  lr-find the learning-rate range test from the config's initial state: --start 1e-7 --end 10
          --steps 100 [--out PNG] [--json]; --batch-sizes B1,B2: fit lr_opt(B), propose a start
  train   train a config's plan, resuming from the workdir's latest checkpoint
          (no --config: MNIST-1D with increasing batch size, on CPU)
          options: --workdir DIR (default workdir/CONFIG), --noprogress
  ensemble  test accuracy of the mean of the last M snapshots' softmaxes (restarting
          schedules), beside each snapshot's: --workdir DIR [--last M] [--json]
  recipes the shipped recipes' names, each with its first docstring line
  sharpness Hessian top eigenvalue and Keskar's epsilon-sharpness at a checkpoint:
          --workdir DIR [--step N] [--examples 2048] [--epsilon 1e-3] [--iterations 50] [--json]
  cbs     the critical batch by branching from a checkpoint, beside the measured B_simple:
          --workdir DIR --step S --batch-sizes B1,B2,... --tokens T | --examples E
          [--tolerance auto|X] [--json] [--out PNG]

examples:
  bigbatch plan --config cifar10_5_2_increase_batch
  bigbatch plan --config cifar10_5_1_increase_batch:adam --plot plan.png
  bigbatch plan --config imagenet_resnet50_8192 --config.plan.strategy=hybrid \\
      --config.plan.max_batch_size=16384 --json
  bigbatch train
  bigbatch train --config my_config.py --workdir runs/mine
  bigbatch train --config cifar10_5_1_increase_batch --workdir runs/cifar \\
      --config.dataset.data_dir=/data/tfds
"""

COMMANDS = {"plan": plan, "train": train, "probe": probe, "noise": noise, "lr-find": lr_find}
COMMANDS |= {"ensemble": ensemble, "sharpness": sharpness, "recipes": recipes, "cbs": cbs}


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `bigbatch` console script; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  # TensorFlow's C++ INFO lines say nothing a user acts on. TensorFlow serves only the
  # input pipeline, where its oneDNN kernels do not matter; on CPUs where they are on by
  # default it prints two lines at import whatever TF_CPP_MIN_LOG_LEVEL says.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE, end="")
    return 0 if argv else 2
  command, args = argv[0], argv[1:]
  if command not in COMMANDS:
    return fail(command, f"unknown command; commands: {', '.join(COMMANDS)}")
  if "-h" in args or "--help" in args:
    print(USAGE, end="")
    return 0
  try:
    return COMMANDS[command](args)
  except SystemExit as exit_:
    return int(exit_.code or 0)


if __name__ == "__main__":
  sys.exit(main())
