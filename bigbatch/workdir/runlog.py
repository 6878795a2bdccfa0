"""The run's metrics: `metrics.jsonl` (one JSON object per row) and TensorBoard events.

Every row carries the step it describes, and every row up to a checkpoint's
step is written (and synced) before that checkpoint is saved. A run resumed
from the checkpoint at step S therefore keeps exactly the rows with step <= S
and writes the rest again, however it was interrupted: each (step, metric)
appears once. The file is cut back by an atomic rewrite, and a torn last line
(a kill or a power loss in the middle of a write) is dropped with a note, as
it can only belong to a step after the last checkpoint.

TensorBoard's event files cannot be cut back, so each start writes a file of
its own that opens with a `SessionLog.START` event at step S + 1: TensorBoard
takes a START after the first as a restart and drops every point it has read
at that step or later, which are exactly the steps the resumed run writes
again. The files' names begin with the time in nanoseconds, so that
TensorBoard, which reads them in name order, reads each start after the one
before it.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

from bigbatch.workdir.files import WorkdirError, write_atomic

# What `tf.summary.scalar` writes, without needing the tensorboard package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
  plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


class EventFile:
  """One start's TensorBoard event file: TFRecords of `Event` protos, as TensorFlow writes.

  Args:
    directory: the run's TensorBoard directory.
    start_step: the first step this start writes; a `SessionLog.START` at it
      makes TensorBoard drop the points a killed start wrote from there on.
  """

  def __init__(self, directory: pathlib.Path, start_step: int):
    directory.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{time.time_ns()}.{socket.gethostname()}.{os.getpid()}.v2"
    self.path = directory / name
    self._writer = tf.io.TFRecordWriter(str(self.path))
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    self._write(event_pb2.Event(wall_time=time.time(), step=start_step, session_log=start))

  def _write(self, event: event_pb2.Event) -> None:
    self._writer.write(event.SerializeToString())

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event with every scalar of a step."""
    summary = summary_pb2.Summary(
      value=[
        summary_pb2.Summary.Value(
          tag=key,
          tensor=tf.make_tensor_proto(value, tf.float32),
          metadata=_SCALAR_METADATA,
        )
        for key, value in values.items()
      ]
    )
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _scalar(value: Any) -> Any:
  """A metric as JSON: a number, a list, or None for a value that is not known.

  The step marks what it cannot say with NaN (no value) or infinity (no
  bound): neither is JSON, and neither is a number a reader should plot.
  """
  if value is None:
    return None
  value = np.asarray(value)
  if value.size != 1:
    return value.tolist()
  value = value.item()
  return None if isinstance(value, float) and not math.isfinite(value) else value


def read_rows(path: pathlib.Path, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """The rows of a metrics file, without a torn last line.

  Raises:
    WorkdirError: naming the file and line, for a broken line before the last.
  """
  if not path.exists():
    return []
  text = path.read_text()
  lines = text.split("\n")
  rows = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError("no integer 'step'")
    except ValueError as error:
      if number == len(lines) and not text.endswith("\n"):  # the write a kill interrupted
        say(f"{path}: dropped a torn last line ({len(line)} bytes) left by an interrupted write")
        break
      raise WorkdirError(
        f"{path}: line {number} is not a metrics row ({str(error).splitlines()[0]}); "
        "remove that line, or move the file out of the workdir"
      ) from None
    rows.append(row)
  return rows


class MetricsLog:
  """Metrics as JSON lines and TensorBoard events, written by the first process only.

  Args:
    workdir: where `metrics.jsonl` and `tensorboard/` live.
    resume_step: the step of the checkpoint being resumed (0 for a new run);
      rows after it are dropped.
    enabled: whether this process writes (process 0 of a multi-host run).
    say: where notes go.
  """

  def __init__(
    self,
    workdir: pathlib.Path,
    resume_step: int,
    *,
    enabled: bool = True,
    say: Callable[[str], None] = print,
  ):
    self.enabled = enabled
    if not enabled:
      return
    self.path = workdir / "metrics.jsonl"
    if self.path.exists():
      original = self.path.read_text()
      rows = [row for row in read_rows(self.path, say) if row["step"] <= resume_step]
      kept = "".join(json.dumps(row) + "\n" for row in rows)
      if kept != original:
        write_atomic(self.path, kept)
    self._file = self.path.open("a")
    self._events = EventFile(workdir / "tensorboard", resume_step + 1)

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    """Appends one row (and its scalars to TensorBoard)."""
    if not self.enabled:
      return
    row = {"step": step, **{k: _scalar(v) for k, v in values.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    # None (unknown) leaves a gap in its curve
    numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
    self._events.scalars(step, numbers)

  def sync(self) -> None:
    """Puts every row written so far on disk: called before each checkpoint."""
    if self.enabled:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._events.flush()

  def close(self) -> None:
    if self.enabled and not self._file.closed:
      self._file.close()
      self._events.close()
