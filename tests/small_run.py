"""The small MNIST-1D run the fault and bad-input tests share, and how they start it.

1,024 examples, batch 32 -> 160 -> 800 over 3 epochs (noise /5 at epochs 1
and 2): 32 + 7 + 1 = 40 steps (the one step of 800 ends 128 examples short of
3 epochs, the nearest a step of 800 comes), a checkpoint every 10 and an
evaluation every epoch.
"""

import json
import os
import pathlib
import subprocess
import sys

from xla_env import xla_flags

from bigbatch import config as bbconfig

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
CONFIG = str(CONFIGS / "mnist1d_increase_batch.py")
FIELDS = {
  "dataset.num_train_examples": 1024,
  "num_epochs": 3,
  "schedule.boundaries": (1.0, 2.0),
  "batch_size": 32,
  "ghost_batch_size": 4,
  "plan.batch_multiple": 32,
  "eval_every_epochs": 1.0,
  "eval_batch_size": 256,
  "log_every_steps": 5,
  "checkpoint_every_steps": 10,
}
CODE = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"


def overrides(data_dir):
  """FIELDS (and the data dir) as `bigbatch train` flags."""
  flags = [f"--config.dataset.data_dir={data_dir}"]
  for field, value in FIELDS.items():
    text = f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)
    flags.append(f"--config.{field}={text}")
  return flags


def small_config(data_dir, **changes):
  """The config the flags give, as a ConfigDict (with `changes` on top)."""
  config = bbconfig.load_sibling(CONFIG, "mnist1d_increase_batch").get_config()
  config.update_from_flattened_dict({**FIELDS, "dataset.data_dir": data_dir, **changes})
  return config


def start(workdir, data_dir, *extra, fault=None, devices=1, stderr=subprocess.STDOUT):
  """`bigbatch train` on the small run in a subprocess (`fault`: a BIGBATCH_FAULT point;
  stderr: into stdout, or `subprocess.PIPE` apart)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(devices)}
  env.pop("BIGBATCH_FAULT", None)
  if fault:
    env["BIGBATCH_FAULT"] = fault
  args = ["train", "--config", CONFIG, "--workdir", str(workdir), "--noprogress"]
  return subprocess.Popen(
    [sys.executable, "-c", CODE, *args, *overrides(data_dir), *extra],
    env=env,
    stdout=subprocess.PIPE,
    stderr=stderr,
    text=True,
  )


def metrics_rows(workdir) -> list[dict]:
  """The rows of a run's metrics.jsonl."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in a run's TensorBoard event files, by tag, as (step, value) in file order,
  with the events of a purge applied as TensorBoard applies them (see `runlog`)."""
  import tensorflow as tf
  from tensorflow.core.util import event_pb2

  scalars: dict[str, list[tuple[int, float]]] = {}
  files = sorted((pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*"))
  started = False
  for path in files:  # in name order, as TensorBoard reads them
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      event = event_pb2.Event.FromString(raw)
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        if started:  # a restart: TensorBoard drops every point at or after its step
          scalars = {tag: [p for p in pts if p[0] < event.step] for tag, pts in scalars.items()}
        started = True
      for value in event.summary.value:
        number = (
          tf.make_ndarray(value.tensor).item() if value.HasField("tensor") else value.simple_value
        )
        scalars.setdefault(value.tag, []).append((event.step, float(number)))
  return scalars
