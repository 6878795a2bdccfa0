"""The workdir: what a run keeps on disk, and how it stays consistent across kills.

`files` (the workdir's checks, its lock, atomic writes), `checkpoint` (orbax
checkpoints with checksums and the fields that bind a run), `runlog`
(metrics.jsonl and TensorBoard, each row once), `snapshots` (a restarting
schedule's snapshots and their ensemble) and `faults` (named fault points for
the fault-injection tests).
"""

from bigbatch.workdir.checkpoint import (
  CheckpointError,
  Checkpoints,
  CheckpointSaveError,
  CorruptCheckpointError,
  NonFiniteCheckpointError,
)
from bigbatch.workdir.files import Lock, WorkdirError, check_writable, prepare, write_atomic
from bigbatch.workdir.runlog import MetricsLog, read_rows

__all__ = [
  "CheckpointError",
  "CheckpointSaveError",
  "Checkpoints",
  "CorruptCheckpointError",
  "Lock",
  "MetricsLog",
  "NonFiniteCheckpointError",
  "WorkdirError",
  "check_writable",
  "prepare",
  "read_rows",
  "write_atomic",
]
