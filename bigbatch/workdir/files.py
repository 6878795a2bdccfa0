"""The workdir: checked before any long work, held by one run at a time, written atomically.

A long job's workdir outlives many processes, and every one of them may die at
any instruction. So a run first checks that the workdir is a directory it can
write (a failed save hours later is the costly way to find out), then takes
an exclusive lock on it (two runs appending to one metrics file and rotating
one set of checkpoints would ruin both), and rewrites files only by writing a
temporary file, syncing it and renaming it over the old one: a reader sees the
old file or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import tempfile

# Entries of a workdir and the kind each must be, checked before a run starts.
_ENTRIES = {
  "checkpoints": "directory",
  "tensorboard": "directory",
  "metrics.jsonl": "file",
  "summary.json": "file",
}


class WorkdirError(ValueError):
  """A workdir (or an entry in it) this run cannot use; the message names the path."""


def _reason(error: OSError) -> str:
  return error.strerror or errno.errorcode.get(error.errno or 0, str(error))


def prepare(workdir: str | pathlib.Path) -> pathlib.Path:
  """Creates `workdir` if needed and checks that a run can write everything it keeps there.

  Returns:
    The workdir as an absolute path.

  Raises:
    WorkdirError: naming the path, if the workdir or one of its entries is of
      the wrong kind or cannot be written. Nothing is deleted.
  """
  path = pathlib.Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir: {path} exists and is not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise WorkdirError(f"--workdir: cannot create {path}: {_reason(error)}") from None
  for name, kind in _ENTRIES.items():
    entry = path / name
    wrong = entry.is_file() if kind == "directory" else entry.is_dir()
    if entry.exists() and wrong:
      raise WorkdirError(f"--workdir: {entry} must be a {kind}; move it out of the workdir")
  for directory in (path, path / "checkpoints"):
    if directory.is_dir():
      check_writable(directory)
  return path


def check_writable(directory: pathlib.Path) -> None:
  """Writes, syncs and removes a small file in `directory`.

  Raises:
    WorkdirError: naming the directory and the cause (read-only, full, ...).
  """
  try:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-") as probe:
      probe.write(b"bigbatch")
      probe.flush()
      os.fsync(probe.fileno())
  except OSError as error:
    raise WorkdirError(f"--workdir: cannot write in {directory}: {_reason(error)}") from None


class Lock:
  """An exclusive lock on a workdir, held until `release` or the process ends.

  The lock is taken on the directory itself (`flock`), so it writes nothing
  in the workdir, and it dies with its process (SIGKILL included): a crashed
  run never leaves a stale lock behind.
  """

  def __init__(self, workdir: pathlib.Path):
    self._descriptor = os.open(workdir, os.O_RDONLY)
    try:
      fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(self._descriptor)
      raise WorkdirError(
        f"--workdir: {workdir} is in use by another bigbatch run; wait for it to end, "
        "or use another --workdir"
      ) from None

  def release(self) -> None:
    if self._descriptor >= 0:
      os.close(self._descriptor)  # closing the descriptor releases the lock
      self._descriptor = -1


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Replaces `path` by `text` all at once (temporary file, fsync, rename)."""
  mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
  descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    os.fchmod(descriptor, mode)  # mkstemp makes it private; keep the file's usual mode
    with os.fdopen(descriptor, "w") as file:
      file.write(text)
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  _sync_directory(path.parent)


def _sync_directory(directory: pathlib.Path) -> None:
  """Makes a rename in `directory` durable (a power loss keeps the new name)."""
  with contextlib.suppress(OSError):
    descriptor = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(descriptor)
    finally:
      os.close(descriptor)
